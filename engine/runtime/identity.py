"""The shop side of a friend (SPEC §8, docs/shop.md): customer <-> friend links and orders.

A friend may be linked to one shop customer id, and a customer id to one friend. Every order is
kept by its id in ``orders``, whatever brought it (an event, a Shopify webhook, an import):

- an order of a customer not linked yet is *kept* (``friend`` NULL) and counts for the friend
  from the moment the link appears; linking never fires event rules for that history;
- an order that names the friend itself (``direct``) stays with that friend;
- the friend's measures (``orders``, ``total_spent``, ``last_purchase``, ``spent within``,
  rankings, the report's revenue) are computed from ``activity`` rows, which are *projected*
  from ``orders``: an order's rows are redone whenever it changes (a refund, a cancellation, a
  link, an unlink), and the friend's totals recounted from them.

Every function here is called inside the caller's :meth:`Store.transaction`.
"""

from __future__ import annotations

import logging
import re
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from engine.line.webhook import ACCOUNT_LINK  # LINE's accountLink event, as the engine sees it

from .events import customer_key
from .store import EventRow, OrderRecord, OrderRefund, OrderState, Store

log = logging.getLogger("linerules.identity")

#: A Rakuten order number (受注番号): shop number, order date, serial.
ORDER_NUMBER_RE = re.compile(r"(?<![0-9])[0-9]{6}-[0-9]{8}-[0-9]{6,10}(?![0-9])")
#: Dashes a phone's keyboard types between the number's parts (the kana long-vowel mark,
#: minus, hyphen and dash signs), read as ``-``.
_DASHES = str.maketrans({c: "-" for c in "ー‐‑‒–—―−"})
#: Postback keys that carry an order number typed by the friend.
ORDER_KEYS = ("order_id", "order")
#: Event types whose rules fire for a friend whose link appeared.
LINKED = "linked"


@dataclass(frozen=True)
class Order:
    """One order as an import or an event gives it (amounts in yen, ``at`` epoch seconds)."""

    order_id: str
    at: int
    amount: float
    items: Sequence[dict] = ()
    customer: str | None = None
    friend: str | None = None  # named by the event itself: stays with that friend
    refunded: float = 0.0
    cancelled: bool = False
    source: str = "event"
    external_id: str | None = None  # the shop system's own id (Shopify: ``shopify:<order id>``)


@dataclass
class Handled:
    """What the shop side made of an event, for the engine."""

    friend: str | None  # who the event is about (None: kept for an unlinked customer)
    data: dict[str, Any]
    fire: bool = True  # whether event rules see it
    linked: list[tuple[str, dict]] = field(default_factory=list)  # friends whose link appeared


# ----------------------------------------------------------------------------- look-ups


def linked_friend(store: Store, customer: str) -> str | None:
    return store.linked_friend(customer_key(customer))


def customer_of(store: Store, friend: str) -> str | None:
    return store.linked_customer(friend)


def find_order(store: Store, ref: str) -> str | None:
    """The order id of an order known by its id or by the shop system's own id."""
    return store.find_order(ref)


def order_owner(store: Store, ref: str) -> str | None:
    """The friend an order (by its id or the shop system's id) counts for."""
    return store.order_owner(ref)


def order(store: Store, order_id: str) -> dict | None:
    return store.order(order_id)


# ----------------------------------------------------------------------------- links


def link(store: Store, customer: str, friend: str, via: str, at: int) -> bool:
    """Link ``customer`` to ``friend`` (last link wins on both sides): a customer linked to
    another friend moves, taking its kept history along; a friend linked to another customer
    lets that one go. The customer's orders count for ``friend`` from now on. False when the
    link already existed."""
    customer = customer_key(customer)
    current = linked_friend(store, customer)
    if current == friend:
        return False
    store.ensure_friend(friend, at)
    if current is not None:
        _release(store, customer, current)
        _history(store, customer, current, "moved", via, at)
        log.info("customer %s moves from friend %s to %s (%s)", customer, current, friend, via)
    previous = customer_of(store, friend)
    if previous is not None:
        _release(store, previous, friend)
        _history(store, previous, friend, "replaced", via, at)
    store.put_link(customer, friend, via, at)
    _history(store, customer, friend, "linked", via, at)
    _adopt(store, customer, friend)
    return True


