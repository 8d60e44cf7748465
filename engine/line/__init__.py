"""LINE on the wire: limits, webhooks, login, rate limits, retries and the dispatcher."""
