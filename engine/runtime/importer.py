"""``linerules import orders|customers``: the shop's history on the day it starts (docs/shop.md).

Order files are read whole and checked before anything is written; each order is then stored
by its id (:func:`engine.runtime.identity.record_orders`), so importing a file twice doubles nothing,
and an order refused for a bad row is named by ``file:line`` with the reason. Importing sends
nothing and fires no rule: the history only changes what conditions see.

Three order formats, one row per line item:

- ``shopify``: Shopify's order export (Orders > Export), UTF-8, columns as Shopify writes them
  (``Name``, ``Email``, ``Created at``, ``Total``, ``Lineitem sku`` ...);
- ``rakuten``: Rakuten RMS's order CSV, Shift_JIS (CP932), Japanese headers (``受注番号``,
  ``注文日時`` ...); the customer key is the orderer's (masked) e-mail address;
- ``csv``: a plain CSV with the columns of :data:`PLAIN` (UTF-8 or CP932).

``--columns field=Header,...`` names a differently called column for any field.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import re
import sys
import time
import unicodedata
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from engine import i18n
from engine.i18n import UserError, _, n_, render

from .events import customer_key
from .identity import Order, link_many, record_orders
from .store import Store, StoreError

#: Orders written per transaction.
CHUNK = 5000

#: Order fields -> the column names each format uses for them, first match wins.
SHOPIFY: dict[str, tuple[str, ...]] = {
    "order_id": ("Name",),
    "customer": ("Email",),
    "at": ("Created at",),
    "amount": ("Total",),
    "product": ("Lineitem sku",),
    "name": ("Lineitem name",),
    "price": ("Lineitem price",),
    "quantity": ("Lineitem quantity",),
    "cancelled": ("Cancelled at",),
    "refunded": ("Refunded Amount",),
    "category": ("Product Type", "Lineitem product type"),
    "external_id": ("Id",),
}
RAKUTEN: dict[str, tuple[str, ...]] = {
    "order_id": ("受注番号",),
    "customer": ("注文者メールアドレス", "メールアドレス", "注文者メールアドレス（マスク）"),
    "at": ("注文日時",),
    "date": ("注文日",),
    "time": ("注文時間",),
    "amount": ("合計金額",),
    "product": ("商品管理番号", "商品番号", "商品ID"),
    "name": ("商品名",),
    "price": ("単価", "商品単価"),
    "quantity": ("個数", "数量"),
    "status": ("受注ステータス", "ステータス", "注文ステータス"),
    "refunded": ("合計返金額",),
    "category": ("ジャンルID", "カテゴリ"),
}
PLAIN: dict[str, tuple[str, ...]] = {
    "order_id": ("order_id",),
    "customer": ("customer",),
    "friend": ("friend",),
    "at": ("at",),
    "amount": ("amount",),
    "product": ("product",),
    "category": ("category",),
    "price": ("price",),
    "quantity": ("quantity",),
    "refunded": ("refunded",),
    "cancelled": ("cancelled",),
}
FORMATS = {"shopify": SHOPIFY, "rakuten": RAKUTEN, "csv": PLAIN}
#: The columns an order file must have (``at`` may be ``date`` plus ``time`` in Rakuten's).
REQUIRED = ("order_id", "at", "amount")

#: Customer link files: field -> accepted column names.
CUSTOMERS: dict[str, tuple[str, ...]] = {
    "customer": ("customer", "customer_id", "email", "会員ID", "顧客ID", "メールアドレス"),
    "friend": ("friend", "line_user_id", "line_id", "userId", "LINEユーザーID"),
}

#: RMS's "no value" in its amount columns (``合計金額(-99999=無効値)``).
RMS_NO_VALUE = "-99999"
_NUMBER = re.compile(r"[\s,¥￥円]|JPY")
#: Shopify's `` +0900`` after the time, to ISO 8601's ``+09:00``.
_SPACED_OFFSET = re.compile(r"\s*([+-]\d{2}):?(\d{2})$")
_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")
_CANCELLED_WORDS = ("キャンセル", "cancel")


class ImportError_(UserError):
    """A file that cannot be imported at all (one clean line ``error: …``, exit 1)."""


@dataclass
class Summary:
    path: str
    rows: int = 0
    orders: int = 0
    counted: int = 0
    kept: int = 0
    duplicate: int = 0
    updated: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary, in the current language."""
        name = os.path.basename(self.path)
        read = n_(
            "{name}: {n} order read ({rows}) in {seconds}s",
            "{name}: {n} orders read ({rows}) in {seconds}s",
            self.orders,
            name=name,
            rows=n_("{n} row", "{n} rows", self.rows),
            seconds=f"{self.seconds:.1f}",
        )
        counts = [
            _("{n} counted for linked friends", n=self.counted),
            _("{n} kept for customers not linked yet (they count once linked)", n=self.kept),
            _("{n} already imported (unchanged)", n=self.duplicate),
        ]
        if self.updated:
            counts.append(_("{n} already imported, refund or cancellation taken in", n=self.updated))
        counts.append(_("{n} refused", n=len(self.refused)))
        out = [render(read), *("  " + render(c) for c in counts)]
        if self.refused:
            out[-1] += ":"
        out += [f"    {self.path}:{line}: {render(reason)}" for line, reason in self.refused]
        return out


