"""``sale_calendar.yaml``: the shop's sales, which ``sale ... starts|ends`` triggers follow.

::

    sales:
      - name: super_sale_2026_12
        title: 楽天スーパーSALE
        kind: super_sale
        starts: 2026-12-04 20:00
        ends: 2026-12-11 01:59
        url: https://shop.example.jp/sale

Times are local to the configured zone unless they carry an offset. :func:`load_sales` never
raises; every problem is a :class:`Diagnostic` at the value's line and column.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import zoneinfo
from typing import Any
from urllib.parse import urlsplit

import yaml

from engine.i18n import E, _, join

from . import ir
from .diagnostics import Diagnostic, dedupe, did_you_mean
from .ir import NAME_RE
from .yamlpos import YamlFile

FIELDS = ("name", "title", "kind", "starts", "ends", "url")
REQUIRED = ("name", "title", "starts", "ends")
_SLASH_DATE = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})")


def parse_time(value: Any, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """A sale time as an aware datetime in ``tz``.

    Accepts ``2026-12-04 20:00``, ``2026-12-04T20:00:00+09:00``, ``2026/12/04 20:00``, a bare
    date (00:00 local), and the date/datetime objects YAML makes of unquoted values.
    Raises ValueError when it is none of these.
    """
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime.combine(value, dt.time())
    elif isinstance(value, str):
        text = _SLASH_DATE.sub(lambda m: f"{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}", value.strip())
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(E("LR704", "`{value}` is not a date and time", value=value)) from None
    else:
        raise ValueError(E("LR704", "`{value}` is not a date and time", value=value))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=tz)
    return moment.astimezone(tz)


def _is_date_only(value: Any) -> bool:
    """Whether a sale time was written as a date without a time of day."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return True
    return isinstance(value, str) and re.fullmatch(r"\s*\d{4}[-/]\d{1,2}[-/]\d{1,2}\s*", value) is not None


def load_sales(path: str, text: str, tz: zoneinfo.ZoneInfo) -> tuple[tuple[ir.Sale, ...], list[Diagnostic]]:
    """Read ``sale_calendar.yaml``; an empty file means no sales. Diagnostics come sorted."""
    sales, _, diags = read_sales(path, text, tz)
    return sales, diags


def read_sales(path: str, text: str, tz: zoneinfo.ZoneInfo) -> tuple[tuple[ir.Sale, ...], bool, list[Diagnostic]]:
    """:func:`load_sales`, and whether the file is whole: ``False`` when it could not be read
    as YAML or a sale in it has an error (the rules' sale checks then have too little to go
    on)."""
    f = YamlFile(path, text)
    sales = _sales(f, tz)
    return sales, not any(d.is_error for d in f.diagnostics), dedupe(f.diagnostics)


def _sales(f: YamlFile, tz: zoneinfo.ZoneInfo) -> tuple[ir.Sale, ...]:
    """The valid sales of the file, reporting the rest."""
    root = f.root
    if f.empty:
        return ()
    if not isinstance(root, yaml.MappingNode):
        f.error(
            f.span(root),
            E("LR700", "sale_calendar.yaml must be a mapping with a `sales:` list"),
            help=_("start the file with `sales:` and list one sale per item"),
        )
        return ()
    sales_node = None
    for key, key_node, value_node in f.items(root):
        if key == "sales":
            sales_node = value_node
        else:
            f.error(f.span(key_node), E("LR700", "unknown key `{key}`", key=key), help=did_you_mean(key, ["sales"]))
    if sales_node is None:
        return ()
    items = f.plain(sales_node, ("sales",))
    if items is None:
        return ()
    if not isinstance(items, list):
        f.error(
            f.span(sales_node),
            E("LR700", "`sales` must be a list of sales"),
            help=_("write each sale as an item starting with `- name: ...`"),
        )
        return ()
    sales: list[ir.Sale] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        sale = _sale(f, ("sales", i), item, tz)
        # a name is taken by the first sale that has it, valid or not: a second sale of that
        # name is told so even when either has other errors too
        name = item.get("name") if isinstance(item, dict) else None
        if not (isinstance(name, str) and NAME_RE.fullmatch(name)):
            continue
        if name in seen:
            f.error(
                f.span_at(("sales", i, "name")),
                E("LR701", "duplicate sale name `{name}`", name=name),
                help=_("sale {number} already uses it; give each sale its own name", number=seen[name] + 1),
            )
            continue
        seen[name] = i
        if sale is not None:
            sales.append(sale)
    return tuple(sales)