def unlink(
    store: Store, *, friend: str | None = None, customer: str | None = None, via: str, at: int
) -> tuple[str, str] | None:
    """Remove the link of ``friend`` (or of ``customer``): the customer's orders leave the
    friend's measures and are kept for the customer again. Returns (customer, friend), or None
    when there was no link."""
    if customer is not None:
        customer = customer_key(customer)
        friend_of = linked_friend(store, customer)
        if friend_of is None or (friend and friend != friend_of):
            return None
        friend = friend_of
    elif friend is not None:
        customer = customer_of(store, friend)
        if customer is None:
            return None
    else:
        return None
    store.delete_link(customer)
    _release(store, customer, friend)
    _history(store, customer, friend, "unlinked", via, at)
    return customer, friend


def link_many(store: Store, pairs: Iterable[tuple[str, str]], via: str, at: int) -> dict[str, int]:
    """Links from an import (no rule fires). Returns counts: linked, unchanged."""
    counts = {"linked": 0, "unchanged": 0}
    for customer, friend in pairs:
        counts["linked" if link(store, customer, friend, via, at) else "unchanged"] += 1
    return counts


def _history(store: Store, customer: str, friend: str, action: str, via: str, at: int) -> None:
    store.add_link_history(customer, friend, action, via, at)


def _adopt(store: Store, customer: str, friend: str) -> None:
    """The customer's kept orders and processed kept events now count for ``friend``."""
    ids = store.adopt_kept_orders(customer, friend)
    if ids:
        project(store, ids)
        recount(store, [friend])
    kept = store.kept_events(customer)
    for ev in kept:
        apply_state(store, friend, ev.type, ev.data, ev.at)
    store.set_events_friend((ev.seq for ev in kept), friend)


def _release(store: Store, customer: str, friend: str) -> None:
    """The customer's orders (not those naming the friend itself) leave ``friend``."""
    ids = store.release_orders(customer, friend)
    if ids:
        project(store, ids)
        recount(store, [friend])


def apply_state(store: Store, friend: str, kind: str, data: dict, at: int) -> None:
    """The state a kept (non-order) event leaves on the friend once it counts: cart and view
    history, attributes, tags. Custom events leave nothing."""
    if kind in ("cart", "view"):
        store.track(friend, kind, data.get("product"), at)
    elif kind == "attributes":
        store.set_attributes(friend, data.get("set") or {})
    elif kind == "tag":
        store.add_tags(friend, data.get("add") or [], at)
        store.remove_tags(friend, data.get("remove") or [])


# ----------------------------------------------------------------------------- account link nonces


def register_nonce(store: Store, customer: str, now: int, nonce: str | None = None) -> str:
    """Remember that ``nonce`` (a new random one when None) stands for ``customer`` until LINE's
    ``accountLink`` webhook brings it back."""
    nonce = nonce or secrets.token_urlsafe(24)
    store.put_nonce(nonce, customer_key(customer), now)
    return nonce


# ----------------------------------------------------------------------------- orders


def record_orders(store: Store, orders: Sequence[Order], now: int) -> dict[str, list[str]]:
    """Store orders by id. A new order counts for its friend (named, or linked to its customer)
    or is kept for its customer; an order already stored is not counted again, but a refund or
    cancellation it now carries is taken in (an export read again is the newer truth).

    Returns order ids by outcome: ``counted``, ``kept``, ``duplicate`` (unchanged), ``updated``."""
    out: dict[str, list[str]] = {"counted": [], "kept": [], "duplicate": [], "updated": []}
    if not orders:
        return out
    orders = _take_early_refunds(store, orders)
    if len(orders) == 1 and not orders[0].refunded and not orders[0].cancelled:
        fast = _record_new(store, orders[0], now)
        if fast is not None:
            out[fast].append(orders[0].order_id)
            return out
    batch = [o.order_id for o in orders]
    existing = store.order_states(batch)
    links = store.linked_friends(o.customer for o in orders if o.customer and not o.friend)
    new_rows: list[OrderRecord] = []
    fill: list[OrderRecord] = []
    changed: list[OrderRefund] = []
    external: list[tuple[str, str]] = []
    friends: set[str] = set()
    for o in orders:
        old = existing.get(o.order_id)
        owner = o.friend or (links.get(o.customer) if o.customer else None)
        if old is not None and old.amount is not None:
            if o.external_id and not old.external_id:
                external.append((o.order_id, o.external_id))  # imported before the file had the id
            refunded = max(old.refunded, o.refunded)
            cancelled = old.cancelled or o.cancelled
            if refunded != old.refunded or cancelled != old.cancelled:
                changed.append(OrderRefund(o.order_id, refunded, cancelled))
                out["updated"].append(o.order_id)
                if old.friend:
                    friends.add(old.friend)
            else:
                out["duplicate"].append(o.order_id)
            continue
        record = OrderRecord(
            o.order_id,
            o.customer,
            owner,
            bool(o.friend),
            o.at,
            float(o.amount),
            o.items,
            o.source,
            o.external_id,
            o.refunded if old is not None else float(o.refunded),
            o.cancelled,
        )
        (fill if old is not None else new_rows).append(record)  # fill: a refund arrived before its order
        existing[o.order_id] = OrderState(o.order_id, o.amount, o.refunded, o.cancelled, owner, o.external_id)
        out["counted" if owner else "kept"].append(o.order_id)
        if owner:
            friends.add(owner)
    if new_rows:
        store.insert_orders(new_rows, now)
    if fill:
        store.complete_orders(fill)
    if changed:
        store.set_refunds(changed)
    if external:
        store.set_external_ids(external)
    if fill or changed or any(o.refunded for o in orders):
        store.cancel_refunded_in_full(batch)
    project(store, out["counted"] + out["updated"] + [f.order_id for f in fill], fresh=not (out["updated"] or fill))
    recount(store, friends)
    return out