# ----------------------------------------------------------------------------- reading


def read_text(path: str, fmt: str) -> str:
    """The file's text: UTF-8 (with or without BOM), else CP932 (Rakuten's Shift_JIS)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ImportError_(_("{path}: cannot read it: {reason}", path=path, reason=exc.strerror)) from None
    encodings = ("cp932", "utf-8-sig") if fmt == "rakuten" else ("utf-8-sig", "cp932")
    if fmt == "rakuten" and raw.startswith(b"\xef\xbb\xbf"):
        encodings = ("utf-8-sig",)
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ImportError_(_("{path}: the file is neither UTF-8 nor Shift_JIS (CP932) text", path=path))


def parse_columns(spec: str | None, known: Iterable[str]) -> dict[str, str]:
    """``"order_id=注文番号,customer=会員ID"`` -> {field: header}."""
    out: dict[str, str] = {}
    known = list(known)
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, header = part.partition("=")
        name, header = name.strip(), header.strip()
        if not sep or not header:
            raise click.BadParameter(
                render(_("`{part}` is not FIELD=Column header", part=part.strip())), param_hint="'--columns'"
            )
        if name not in known:
            raise click.BadParameter(
                render(_("unknown field `{name}` (fields: {fields})", name=name, fields=", ".join(known))),
                param_hint="'--columns'",
            )
        out[name] = header
    return out


def _rows(path: str, text: str) -> tuple[list[str], Iterable[tuple[int, list[str]]]]:
    """The header and (first line number, values) of every non-empty record."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportError_(_("{path}: the file is empty", path=path)) from None
    except csv.Error as exc:
        raise ImportError_(_("{path}:{line}: not CSV: {reason}", path=path, line=1, reason=exc)) from None
    header = [h.strip() for h in header]

    def records():
        line = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ImportError_(_("{path}:{line}: not CSV: {reason}", path=path, line=line, reason=exc)) from None
            if "".join(values).strip():
                yield line, values
            line = reader.line_num + 1

    return header, records()


#: A note in parentheses after a column name, as RMS writes ``合計金額(-99999=無効値)``.
_HEADER_NOTE = re.compile(r"\s*\([^()]*\)\s*$")


def _header_key(name: str) -> str:
    """A column name as matched: NFKC (full-width ``（１）`` is ``(1)``), without surrounding
    spaces or a trailing note in parentheses."""
    name = unicodedata.normalize("NFKC", name).strip()
    return _HEADER_NOTE.sub("", name) or name


def _resolve(
    path: str, header: list[str], spec: dict[str, tuple[str, ...]], columns: dict[str, str], fmt: str
) -> dict[str, int]:
    """Field -> column index in this file. A column matches by its exact name, else by its name
    without a note in parentheses (RMS's ``合計金額(-99999=無効値)`` is ``合計金額``)."""
    where = {h: i for i, h in reversed(list(enumerate(header)))}
    for i, h in reversed(list(enumerate(header))):
        where.setdefault(_header_key(h), i)
    out = {}
    for name, candidates in spec.items():
        wanted = (columns[name],) if name in columns else candidates
        for candidate in wanted:
            if candidate in where:
                out[name] = where[candidate]
                break
        else:
            if name in columns:
                raise ImportError_(
                    _(
                        "{path}:1: no column `{column}` (given for {name} by --columns)",
                        path=path,
                        column=columns[name],
                        name=name,
                    )
                )
    missing = [n for n in REQUIRED if n not in out and not (n == "at" and "date" in out)]
    if "customer" not in out and "friend" not in out:
        missing.append("customer")
    if missing:
        names = ", ".join(f"{n} (`{'` or `'.join(spec.get(n, (n,)))}`)" for n in missing)
        raise ImportError_(
            _(
                "{path}:1: this is not a {format} order file: no column for {names}; "
                "name the columns with --columns FIELD=Header",
                path=path,
                format=fmt,
                names=names,
            )
        )
    return out


