"""The runner: the tick loop, the HTTP server, shop webhooks and metrics."""
