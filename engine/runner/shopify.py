"""Shopify webhooks -> engine events (``POST /shopify/webhooks``; the field table is in
docs/shop.md).

The runner checks ``X-Shopify-Hmac-Sha256`` (base64 HMAC-SHA256 of the raw body with the app's
secret, ``SHOPIFY_WEBHOOK_SECRET``) with :func:`verify` before anything is parsed, then turns
the body into events with :func:`events_from_webhook`. Each event carries the id
``shopify:<X-Shopify-Webhook-Id>`` so that a webhook Shopify delivers again is applied once;
orders, cancellations, refunds and fulfillments are also applied once by Shopify's own id of
the order, refund or fulfillment (whatever webhook brought them).

The customer key of a Shopify order is the customer's e-mail address, as in the order export
(so an imported order and its webhook are one order: the order id is the order's ``name``,
``#1001``, the export's ``Name``); Shopify's own ids are kept beside it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

from engine.i18n import _
from engine.runtime.events import Event, customer_key

#: Topics that become events; any other topic is answered 200 and ignored.
TOPICS = (
    "orders/create",
    "orders/cancelled",
    "refunds/create",
    "checkouts/create",
    "checkouts/update",
    "fulfillments/create",
)


class ShopifyError(ValueError):
    """A webhook body that is not what its topic says (answered 400); ``text`` is the reason as
    a translatable text (``str()`` its English, for the log)."""

    def __init__(self, text: Any) -> None:
        self.text = text
        super().__init__(str(text))


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    """True when ``signature`` is base64(HMAC-SHA256(secret, body)), compared in constant time."""
    if not signature or not secret:
        return False
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    # a header with bytes that are not UTF-8 arrives with surrogate escapes: it can never match
    return hmac.compare_digest(digest.encode(), signature.strip().encode("utf-8", "surrogatepass"))


def sign(secret: str, body: bytes) -> str:
    """The ``X-Shopify-Hmac-Sha256`` value Shopify sends for ``body`` (tests, tools)."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise ShopifyError(_("`{field}` is missing", field=field))
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ShopifyError(_("`{field}` {value} is not an ISO 8601 time", field=field, value=repr(value))) from None
    if when.tzinfo is None:
        raise ShopifyError(_("`{field}` {value} has no UTC offset", field=field, value=repr(value)))
    return when


def _money(value: Any, field: str) -> float | int:
    try:
        amount = float(value)
    except (TypeError, ValueError):
        raise ShopifyError(_("`{field}` {value} is not an amount", field=field, value=repr(value))) from None
    if amount < 0 or amount != amount or amount == float("inf"):
        raise ShopifyError(_("`{field}` {value} is not an amount", field=field, value=repr(value)))
    # Shopify writes money as text ("5500.00"); a whole amount stays whole, so a message's
    # {{ event.amount }} shows 5500, as for an event posted with "amount": 5500
    return int(amount) if amount.is_integer() else amount


def _customer(obj: dict) -> tuple[str | None, dict[str, Any]]:
    """(customer key, extra data): the e-mail address (order's, else the customer's), else
    ``shopify:<customer id>``; Shopify's customer id is kept."""
    customer = obj.get("customer") if isinstance(obj.get("customer"), dict) else {}
    extra: dict[str, Any] = {}
    if customer.get("id") is not None:
        extra["shopify_customer_id"] = str(customer["id"])
    email = obj.get("email") or obj.get("contact_email") or customer.get("email")
    if isinstance(email, str) and email.strip():
        return customer_key(email), extra
    if "shopify_customer_id" in extra:
        return f"shopify:{extra['shopify_customer_id']}", extra
    return None, extra


def _items(lines: Any) -> list[dict[str, Any]]:
    items = []
    for i, line in enumerate(lines if isinstance(lines, list) else []):
        if not isinstance(line, dict):
            raise ShopifyError(_("`{field}` is not an object", field=f"line_items[{i}]"))
        product = (
            line.get("sku")
            or (str(line["product_id"]) if line.get("product_id") is not None else None)
            or line.get("title")
        )
        if not product:
            continue
        item: dict[str, Any] = {"product": str(product)}
        if line.get("product_type"):
            item["category"] = str(line["product_type"])
        if line.get("price") is not None:
            item["price"] = _money(line["price"], f"line_items[{i}].price")
        quantity = line.get("quantity")
        if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 1:
            item["quantity"] = quantity
        items.append(item)
    return items


