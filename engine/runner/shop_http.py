"""The runner's shop routes (docs/shop.md, docs/operations.md):

- ``POST /shopify/webhooks``    Shopify webhooks, verified by ``X-Shopify-Hmac-Sha256``;
- ``POST /account-link/nonce``  the shop's login page registers the nonce for a signed-in
                                customer (bearer ``LINERULES_API_TOKEN``) and gets LINE's
                                account-link URL back;
- tracked links to ``account_link.login_url`` (``GET /c/<token>``) get a fresh LINE link token
  for the friend who tapped, see :func:`account_link_target`.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from engine.i18n import _, render
from engine.runtime import identity

from . import shopify

log = logging.getLogger("linerules.shop")

#: LINE's page that completes an account link.
ACCOUNT_LINK_DIALOG = "https://access.line.me/dialog/bot/accountLink"


def _error(status: int, message: Any) -> web.Response:
    """A JSON error answer; the reason in the runner's language (settings.yaml)."""
    return web.json_response({"error": render(message)}, status=status)


def bearer_ok(request: web.Request, token: str) -> bool:
    """Whether the request's ``Authorization`` is ``Bearer TOKEN`` (the scheme in any case,
    RFC 9110 §11.1). A header with bytes that are not UTF-8 arrives with surrogate escapes: it is
    compared as it is (it can never match) rather than failing with a server error."""
    scheme, _sep, given = request.headers.get("Authorization", "").strip().partition(" ")
    match = hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token.encode())
    return scheme.lower() == "bearer" and match


def routes(runner_key: web.AppKey) -> list[web.RouteDef]:
    """The shop routes, reading the runner from ``request.app[runner_key]``."""

    async def shopify_webhooks(request: web.Request) -> web.Response:
        """Verify, translate, store once; Shopify gets 200 for anything it need not send again."""
        runner = request.app[runner_key]
        secret = runner.config.shopify_secret
        if not secret:
            log.error("Shopify webhook refused: SHOPIFY_WEBHOOK_SECRET is not set")
            return _error(503, _("Shopify webhooks disabled: set SHOPIFY_WEBHOOK_SECRET"))
        body = await request.read()
        signature = request.headers.get("X-Shopify-Hmac-Sha256")
        topic = request.headers.get("X-Shopify-Topic", "")
        webhook_id = request.headers.get("X-Shopify-Webhook-Id") or None
        from . import server  # the runner's intake threads (imported here: server imports us)

        try:
            stored = await request.app[server.INTAKE].run(_store_shopify, secret, body, signature, topic, webhook_id)
        except shopify.ShopifyError as exc:
            log.error("Shopify webhook %s (%s) not understood: %s", topic, webhook_id, exc)
            return _error(400, exc.text)
        if stored is None:
            log.warning(
                "Shopify webhook refused: %s X-Shopify-Hmac-Sha256 from %s",
                "invalid" if signature else "missing",
                request.remote,
            )
            return _error(401, _("invalid signature"))
        events, result = stored
        if not events:
            log.info("Shopify webhook %s (%s): nothing for the rules", topic or "without topic", webhook_id)
            return web.json_response({"applied": 0, "duplicates": 0, "ignored": True})
        for event in events:
            runner.metrics.events.labels(type=event.type, origin="shopify").inc()
        log.info(
            "Shopify webhook %s (%s): %d events stored, %d duplicates",
            topic,
            webhook_id,
            result.applied,
            result.duplicates,
        )
        if result.applied:
            runner.wake_tick()
        return web.json_response({"applied": result.applied, "duplicates": result.duplicates})

    async def account_link_nonce(request: web.Request) -> web.Response:
        """``{"customer": "C-1001", "link_token": "..."[, "nonce": "..."]}`` -> the nonce and the
        URL to send the signed-in customer to (LINE completes the link and tells the runner)."""
        runner = request.app[runner_key]
        token = runner.config.api_token
        if not token:
            return _error(503, _("account link disabled: set LINERULES_API_TOKEN"))
        if not bearer_ok(request, token):
            return _error(401, _("missing or wrong bearer token"))
        try:
            data = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            example = '{"customer": "C-1001", "link_token": "..."}'
            return _error(400, _("the body must be a JSON object like {example}", example=example))
        for key in ("customer", "link_token"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                return _error(400, _('field "{field}": is missing', field=key))
        nonce = data.get("nonce")
        if nonce is not None and (not isinstance(nonce, str) or not 10 <= len(nonce) <= 255):
            return _error(
                400, _('field "nonce": must be text of 10 to 255 characters (leave it out and linerules makes one)')
            )
        nonce = identity.register_nonce(runner.store, data["customer"], int(runner.now().timestamp()), nonce)
        url = f"{ACCOUNT_LINK_DIALOG}?{urlencode({'linkToken': data['link_token'], 'nonce': nonce})}"
        log.info("account link nonce registered for customer %s", data["customer"])
        return web.json_response({"nonce": nonce, "redirect_url": url})

    return [web.post("/shopify/webhooks", shopify_webhooks), web.post("/account-link/nonce", account_link_nonce)]


def _store_shopify(
    stores: Any, runner: Any, secret: str, body: bytes, signature: str | None, topic: str, webhook_id: str | None
) -> tuple[list, Any] | None:
    """On an intake thread: verify the signature (None when wrong), translate, store (raises
    ShopifyError for a body that is not what its topic says)."""
    from .server import _apply

    if not shopify.verify(secret, body, signature):
        return None
    events = shopify.events_from_webhook(topic, webhook_id, shopify.parse(body))
    return events, (_apply(stores, events) if events else None)


async def account_link_target(runner: Any, token: str, url: str) -> str:
    """Where a tracked link sends the friend: for a link to ``account_link.login_url``, that
    page with a new LINE link token for the friend who tapped (``?linkToken=...``); any other
    link as it is. Without a token from LINE (dry run, LINE unreachable) the page gets none."""
    login = runner.project.settings.account_link_url
    if not login or not _same_page(url, login):
        return url
    friend = runner.store.link_friend(token)
    if friend is None:
        return url
    link_token = await runner.dispatcher.issue_link_token(friend)
    if not link_token:
        log.warning("account link for %s: LINE gave no link token (dry run or LINE unreachable)", friend)
        return url
    parts = urlsplit(url)
    query = f"{parts.query}&linkToken={link_token}" if parts.query else f"linkToken={link_token}"
    return urlunsplit(parts._replace(query=query))


def _same_page(url: str, login: str) -> bool:
    a, b = urlsplit(url), urlsplit(login)
    return (a.scheme, a.netloc, a.path.rstrip("/")) == (b.scheme, b.netloc, b.path.rstrip("/"))