def parse_amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float(_NUMBER.sub("", text))
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def parse_time(text: str, tz: dt.tzinfo) -> int:
    """Shopify's ``2026-11-01 10:00:00 +0900``, ISO 8601, or a local ``2026/11/01 10:00[:00]``
    (in the configured zone)."""
    text = text.strip()
    if "/" in text:
        text = text.replace("/", "-")
    tail = text[-6:]
    if "+" in tail or "-" in tail:  # an offset, perhaps written `` +0900``
        text = _SPACED_OFFSET.sub(r"\1:\2", text)
    if not _DATE_START.match(text):
        raise ValueError(text)
    when = dt.datetime.fromisoformat(text)  # raises ValueError
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return int(when.timestamp())


class _Bad(ValueError):
    pass


def read_orders(path: str, fmt: str, columns: dict[str, str], tz: dt.tzinfo) -> tuple[list[Order], Summary]:
    """Every order of the file (rows grouped by order id), and the refused ones in the summary."""
    spec = FORMATS[fmt]
    text = read_text(path, fmt)
    header, records = _rows(path, text)
    cols = _resolve(path, header, spec, columns, fmt)
    summary = Summary(path)
    groups: dict[str, dict[str, Any]] = {}
    order_fields = [
        (n, i)
        for n, i in cols.items()
        if n in ("customer", "friend", "at", "date", "time", "amount", "refunded", "cancelled", "status", "external_id")
    ]
    # the item's columns by index (-1: the file has none), read straight from each row
    index = {n: cols.get(n, -1) for n in ("product", "name", "category", "price", "quantity")}
    p_i, n_i, c_i, pr_i, q_i = (index[n] for n in ("product", "name", "category", "price", "quantity"))
    id_i = cols["order_id"]
    for line, values in records:
        summary.rows += 1
        width = len(values)
        order_id = values[id_i].strip() if id_i < width else ""
        if not order_id:
            summary.refused.append((line, _("no order id (column `{column}`)", column=header[id_i])))
            continue
        group = groups.get(order_id)
        if group is None:
            group = groups[order_id] = {"line": line, "items": [], "error": None, "first": {}}
        first = group["first"]
        for name, i in order_fields:
            if i < width and name not in first:
                value = values[i].strip()
                if value:
                    first[name] = (value, line)
        product = (values[p_i].strip() if 0 <= p_i < width else "") or (values[n_i].strip() if 0 <= n_i < width else "")
        if not product:
            continue
        try:
            group["items"].append(
                _item(
                    product,
                    values[c_i].strip() if 0 <= c_i < width else "",
                    values[pr_i].strip() if 0 <= pr_i < width else "",
                    values[q_i].strip() if 0 <= q_i < width else "",
                    header,
                    cols,
                )
            )
        except _Bad as exc:
            group["error"] = group["error"] or (line, _("order {order}: {reason}", order=order_id, reason=exc.args[0]))
    orders = []
    for order_id, group in groups.items():
        if group["error"]:
            summary.refused.append(group["error"])
            continue
        try:
            orders.append(_order(order_id, group, header, cols, fmt, tz))
        except _Bad as exc:
            summary.refused.append((exc.args[1], _("order {order}: {reason}", order=order_id, reason=exc.args[0])))
    summary.refused.sort()
    summary.orders = len(orders)
    return orders, summary


def _column(header: list[str], cols: dict[str, int], name: str) -> str:
    return header[cols[name]] if name in cols else name