def _take_early_refunds(store: Store, orders: Sequence[Order]) -> Sequence[Order]:
    """Refunds and cancellations that arrived before their order and name it by the shop
    system's id (Shopify's ``refunds/create`` before its ``orders/create``) are kept under that
    id; they join the order now that it arrives, and their placeholder goes."""
    ids = [o.external_id for o in orders if o.external_id and o.external_id != o.order_id]
    if not ids:
        return orders
    early = store.take_early_refunds(ids)
    if not early:
        return orders
    out = []
    for o in orders:
        if o.external_id in early:
            _, refunded, cancelled = early[o.external_id]
            o = replace(o, refunded=min(max(o.refunded, refunded), o.amount), cancelled=o.cancelled or cancelled)
        out.append(o)
    return out


def _record_new(store: Store, o: Order, now: int) -> str | None:
    """One new order without refunds (the engine's purchase event), in few statements: the same
    rows :func:`record_orders` writes, the friend's totals incremented rather than recounted.
    None when the order id is already stored (the general path decides)."""
    if store.order_exists(o.order_id):
        return None
    owner = o.friend or (linked_friend(store, o.customer) if o.customer else None)
    store.insert_orders(
        [OrderRecord(o.order_id, o.customer, owner, bool(o.friend), o.at, o.amount, o.items, o.source, o.external_id)],
        now,
    )
    if owner is None:
        return "kept"
    # the amount as the event gave it: one SQLite cannot hold fails the event (set aside)
    store.purchase(owner, o.at, o.amount, list(o.items), o.order_id)
    return "counted"


def refund(
    store: Store,
    order_id: str,
    amount: float | None,
    at: int,
    *,
    customer: str | None = None,
    friend: str | None = None,
) -> str | None:
    """Take ``amount`` (None: the whole order, a cancellation) back out of an order; an order
    refunded in full no longer counts as an order. A refund for an order not seen yet is kept
    and applies when the order arrives. Returns the friend the order counts for, if any."""
    order_id = find_order(store, order_id) or order_id
    state = store.order_states([order_id]).get(order_id)
    if state is None:
        store.add_early_refund(
            order_id,
            customer=customer_key(customer) if customer else None,
            friend=friend,
            at=at,
            refunded=float(amount or 0),
            cancelled=amount is None,
        )
        return None
    _, total, refunded, cancelled, owner, _ = state
    if total is None:
        refunded, cancelled = refunded + (amount or 0), cancelled or amount is None
    elif amount is None:
        refunded, cancelled = total, True
    else:
        refunded = min(total, refunded + amount)
        cancelled = bool(cancelled) or (total > 0 and refunded >= total)
    store.set_refunds([OrderRefund(order_id, refunded, bool(cancelled))])
    if owner:
        project(store, [order_id])
        recount(store, [owner])
    return owner


def project(store: Store, order_ids: Iterable[str], *, fresh: bool = False) -> None:
    """Redo the activity rows of these orders (:meth:`Store.project_orders`)."""
    store.project_orders(order_ids, fresh=fresh)


def recount(store: Store, friends: Iterable[str]) -> None:
    """Recompute the purchase measures of these friends (:meth:`Store.recount_purchases`)."""
    store.recount_purchases(friends)