def _sale(f: YamlFile, path, item: Any, tz: zoneinfo.ZoneInfo) -> ir.Sale | None:
    """One sale, or None after reporting what is wrong with it."""
    if not isinstance(item, dict):
        f.error(f.span_at(path), E("LR700", "a sale must be a mapping with name, title, starts and ends"))
        return None
    errors = sum(d.is_error for d in f.diagnostics)
    for key in item:
        if key not in FIELDS:
            f.error(
                f.span_at(path + (key,), key=True),
                E("LR702", "unknown sale field `{key}`", key=key),
                help=did_you_mean(key, FIELDS),
            )
    for key in FIELDS:
        if key in item and item[key] is None:
            f.error(
                f.span_at(path + (key,), key=True),
                E("LR702", "`{key}` has no value", key=key),
                help=f.empty_value_help(path + (key,), key),
            )
    # a field missing because it is misspelt (`strats:`) is told once, at the typo, which the
    # unknown-field error above names with the right spelling
    typos = {
        close
        for key in item
        if key not in FIELDS and isinstance(key, str)
        for close in difflib.get_close_matches(key, REQUIRED, n=1, cutoff=2 / 3 - 1e-9)
    }
    missing = [k for k in REQUIRED if k not in item and k not in typos]
    if missing:
        f.error(
            f.span_at(path),
            E("LR702", "sale is missing {fields}", fields=join(f"`{k}`" for k in missing)),
            help=_("every sale needs name, title, starts and ends"),
        )
    for key in ("name", "kind"):
        value = item.get(key)
        if value is not None and not (isinstance(value, str) and NAME_RE.fullmatch(value)):
            f.error(
                f.span_at(path + (key,)),
                E("LR703", "`{value}` is not a valid sale {key}", value=value, key=key),
                help=_("a name starts with a letter and continues with letters, digits, _ or -"),
            )
    title = item.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip()):
        f.error(f.span_at(path + ("title",)), E("LR703", "`title` must be text"))
    times: dict[str, dt.datetime] = {}
    for key in ("starts", "ends"):
        if item.get(key) is None:
            continue
        try:
            times[key] = parse_time(item[key], tz)
        except ValueError as e:
            f.error(
                f.span_at(path + (key,)),
                e.args[0],
                help=_("write `2026-12-04 20:00` (local time), `2026-12-04T20:00:00+09:00` or a date `2026-12-04`"),
            )
    if len(times) == 2:
        starts, ends = times["starts"], times["ends"]
        day_only = _is_date_only(item["ends"])
        through = _(
            "a date alone is 00:00, the start of that day: for a sale through {day}, write `ends: {day} 23:59`",
            day=f"{ends:%Y-%m-%d}",
        )
        if ends <= starts:
            what = (
                E("LR705", "the sale ends the moment it starts")
                if ends == starts
                else E("LR705", "the sale ends before it starts")
            )
            f.error(
                f.span_at(path + ("ends",)),
                what,
                help=through
                if day_only and ends.date() >= starts.date()
                else _("it starts {starts}; `ends` must be later", starts=f"{starts:%Y-%m-%d %H:%M}"),
            )
        elif day_only:
            f.warning(
                f.span_at(path + ("ends",)),
                E(
                    "LR706",
                    "the sale ends at {day} 00:00, so its last day is {last}",
                    day=f"{ends:%Y-%m-%d}",
                    last=f"{ends - dt.timedelta(days=1):%Y-%m-%d}",
                ),
                help=_(
                    "{through}, or `ends: {day} 00:00` if the day before is meant",
                    through=through,
                    day=f"{ends:%Y-%m-%d}",
                ),
            )
    url = item.get("url")
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "https" or not parts.netloc:
            f.error(f.span_at(path + ("url",)), E("LR703", "`url` must be an https:// link, not `{url}`", url=url))
    if sum(d.is_error for d in f.diagnostics) > errors:
        return None
    return ir.Sale(
        name=item["name"],
        title=title,
        starts=times["starts"],
        ends=times["ends"],
        kind=item.get("kind"),
        url=url,
        span=f.span_at(path),
    )