def _order_id(payload: dict) -> tuple[str, str]:
    """(order id = the order's name like ``#1001``, Shopify's id as ``shopify:<id>``)."""
    if payload.get("id") is None:
        raise ShopifyError(_("`{field}` is missing", field="id"))
    external = f"shopify:{payload['id']}"
    name = payload.get("name")
    return (str(name) if name else external), external


def events_from_webhook(topic: str, webhook_id: str | None, payload: Any) -> list[Event]:
    """The engine events of one Shopify webhook (``[]`` for a topic linerules does not use)."""
    if topic not in TOPICS:
        return []
    if not isinstance(payload, dict):
        raise ShopifyError(_("the body is not a JSON object"))
    base = f"shopify:{webhook_id}" if webhook_id else None
    if topic == "orders/create":
        order_id, external = _order_id(payload)
        customer, extra = _customer(payload)
        if customer is None:
            return []
        data = {
            "customer": customer,
            "order_id": order_id,
            "external_id": external,
            "amount": _money(payload.get("total_price"), "total_price"),
            "items": _items(payload.get("line_items")),
            "source": "shopify",
            **extra,
        }
        return [Event("purchase", "", _time(payload.get("created_at"), "created_at"), data, id=base)]
    if topic == "orders/cancelled":
        order_id, external = _order_id(payload)
        when = payload.get("cancelled_at") or payload.get("updated_at")
        data = {"order_id": external, "reason": str(payload.get("cancel_reason") or "cancelled")}
        customer, extra = _customer(payload)
        if customer:
            data["customer"] = customer
        return [Event("refund", "", _time(when, "cancelled_at"), {**data, **extra}, id=f"{external}:cancelled")]
    if topic == "refunds/create":
        if payload.get("order_id") is None:
            raise ShopifyError(_("`{field}` is missing", field="order_id"))
        amount = sum(
            _money(t.get("amount"), "transactions.amount")
            for t in payload.get("transactions") or []
            if isinstance(t, dict) and t.get("kind") == "refund" and t.get("status") in ("success", None)
        )
        if not amount:
            amount = sum(
                _money(r.get("subtotal", 0), "refund_line_items.subtotal")
                for r in payload.get("refund_line_items") or []
                if isinstance(r, dict)
            )
        if not amount:
            return []  # a refund of nothing (a restock only)
        data = {
            "order_id": f"shopify:{payload['order_id']}",
            "amount": amount,
            "shopify_refund_id": str(payload.get("id")),
        }
        if payload.get("note"):
            data["reason"] = str(payload["note"])
        refund_id = f"shopify:refund:{payload['id']}" if payload.get("id") is not None else base
        return [Event("refund", "", _time(payload.get("created_at"), "created_at"), data, id=refund_id)]
    if topic in ("checkouts/create", "checkouts/update"):
        if payload.get("completed_at"):
            return []  # it became an order
        customer, extra = _customer(payload)
        if customer is None:
            return []  # an anonymous checkout: nobody to remind
        when = _time(payload.get("updated_at") or payload.get("created_at"), "updated_at")
        common = {
            "customer": customer,
            "checkout_id": str(payload.get("id") or payload.get("token") or ""),
            "checkout_url": payload.get("abandoned_checkout_url") or "",
            "amount": _money(payload.get("total_price") or 0, "total_price"),
            **extra,
        }
        items = _items(payload.get("line_items"))
        return [
            Event("cart", "", when, {**common, "product": item["product"]}, id=f"{base}:{i}" if base else None)
            for i, item in enumerate(items)
        ]
    # fulfillments/create
    if payload.get("order_id") is None:
        raise ShopifyError(_("`{field}` is missing", field="order_id"))
    urls = payload.get("tracking_urls") or []
    numbers = payload.get("tracking_numbers") or []
    data = {
        "order_id": f"shopify:{payload['order_id']}",
        "tracking_url": payload.get("tracking_url") or (urls[0] if urls else ""),
        "tracking_number": payload.get("tracking_number") or (numbers[0] if numbers else ""),
        "carrier": payload.get("tracking_company") or "",
    }
    if isinstance(payload.get("name"), str):
        data["order_name"] = payload["name"].rsplit(".", 1)[0]
    customer, extra = _customer(payload)
    if customer:
        data["customer"] = customer
    shipment = f"shopify:fulfillment:{payload['id']}" if payload.get("id") is not None else base
    return [Event("shipped", "", _time(payload.get("created_at"), "created_at"), {**data, **extra}, id=shipment)]


def parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShopifyError(_("the body is not JSON: {reason}", reason=exc)) from None