def _item(product: str, category: str, price: str, quantity: str, header: list[str], cols: dict[str, int]) -> dict:
    item: dict[str, Any] = {"product": product}
    if category:
        item["category"] = category
    if price:
        try:
            item["price"] = parse_amount(price)
        except ValueError:
            raise _Bad(
                _("`{column}` {value} is not an amount", column=_column(header, cols, "price"), value=repr(price))
            ) from None
    if quantity:
        try:
            item["quantity"] = int(quantity) if quantity.isdigit() else int(parse_amount(quantity))
            if item["quantity"] < 1:
                raise ValueError
        except ValueError:
            raise _Bad(
                _(
                    "`{column}` {value} is not a count of 1 or more",
                    column=_column(header, cols, "quantity"),
                    value=repr(quantity),
                )
            ) from None
    return item


def _order(order_id: str, group: dict, header: list[str], cols: dict[str, int], fmt: str, tz: dt.tzinfo) -> Order:
    first = group["first"]
    line = group["line"]

    def need(name: str) -> tuple[str, int]:
        if name not in first:
            raise _Bad(_("no value in `{column}`", column=_column(header, cols, name)), line)
        return first[name]

    if "at" in first or "date" not in first:
        text, where = need("at")
    else:
        (day, where), clock = first["date"], first.get("time", ("00:00:00", line))[0]
        text = f"{day} {clock}"
    try:
        at = parse_time(text, tz)
    except ValueError:
        column = _column(header, cols, "at" if "at" in cols else "date")
        raise _Bad(_("`{column}` {value} is not a date and time", column=column, value=repr(text)), where) from None
    amount_text, where = need("amount")
    if fmt == "rakuten" and amount_text.strip() == RMS_NO_VALUE:
        raise _Bad(
            _(
                "`{column}` is {value}: RMS has no total for this order yet (shipping or price not fixed); "
                "import it again once it has one",
                column=_column(header, cols, "amount"),
                value=RMS_NO_VALUE,
            ),
            where,
        )
    try:
        amount = parse_amount(amount_text)
    except ValueError:
        raise _Bad(
            _("`{column}` {value} is not an amount", column=_column(header, cols, "amount"), value=repr(amount_text)),
            where,
        ) from None
    customer = first.get("customer", ("", line))[0]
    friend = first.get("friend", ("", line))[0]
    if not customer and not friend:
        raise _Bad(_("no customer (`{column}` is empty)", column=_column(header, cols, "customer")), line)
    refunded = 0.0
    if "refunded" in first:
        try:
            refunded = parse_amount(first["refunded"][0])
        except ValueError:
            column, value = _column(header, cols, "refunded"), repr(first["refunded"][0])
            raise _Bad(
                _("`{column}` {value} is not an amount", column=column, value=value), first["refunded"][1]
            ) from None
    cancelled = "cancelled" in first and first["cancelled"][0].lower() not in ("0", "false", "no", "")
    status = first.get("status", ("", line))[0]
    if status and not cancelled:
        lowered = status.lower()
        cancelled = any(w in lowered for w in _CANCELLED_WORDS)
    # Shopify's own id of the order (the export's `Id`), as its webhooks name the order
    external = first.get("external_id", ("", line))[0]
    return Order(
        order_id=order_id,
        at=at,
        amount=amount,
        items=tuple(group["items"]),
        customer=customer_key(customer) if customer else None,
        friend=friend or None,
        refunded=min(refunded, amount),
        cancelled=cancelled,
        source=f"import:{fmt}",
        external_id=f"shopify:{external}" if external and fmt == "shopify" else None,
    )


# ----------------------------------------------------------------------------- writing


def import_orders(store: Store, orders: Sequence[Order], summary: Summary, *, progress: bool = False) -> Summary:
    """Store ``orders`` in transactions of :data:`CHUNK`, counting the outcomes into ``summary``."""
    now = int(time.time())
    chunks = [orders[i : i + CHUNK] for i in range(0, len(orders), CHUNK)]
    bar = (
        click.progressbar(length=len(orders), label=render(_("importing orders")), file=sys.stderr, show_pos=True)
        if progress and orders
        else None
    )
    try:
        for chunk in chunks:
            with store.transaction():
                out = record_orders(store, chunk, now)
            summary.counted += len(out["counted"])
            summary.kept += len(out["kept"])
            summary.duplicate += len(out["duplicate"])
            summary.updated += len(out["updated"])
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.render_finish()
    return summary