# ----------------------------------------------------------------------------- the engine's hook


def handle(store: Store, ev: EventRow) -> Handled | None:
    """The shop side of one event being processed (inside the engine's transaction). None: the
    event is not the shop side's business and goes on as it is. An event stored without a friend
    that now applies to one is recorded under that friend."""
    out = _handle(store, ev)
    if out is not None and out.friend and not ev.friend:
        store.set_events_friend([ev.seq], out.friend)
    return out


def _handle(store: Store, ev: EventRow) -> Handled | None:
    data, kind, at = ev.data, ev.type, ev.at
    friend = ev.friend or None
    customer = data.get("customer")
    if kind == ACCOUNT_LINK:
        return _account_link(store, ev)
    if kind == "identify":
        linked = link(store, customer, ev.friend, "identify", at)
        return Handled(
            ev.friend,
            data,
            fire=False,
            linked=[(ev.friend, {"customer": customer_key(customer), "via": "identify"})] if linked else [],
        )
    if kind == "unlink":
        done = unlink(store, friend=friend, customer=customer, via="event", at=at)
        return Handled(done[1] if done else friend, data, fire=False)
    if friend is None and customer:
        friend = linked_friend(store, customer)
    if kind == "purchase":
        result = record_orders(
            store,
            [
                Order(
                    order_id=data["order_id"],
                    at=at,
                    amount=data.get("amount", 0),
                    items=data.get("items") or (),
                    customer=customer,
                    friend=ev.friend or None,
                    source=data.get("source", "event"),
                    external_id=data.get("external_id"),
                )
            ],
            at,
        )
        if result["duplicate"] or result["updated"]:
            log.info("order %s was already recorded (an import?): not counted again", data["order_id"])
            return Handled(friend, data, fire=False)
        return Handled(friend, data)
    if kind == "refund":
        owner = refund(store, data["order_id"], data.get("amount"), at, customer=customer, friend=ev.friend or None)
        return Handled(friend or owner, data)
    if kind in ("message", "postback"):
        return _order_number_link(store, ev)
    if friend is None and not customer and data.get("order_id"):
        # a shop event about an order (Shopify's fulfillments name only the order)
        owner = order_owner(store, data["order_id"])
        return Handled(owner, data)
    if friend is None and customer:
        return Handled(None, data)  # kept until the customer is linked
    if customer and not ev.friend:
        return Handled(friend, data)
    return None


def _account_link(store: Store, ev: EventRow) -> Handled:
    data = ev.data
    if data.get("result") != "ok":
        log.info("account link of %s failed at LINE (result %s)", ev.friend, data.get("result"))
        return Handled(ev.friend, data, fire=False)
    customer = store.take_nonce(data.get("nonce") or "", ev.at)
    if customer is None:
        log.warning("account link of %s: unknown or used nonce; the shop must register it first", ev.friend)
        return Handled(ev.friend, data, fire=False)
    linked = link(store, customer, ev.friend, "account_link", ev.at)
    return Handled(
        ev.friend,
        data,
        fire=False,
        linked=[(ev.friend, {"customer": customer, "via": "account_link"})] if linked else [],
    )


def _order_number_link(store: Store, ev: EventRow) -> Handled | None:
    """A friend who sends the number of an order the shop has (in chat or a postback's
    ``order_id``) is linked to that order's customer, unless another friend holds that link."""
    data = ev.data
    if ev.type == "message":
        text = unicodedata.normalize("NFKC", data.get("text") or "").translate(_DASHES)
        numbers = ORDER_NUMBER_RE.findall(text)
    else:
        pairs = parse_qsl(data.get("data") or "", keep_blank_values=True)
        typed = [unicodedata.normalize("NFKC", v).strip() for k, v in pairs if k in ORDER_KEYS]
        numbers = list(dict.fromkeys([*typed, *(t.translate(_DASHES) for t in typed)]))
    for number in numbers:
        customer = store.order_customer(number)
        if customer is None:
            continue
        holder = linked_friend(store, customer)
        if holder is not None and holder != ev.friend:
            log.warning(
                "friend %s sent order %s, whose customer is linked to another friend: not moved", ev.friend, number
            )
            continue
        if link(store, customer, ev.friend, "order_number", ev.at):
            return Handled(
                ev.friend, data, linked=[(ev.friend, {"customer": customer, "via": "order_number", "order_id": number})]
            )
    return None