def zone_of(rules_dir: str) -> zoneinfo.ZoneInfo:
    """The configured zone (settings.yaml of the rule folder), for local times in the files."""
    return _settings_of(rules_dir).tz


def _settings_of(rules_dir: str):
    """settings.yaml of the rule folder (the defaults when there is none)."""
    from engine.language import ir
    from engine.language.settings import load_settings

    path = os.path.join(rules_dir, "settings.yaml")
    try:
        with open(path, encoding="utf-8") as fh:
            return load_settings(path, fh.read())[0]
    except OSError:
        return ir.Settings()


def _open_store(db: str) -> Store:
    """The database to import into (created when missing); a clean error when it cannot be
    opened or is not a linerules database."""
    try:
        return Store(db)
    except StoreError as exc:
        raise ImportError_(f"--db: {render(exc.args[0])}") from None


def main_orders(path: str, fmt: str, columns: str | None, db: str, rules_dir: str, lang: str | None = None) -> int:
    """``linerules import orders``: the summary in ``lang`` (else settings.yaml's ``language``...)."""
    started = time.perf_counter()
    settings = _settings_of(rules_dir)
    i18n.use(i18n.choose(lang, settings.language))
    orders, summary = read_orders(path, fmt, parse_columns(columns, FORMATS[fmt]), settings.tz)
    store = _open_store(db)
    try:
        import_orders(store, orders, summary, progress=sys.stderr.isatty())
    finally:
        store.close()
    summary.seconds = time.perf_counter() - started
    click.echo("\n".join(summary.lines()))
    return 0


def main_customers(path: str, columns: str | None, db: str, lang: str | None = None, rules_dir: str = "rules") -> int:
    """``linerules import customers``: customer id <-> LINE user id links (no rule fires); the
    summary in ``lang`` (else settings.yaml's ``language``...)."""
    from engine.language.settings import folder_language

    i18n.use(i18n.choose(lang, folder_language(rules_dir)))
    text = read_text(path, "csv")
    header, records = _rows(path, text)
    cols = _resolve_customers(path, header, parse_columns(columns, CUSTOMERS))
    pairs, refused, rows = [], [], 0
    for line, values in records:
        rows += 1
        customer = values[cols["customer"]].strip() if cols["customer"] < len(values) else ""
        friend = values[cols["friend"]].strip() if cols["friend"] < len(values) else ""
        if not customer:
            refused.append((line, _("no customer id")))
        elif not friend:
            refused.append((line, _("customer {customer}: no LINE user id", customer=customer)))
        elif " " in friend or not friend.startswith("U"):
            refused.append(
                (
                    line,
                    _(
                        "customer {customer}: `{friend}` is not a LINE user id (U followed by 32 hex digits)",
                        customer=customer,
                        friend=friend,
                    ),
                )
            )
        else:
            pairs.append((customer, friend))
    store = _open_store(db)
    try:
        with store.transaction():
            counts = link_many(store, pairs, "import", int(time.time()))
    finally:
        store.close()
    name = os.path.basename(path)
    lines = [
        render(n_("{name}: {n} row read", "{name}: {n} rows read", rows, name=name)),
        "  " + render(_("{n} linked (their kept orders count now)", n=counts["linked"])),
        "  " + render(_("{n} already linked (unchanged)", n=counts["unchanged"])),
        "  " + render(_("{n} refused", n=len(refused))) + (":" if refused else ""),
    ]
    lines += [f"    {path}:{line}: {render(reason)}" for line, reason in refused]
    click.echo("\n".join(lines))
    return 0


def _resolve_customers(path: str, header: list[str], columns: dict[str, str]) -> dict[str, int]:
    where = {h: i for i, h in reversed(list(enumerate(header)))}
    out = {}
    for name, candidates in CUSTOMERS.items():
        wanted = (columns[name],) if name in columns else candidates
        found = next((where[c] for c in wanted if c in where), None)
        if found is None:
            raise ImportError_(
                _(
                    "{path}:1: no column for {name} ({columns}); name it with --columns FIELD=Header",
                    path=path,
                    name=name,
                    columns="`" + "` or `".join(wanted) + "`",
                )
            )
        out[name] = found
    return out
