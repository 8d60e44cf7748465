"""``linerules report``: what each rule did, what it earned and cost, which variant won.

Everything is read through the store's read-only report queries (:mod:`engine.runtime.store`,
"reading for reports"); the numbers are put together here in one pass over the sends, orders,
clicks and follow events:

- a *send* is a delivery LINE accepted (a push, one recipient of a multicast, or a reply);
  rich menu links are not sends;
- a *conversion* is an order (one ``purchase`` event) made within ``attribution_days`` after a
  send to that friend; it is counted once, for the last send strictly before it (any rule);
- a *block after send* is an ``unfollow`` within ``block_days`` after a send, counted once for
  the last send strictly before it; the block rate is blocks per send;
- experiments compare the friends who entered a rule, arm by arm (split variants and the
  holdout): an arm's conversion rate is the share of its friends who ordered within
  ``attribution_days`` after entering (holdout friends get no sends to attribute to);
  95% Wilson intervals for rates, Newcombe's hybrid score interval for the difference.

Each fact is counted when it happened: ``--since``/``--until`` select sends by their send time,
conversions by the order time, blocks by the block time, entries by the entry time.
docs/reports.md describes every figure.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
import time
import unicodedata
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import click
from babel.dates import format_date, format_skeleton, format_time
from babel.numbers import format_currency, format_decimal

from engine import i18n
from engine.i18n import _, join, language, render
from engine.language import ir, timeutil
from engine.runtime.store import DeliveryRow, EnrollmentRow, OrderRow, Store, StoreError, is_postgres

DAY = 86400
#: Days after a send within which a block is counted against it (``--block-days``).
BLOCK_DAYS = 7
#: A friend is active when they clicked, messaged or purchased within this many days.
ACTIVE_DAYS = 30
#: Fewer friends than this in an arm: the experiment has not enough data yet.
MIN_ARM = 30
#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054
#: LINE's Japanese plans: (name, monthly fee in yen, messages included, yen per extra message or
#: None when the plan allows no extra messages). Standard's extra price falls with volume;
#: 3 yen is its upper bound, so costs above 30,000 messages are upper bounds.
PLANS: tuple[tuple[str, int, int, int | None], ...] = (
    ("Communication", 0, 200, None),
    ("Light", 5000, 5000, None),
    ("Standard", 15000, 30000, 3),
)
#: Counters kept per rule and per step, in the order they are shown.
COUNTS = (
    "pushes",
    "replies",
    "capped",
    "skipped",
    "held",
    "rejected",
    "clicks",
    "conversions",
    "revenue",
    "blocks_after_send",
)
HOLDOUT = "holdout"
#: The arm name of a rule with a holdout but no split.
TREATED = "sent"


class ReportError(Exception):
    """A data error: missing database, a file that cannot be written (exit 1)."""


class ReportUsageError(ReportError):
    """A mistake in the command line: a date that is not one, an unknown rule (exit 2)."""


@dataclass(frozen=True)
class Options:
    """What to report and how: the zone, the windows in days and the filters (epoch seconds,
    ``until`` exclusive)."""

    tz: ZoneInfo
    attribution_days: int = 7
    block_days: int = BLOCK_DAYS
    monthly_quota: int | None = None
    since: int | None = None
    until: int | None = None
    rules: tuple[str, ...] = ()

    def has(self, ts: int) -> bool:
        """Whether a moment lies in the selected period."""
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


@dataclass
class _Index:
    """Sent deliveries per friend in (time, id) order, for "the last send before" look-ups."""

    times: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    sends: dict[str, list[DeliveryRow]] = field(default_factory=lambda: defaultdict(list))

    def add(self, send: DeliveryRow) -> None:
        self.times[send.friend].append(send.at)
        self.sends[send.friend].append(send)

    def last_before(self, friend: str, ts: int, within: int) -> DeliveryRow | None:
        """The last send strictly before ``ts`` and at most ``within`` seconds earlier."""
        i = bisect_left(self.times.get(friend, ()), ts) - 1
        if i < 0:
            return None
        send = self.sends[friend][i]
        return send if ts - send.at <= within else None

    def clicked(self, friend: str, rule: str | None, message: str | None, ts: int) -> DeliveryRow | None:
        """The send a click came from: the last send of that rule at or before the click that
        carried the message (else the rule's last send)."""
        sends = self.sends.get(friend, ())
        fallback = None
        for i in range(bisect_right(self.times.get(friend, ()), ts) - 1, -1, -1):
            s = sends[i]
            if s.rule != rule:
                continue
            if message in s.messages:
                return s
            fallback = fallback or s
        return fallback


# ----------------------------------------------------------------------------- statistics


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion k/n (None when n is 0)."""
    if n <= 0:
        return None
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float] | None:
    """The 95% interval of p1 - p2 by Newcombe's hybrid score method (from the two Wilson
    intervals); None when an arm is empty."""
    a, b = wilson(k1, n1), wilson(k2, n2)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return (d - math.sqrt((p1 - a[0]) ** 2 + (b[1] - p2) ** 2), d + math.sqrt((a[1] - p1) ** 2 + (p2 - b[0]) ** 2))


def plan_for(messages: int) -> tuple[str, int]:
    """The cheapest Japanese plan that carries ``messages`` billable messages in a month, and
    its cost in yen."""
    costs = [
        (fee + max(0, messages - included) * extra if extra is not None else fee, i, name)
        for i, (name, fee, included, extra) in enumerate(PLANS)
        if extra is not None or messages <= included
    ]
    cost, _, name = min(costs)
    return name, cost


# ----------------------------------------------------------------------------- reading the database


def open_db(path: str) -> Store:
    """The database at ``path``, opened read-only through the store; ReportError when there is
    none or it is not a linerules database."""
    if not is_postgres(path) and not os.path.lexists(path):
        raise ReportError(
            _(
                "--db: {path} does not exist (give the runner's database, or one kept "
                "by `linerules simulate --db FILE`)",
                path=path,
            )
        )
    try:
        return Store(path, read_only=True)
    except StoreError as exc:
        raise ReportError(_("--db: {reason}", reason=exc.args[0])) from None


def _sends(store: Store, o: Options) -> list[DeliveryRow]:
    """Deliveries (not rich menu links) that can matter for the period: from the longest
    look-back window before ``since`` up to ``until``; then the sends not decided yet (waiting
    for the window, the quota): held, at their due time."""
    since = None if o.since is None else o.since - max(o.attribution_days, o.block_days) * DAY
    out = store.report_deliveries(since, o.until)
    out += [
        DeliveryRow(-i.id, i.friend, i.rule, i.step, i.messages, "queued", i.variant, i.due_at, None)
        for i in store.report_intents(since, o.until)
    ]
    return out


def _step_order(store: Store, project: ir.Project | None) -> dict[str, list[str]]:
    """Step ids per rule in the order of the rule folder (else of its last stored version)."""
    order = store.report_step_orders()
    if project is not None:
        order.update({name: [s.id for s in r.steps] for name, r in project.rules.items()})
    return order


def known_rules(store: Store, project: ir.Project | None) -> list[str]:
    """Every rule name in the rule folder or in the database."""
    names = set(project.rules) if project is not None else set()
    return sorted(names | store.report_rule_names())


def _as_of(store: Store, o: Options) -> int:
    """The moment the report describes: ``until``, else the engine's last tick, else the latest
    recorded activity, else now."""
    if o.until is not None:
        return o.until
    last_tick = store.get_meta("engine.last_tick")
    if last_tick is not None:
        return int(last_tick)
    latest = store.report_latest_at()
    return latest if latest is not None else int(time.time())


# ----------------------------------------------------------------------------- building the report


def build_report(store: Store, o: Options, project: ir.Project | None = None) -> dict:
    """The whole report as JSON-ready data (the ``--format json`` output), read from ``store``."""
    tz = o.tz
    names = known_rules(store, project)
    unknown = [r for r in o.rules if r not in names]
    if unknown:
        from engine.language.diagnostics import did_you_mean

        hint = did_you_mean(unknown[0], names)
        if not names:
            raise ReportUsageError(
                _("--rule: unknown rule `{name}` (the database and the rule folder have no rules)", name=unknown[0])
            )
        raise ReportUsageError(_("--rule: unknown rule `{name}`; {hint}", name=unknown[0], hint=hint))
    shown = list(o.rules) or names
    as_of = _as_of(store, o)
    sends = _sends(store, o)
    index = _Index()
    for s in sends:
        if s.status == "sent":
            index.add(s)

    stats = {r: _Counts() for r in shown}
    steps: dict[str, dict[str, _Counts]] = {r: defaultdict(_Counts) for r in shown}
    reached: dict[str, set[str]] = defaultdict(set)
    daily: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    monthly: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    blocks_by_send_day: dict[str, int] = defaultdict(int)

    def count(rule: str, step: str, key: str, amount: float = 1) -> None:
        if rule in stats:
            stats[rule].add(key, amount)
            steps[rule][step].add(key, amount)

    for s in sends:
        if not o.has(s.at):
            continue
        day = timeutil.local_day(s.at, tz)
        if s.status == "sent":
            count(s.rule, s.step, "pushes")
            reached[s.rule].add(s.friend)
            daily[day]["pushes"] += 1
            if s.kind == "reply":
                count(s.rule, s.step, "replies")
                daily[day]["replies"] += 1
                monthly[day[:7]]["replies"] += 1
            else:
                monthly[day[:7]]["messages"] += 1
        elif s.status == "queued":
            count(s.rule, s.step, "held")
        elif s.status in ("capped", "skipped", "rejected"):
            count(s.rule, s.step, s.status)
            if s.status == "capped":
                daily[day]["capped"] += 1

    clickers: dict[str, set[str]] = defaultdict(set)  # per rule, the friends whose clicks count
    converted: dict[str, set[str]] = defaultdict(set)  # per rule, the friends with a conversion
    for friend, rule, message, at in store.report_clicks():
        if o.has(at) and rule in stats:
            source = index.clicked(friend, rule, message, at)
            if source is not None:
                count(rule, source.step, "clicks")
                clickers[rule].add(friend)
            elif store.report_sent_before(friend, rule, at):
                count(rule, "", "clicks")  # its send is older than the period's look-back
                clickers[rule].add(friend)
            # else the rule never sent the friend anything before: not a click on its messages

    orders = store.report_orders()
    for friend, amount, at in orders:
        if not o.has(at):
            continue
        source = index.last_before(friend, at, o.attribution_days * DAY)
        if source is not None:
            count(source.rule, source.step, "conversions")
            count(source.rule, source.step, "revenue", amount or 0)
            converted[source.rule].add(friend)

    follows = store.report_follows()
    for kind, friend, at in follows:
        if not o.has(at):
            continue
        day = timeutil.local_day(at, tz)
        daily[day]["gained" if kind == "follow" else "lost"] += 1
        if kind == "unfollow":
            source = index.last_before(friend, at, o.block_days * DAY)
            if source is not None:
                count(source.rule, source.step, "blocks_after_send")
                daily[day]["blocks_after_send"] += 1
                blocks_by_send_day[timeutil.local_day(source.at, tz)] += 1

    enrollments = store.report_enrollments()
    entered: dict[str, int] = defaultdict(int)
    exits: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    in_progress: dict[str, int] = defaultdict(int)
    for e in enrollments:
        if o.has(e.entered_at):
            entered[e.rule] += 1
            # still running at the period's end: not finished before ``until`` (else now)
            if e.state in ("active", "waiting") or (
                o.until is not None and e.finished_at is not None and e.finished_at >= o.until
            ):
                in_progress[e.rule] += 1
        if e.finished_at is not None and o.has(e.finished_at) and e.state in ("done", "exited"):
            exits[e.rule]["done" if e.state == "done" else (e.exit_reason or "exited")] += 1

    order = _step_order(store, project)
    rules_out = []
    for rule in shown:
        c = stats[rule]
        rank = {s: i for i, s in enumerate(order.get(rule, []))}
        step_rows = sorted(steps[rule].items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
        rules_out.append(
            {
                "rule": rule,
                "entered": entered[rule],
                **c.json(),
                "reached": len(reached[rule]),
                "clicked": len(clickers[rule]),
                "converted": len(converted[rule]),
                "block_rate": _ratio(c.get("blocks_after_send"), c.get("pushes")),
                "exits": dict(sorted(exits[rule].items())),
                "in_progress": in_progress[rule],
                "steps": [
                    {
                        "step": step or None,
                        **sc.json(),
                        "block_rate": _ratio(sc.get("blocks_after_send"), sc.get("pushes")),
                    }
                    for step, sc in step_rows
                ],
            }
        )

    account = _account(store, o, as_of, daily, monthly, blocks_by_send_day, follows, orders)
    splits = {n: [v for v, _ in r.split] for n, r in project.rules.items()} if project else {}
    holdouts = {n for n, r in project.rules.items() if r.holdout} if project else set()
    experiments = _experiments(enrollments, orders, o, shown, splits, holdouts, set(project.rules) if project else None)
    empty = not (
        any(o.has(e.entered_at) for e in enrollments)
        or any(o.has(s.at) for s in sends)
        or store.report_has_events(o.since if o.since is not None else 0, o.until if o.until is not None else 2**62)
    )
    return {
        "period": {
            "since": _iso(o.since, tz),
            "until": _iso(o.until, tz),
            "as_of": _iso(as_of, tz),
            "timezone": tz.key,
        },
        "settings": {
            "attribution_days": o.attribution_days,
            "block_days": o.block_days,
            "active_days": ACTIVE_DAYS,
            "monthly_quota": o.monthly_quota,
        },
        "empty": empty,
        "rules": rules_out,
        "account": account,
        "experiments": experiments,
    }


class _Counts:
    """The :data:`COUNTS` of one rule or step."""

    def __init__(self) -> None:
        self.values: dict[str, float] = dict.fromkeys(COUNTS, 0)

    def add(self, key: str, amount: float = 1) -> None:
        self.values[key] += amount

    def get(self, key: str) -> float:
        return self.values[key]

    def json(self) -> dict[str, float]:
        return {k: _num(v) for k, v in self.values.items()}


def _account(
    store: Store,
    o: Options,
    as_of: int,
    daily: dict,
    monthly: dict,
    blocks_by_send_day: dict,
    follows: list,
    orders: list,
) -> dict:
    """Friends gained and lost, active friends, sends per day, monthly volume and plan cost."""
    tz = o.tz
    state: dict[str, str] = {}
    for kind, friend, at in follows:
        if at <= as_of:
            state[friend] = kind
    # current friends: their latest follow/unfollow is a follow (SPEC §2.2)
    current = {f for f in store.report_seen_friends(as_of) if state.get(f) == "follow"}
    active = store.report_active_friends(as_of - ACTIVE_DAYS * DAY, as_of)

    days = sorted(daily)
    if days:
        first = timeutil.local_day(o.since, tz) if o.since is not None else days[0]
        days = _day_range(first, max(timeutil.local_day(as_of - 1, tz), days[-1]))
    per_day = []
    for day in days:
        d = daily.get(day, {})
        pushes = int(d.get("pushes", 0))
        per_day.append(
            {
                "day": day,
                "gained": int(d.get("gained", 0)),
                "lost": int(d.get("lost", 0)),
                "pushes": pushes,
                "replies": int(d.get("replies", 0)),
                "capped": int(d.get("capped", 0)),
                "blocks_after_send": int(d.get("blocks_after_send", 0)),
                "block_rate": _ratio(blocks_by_send_day.get(day, 0), pushes),
            }
        )
    months = []
    for month in sorted(monthly):
        m = monthly[month]
        billed, replies = m["messages"], m["replies"]
        plan, cost = plan_for(billed)
        months.append(
            {
                "month": month,
                "messages": billed,
                "replies": replies,
                "quota": o.monthly_quota,
                "quota_used": _ratio(billed, o.monthly_quota or 0),
                "over_quota": bool(o.monthly_quota) and billed > o.monthly_quota,
                "plan": plan,
                "cost_yen": cost,
                "saved_by_replies_yen": plan_for(billed + replies)[1] - cost,
            }
        )
    return {
        "friends": {
            "gained": sum(r["gained"] for r in per_day),
            "lost": sum(r["lost"] for r in per_day),
            "current": len(current),
            "active": len(active & current),
        },
        "days": per_day,
        "months": months,
        "plans": [{"plan": n, "fee_yen": fee, "messages": inc, "extra_yen": extra} for n, fee, inc, extra in PLANS],
    }


def _experiments(
    enrollments: list[EnrollmentRow],
    orders: list[OrderRow],
    o: Options,
    shown: Sequence[str],
    splits: dict[str, list[str]],
    holdouts: set[str],
    configured: set[str] | None = None,
) -> list[dict]:
    """Arms side by side per rule with a split or a holdout, control first. ``configured``: the
    rules of the rule folder (None without one), whose own options say whether they are an
    experiment: a rule started by one inherits its arms, not its experiment."""
    bought: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for friend, amount, at in orders:
        bought[friend].append((at, amount or 0))
    window = o.attribution_days * DAY
    arms: dict[str, dict[str, list[int | float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0.0]))
    for e in enrollments:
        rule = e.rule
        if rule not in shown or not o.has(e.entered_at):
            continue
        if configured is not None and rule in configured:
            if not (rule in holdouts or splits.get(rule)):
                continue
        elif not (e.holdout or e.variant):
            continue
        arm = HOLDOUT if e.holdout else (e.variant or TREATED)
        # an order counts in the period it happened in, like the rules' conversions
        amounts = [a for at, a in bought.get(e.friend, ()) if e.entered_at < at <= e.entered_at + window and o.has(at)]
        cell = arms[rule][arm]
        cell[0] += 1
        cell[1] += 1 if amounts else 0
        cell[2] += sum(amounts)
    out = []
    for rule in shown:
        if rule not in arms:
            continue
        cells = arms[rule]
        listed = splits.get(rule) or sorted(a for a in cells if a != HOLDOUT)
        has_holdout = HOLDOUT in cells or rule in holdouts
        names = ([HOLDOUT] if has_holdout else []) + [a for a in listed if a != HOLDOUT]
        names += sorted(a for a in cells if a not in names)
        if not has_holdout and len(names) < 2:
            continue
        control = names[0]
        rows = []
        for name in names:
            n, k, revenue = cells.get(name, [0, 0, 0.0])
            ci = wilson(int(k), int(n))
            rows.append(
                {
                    "arm": name,
                    "control": name == control,
                    "friends": int(n),
                    "conversions": int(k),
                    "rate": _ratio(k, n),
                    "ci": _pair(ci),
                    "revenue": _num(revenue),
                }
            )
        comparisons = [_compare(rows[0], row) for row in rows[1:]]
        out.append({"rule": rule, "control": control, "arms": rows, "comparisons": comparisons})
    return out


def _compare(control: dict, arm: dict) -> dict:
    """One arm against the control: difference in rate, its interval, lift and a verdict."""
    n1, k1, n0, k0 = arm["friends"], arm["conversions"], control["friends"], control["conversions"]
    ci = newcombe(k1, n1, k0, n0)
    diff = None if ci is None else k1 / n1 - k0 / n0
    lift = None if diff is None or not k0 else diff / (k0 / n0)
    small = [
        _("{arm} has {friends}", arm=r["arm"], friends=r["friends"]) for r in (control, arm) if r["friends"] < MIN_ARM
    ]
    if small:
        verdict = "not_enough_data"
        reason = _("not enough data yet: fewer than {min} friends per arm ({arms})", min=MIN_ARM, arms=join(small))
    elif ci[0] <= 0 <= ci[1]:
        verdict = "not_enough_data"
        reason = _("not enough data yet: the 95% interval of the difference includes 0")
    else:
        verdict = "better" if diff > 0 else "worse"
        reason = (
            _("{arm} converts better than {control}", arm=arm["arm"], control=control["arm"])
            if verdict == "better"
            else _("{arm} converts worse than {control}", arm=arm["arm"], control=control["arm"])
        )
    return {
        "arm": arm["arm"],
        "vs": control["arm"],
        "difference": _round(diff),
        "ci": _pair(ci),
        "lift": _round(lift),
        "verdict": verdict,
        "reason": reason,
    }


# ----------------------------------------------------------------------------- small helpers


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 2)


def _round(value: float | None) -> float | None:
    """A figure as computed: JSON rounds it to 4 decimals (:func:`_rendered`), the text and
    HTML pages format it themselves (a percentage from the exact value, not from 4 decimals)."""
    return value


def _pair(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _iso(ts: int | None, tz: ZoneInfo) -> str | None:
    return None if ts is None else timeutil.iso(ts, tz)


def _day_range(first: str, last: str) -> list[str]:
    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def parse_moment(text: str, tz: ZoneInfo, *, end: bool, option: str) -> int:
    """``--since``/``--until``: an ISO date (local midnight; as ``--until``, the end of that
    day) or date and time (local when it has no offset) -> epoch seconds."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            moment = dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time(0), tz)
        else:
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
    except ValueError:
        raise ReportUsageError(
            _(
                "{option}: `{text}` is not an ISO 8601 date or time like 2026-11-01 or 2026-11-01T09:00",
                option=option,
                text=text,
            )
        ) from None
    return timeutil.epoch(moment)


# ----------------------------------------------------------------------------- text output


def _width(text: str) -> int:
    """Terminal columns (East Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _fit(text: str, width: int) -> str:
    """Cut to ``width`` columns (with an ellipsis) and pad on the right."""
    if _width(text) > width:
        while _width(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - _width(text))


def _n(value: Any, lang: str | None = None) -> str:
    if value is None:
        return "-"
    if (lang or language()) == "ja":
        return format_decimal(value, format="#,##0" if isinstance(value, int) else "#,##0.00", locale="ja_JP")
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def yen(value: Any, lang: str | None = None) -> str:
    """An amount of yen: ``¥12,800`` in Japanese (Babel's JPY format; the half-width ``¥`` of
    Japanese shops rather than CLDR's full-width one, so columns stay aligned), else ``12,800``."""
    if value is None:
        return "-"
    if (lang or language()) == "ja":
        return format_currency(value, "JPY", locale="ja_JP").replace("\uffe5", "\u00a5")
    return _n(value, lang)


def moment(iso: str | None, lang: str | None = None) -> str:
    """An ISO time of the report in the reader's words: ``2026年12月4日 20:00`` in Japanese."""
    if iso is None:
        return "-"
    value = dt.datetime.fromisoformat(iso)
    if (lang or language()) == "ja":
        return f"{format_date(value, 'long', locale='ja')} {format_time(value, 'H:mm', locale='ja')}"
    return iso


def day(iso_day: str, lang: str | None = None) -> str:
    """A local day: ``2026-12-04``, or ``2026年12月4日`` in Japanese."""
    if (lang or language()) == "ja":
        return format_date(dt.date.fromisoformat(iso_day), "long", locale="ja")
    return iso_day


def month(iso_month: str, lang: str | None = None) -> str:
    """A month: ``2026-12``, or ``2026年12月`` in Japanese."""
    if (lang or language()) == "ja":
        return format_skeleton("yMMM", dt.date.fromisoformat(iso_month + "-01"), locale="ja")
    return iso_month


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], first: int | None = None) -> list[str]:
    """Left-aligned first column of ``first`` columns (default: as wide as its widest cell), the
    rest right-aligned to their width."""
    rows = [list(r) for r in rows]
    widths = [max([_width(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(head)]
    first = widths[0] if first is None else max(first, widths[0])
    out = []
    for r in [list(head), *rows]:
        cells = [_fit(r[0], first)] + [" " * (w - _width(c)) + c for c, w in zip(r[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
    return out


#: The exit reasons of enrollments, as the report names them.
EXIT_WORDS = {
    "done": _("done"),
    "exited": _("exited"),
    "blocked": _("blocked"),
    "exit_when": _("exit when"),
    "stopped": _("stopped"),
    "replaced": _("replaced"),
}


def period_text(p: dict, lang: str | None = None):
    """The report's period in words: ``since`` to ``until`` (else the moment the report
    describes); a ``--since`` later than everything the database describes is "from" it alone,
    not a period that ends before it begins."""
    since = moment(p["since"], lang) if p["since"] else _("the start")
    end = p["until"] or p["as_of"]
    if not p["until"] and p["since"] and dt.datetime.fromisoformat(p["since"]) > dt.datetime.fromisoformat(end):
        return _("from {since}", since=since)
    return _("{since} to {until}", since=since, until=moment(end, lang))


def render_text(report: dict, db: str, lang: str | None = None) -> str:
    """The terminal report: aligned plain text that fits in 100 columns, in ``lang`` (default:
    the current language)."""
    lang = lang or language()
    t = lambda text: render(text, lang)  # noqa: E731
    n = lambda value: _n(value, lang)  # noqa: E731
    p, s = report["period"], report["settings"]
    period = t(period_text(p, lang))
    lines = [
        t(_("linerules report of {db}", db=db)),
        t(_("period: {period} ({zone})", period=period, zone=p["timezone"])),
        t(
            _(
                "conversions: an order within {days} days after a send, counted once for the last send before it",
                days=s["attribution_days"],
            )
        ),
        t(
            _(
                "blocks after send: an unfollow within {days} days after a send, counted the same way",
                days=s["block_days"],
            )
        ),
        "",
    ]
    if report["empty"]:
        lines.append(
            t(
                _(
                    "No activity recorded in this database for this period: nobody entered a "
                    "rule, nothing was sent, no events arrived."
                )
            )
        )
        return "\n".join(lines) + "\n"
    lines.append(t(_("RULES")))
    head = [
        t(_("rule / step")),
        t(_("entered")),
        t(_("pushes")),
        t(_("capped")),
        t(_("held")),
        t(_("clicks")),
        t(_("conv")),
        t(_("revenue")),
        t(_("blocks")),
        t(_("block%")),
    ]
    rows = []
    for r in report["rules"]:
        rows.append([r["rule"], n(r["entered"]), *_rule_cells(r, lang)])
        for st in r["steps"]:
            rows.append(["  " + (st["step"] or t(_("(unknown step)"))), "", *_rule_cells(st, lang)])
        exits = t(join(_("{reason} {count}", reason=EXIT_WORDS.get(k, k), count=v) for k, v in r["exits"].items()))
        extra = [
            t(_("replies (free): {n}", n=r["replies"])) if r["replies"] else "",
            t(_("exits: {exits}", exits=exits)) if exits else "",
            t(_("in progress: {n}", n=r["in_progress"])) if r["in_progress"] else "",
            t(_("skipped: {n}", n=r["skipped"])) if r["skipped"] else "",
            t(_("rejected: {n}", n=r["rejected"])) if r["rejected"] else "",
        ]
        if any(extra):
            sep = "; " if lang == "en" else "、"
            rows.append(["  " + sep.join(e for e in extra if e)] + [""] * (len(head) - 1))
    lines += _rule_table(head, rows)

    a = report["account"]
    f = a["friends"]
    lines += [
        "",
        t(_("ACCOUNT")),
        t(
            _(
                "friends: gained {gained}, lost {lost}, current {current}, active in the last {days} days {active}",
                gained=n(f["gained"]),
                lost=n(f["lost"]),
                current=n(f["current"]),
                days=s["active_days"],
                active=n(f["active"]),
            )
        ),
        "",
    ]
    days = [d for d in a["days"] if any(d[k] for k in ("gained", "lost", "pushes", "capped", "blocks_after_send"))]
    if days:
        lines += _table(
            [
                t(_("day")),
                t(_("gained")),
                t(_("lost")),
                t(_("pushes")),
                t(_("replies")),
                t(_("capped")),
                t(_("blocks")),
                t(_("block%")),
            ],
            (
                [
                    day(d["day"], lang),
                    n(d["gained"]),
                    n(d["lost"]),
                    n(d["pushes"]),
                    n(d["replies"]),
                    n(d["capped"]),
                    n(d["blocks_after_send"]),
                    _pct(d["block_rate"]),
                ]
                for d in days
            ),
            10,
        )
        lines.append("")
    if a["months"]:
        lines += _table(
            [
                t(_("month")),
                t(_("messages")),
                t(_("replies (free)")),
                t(_("quota")),
                t(_("used")),
                t(_("cheapest plan")),
                t(_("cost (yen)")),
                t(_("saved by replies")),
            ],
            (
                [
                    month(m["month"], lang),
                    n(m["messages"]),
                    n(m["replies"]),
                    n(m["quota"]),
                    _pct(m["quota_used"]) + (t(_(" over")) if m["over_quota"] else ""),
                    t(PLAN_WORDS.get(m["plan"], m["plan"])),
                    yen(m["cost_yen"], lang),
                    yen(m["saved_by_replies_yen"], lang),
                ]
                for m in a["months"]
            ),
            7,
        )
        lines.append(t(_("LINE's plans in Japan (replies are free):")))
        names = [t(PLAN_WORDS.get(pl["plan"], pl["plan"])) for pl in a["plans"]]
        fees = [yen(pl["fee_yen"], lang) for pl in a["plans"]]
        name_width = max([13] + [_width(x) for x in names])
        fee_width = max([6] + [_width(x) for x in fees])
        for pl, name, fee in zip(a["plans"], names, fees):
            pad = " " * (name_width - _width(name))
            fee = " " * (fee_width - _width(fee)) + fee
            if pl["extra_yen"]:
                text = t(
                    _(
                        "{fee} yen a month for {messages} messages, then up to {extra} yen each",
                        fee=fee,
                        messages=n(pl["messages"]),
                        extra=yen(pl["extra_yen"], lang),
                    )
                )
            else:
                text = t(_("{fee} yen a month for {messages} messages, no more", fee=fee, messages=n(pl["messages"])))
            lines.append(f"  {name}{pad} {text}")
    if report["experiments"]:
        lines += [
            "",
            t(
                _(
                    "EXPERIMENTS (conversion: an order within {days} days after entering; 95% intervals)",
                    days=s["attribution_days"],
                )
            ),
        ]
        for e in report["experiments"]:
            lines += ["", t(_("{rule} (control: {control})", rule=e["rule"], control=e["control"]))]
            lines += _table(
                [t(_("arm")), t(_("friends")), t(_("converted")), t(_("rate")), t(_("95% interval")), t(_("revenue"))],
                (
                    [
                        ("  " + r["arm"]),
                        n(r["friends"]),
                        n(r["conversions"]),
                        _pct(r["rate"]),
                        _interval(r["ci"]),
                        yen(r["revenue"], lang),
                    ]
                    for r in e["arms"]
                ),
                20,
            )
            for c in e["comparisons"]:
                diff = (
                    "-" if c["difference"] is None else t(_("{points} points", points=f"{c['difference'] * 100:+.1f}"))
                )
                lift = "" if c["lift"] is None else t(_(", lift {lift}", lift=f"{c['lift'] * 100:+.1f}%"))
                lines.append(
                    "  "
                    + t(
                        _(
                            "{arm} vs {control}: {difference} {interval}{lift}",
                            arm=c["arm"],
                            control=c["vs"],
                            difference=diff,
                            interval=_interval(c["ci"], signed=True),
                            lift=lift,
                        )
                    )
                )
                lines.append(f"    {t(c['reason'])}")
    return "\n".join(lines) + "\n"


#: LINE's plan names as Japanese shops know them (ライト, スタンダード).
PLAN_WORDS = {"Communication": _("Communication"), "Light": _("Light"), "Standard": _("Standard")}


def _rule_cells(r: dict, lang: str | None = None) -> list[str]:
    return [
        _n(r["pushes"], lang),
        _n(r["capped"], lang),
        _n(r["held"], lang),
        _n(r["clicks"], lang),
        _n(r["conversions"], lang),
        yen(r["revenue"], lang),
        _n(r["blocks_after_send"], lang),
        _pct(r["block_rate"]),
    ]


def _rule_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """The rules table: a name column as wide as the names allow within 100 columns; a notes row
    (only its first cell filled) is printed as it is."""
    numbers = [r for r in rows if any(r[1:])]
    widths = [max([_width(h)] + [_width(r[i]) for r in numbers]) for i, h in enumerate(head)]
    rest = sum(widths[1:]) + 2 * (len(head) - 1)
    first = max(12, min(max(_width(r[0]) for r in numbers + [head]), 100 - rest))
    out = []
    for r in [head, *rows]:
        if not any(r[1:]) and r is not head:
            out.append(r[0])
            continue
        cells = [_fit(r[0], first)] + [" " * (w - _width(c)) + c for c, w in zip(r[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
    return out


def _interval(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(ci[0] * 100)}, {fmt.format(ci[1] * 100)}]" + ("" if signed else "%")


# ----------------------------------------------------------------------------- the command


def _rendered(value: Any) -> Any:
    """The report as JSON shows it: its texts (a comparison's ``reason``) in the current
    language, its ratios and intervals to 4 decimals."""
    if isinstance(value, dict):
        return {k: _rendered(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rendered(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return render(value) if isinstance(value, i18n.Text) else value


def main(
    db: str,
    rules_dir: str,
    fmt: str,
    html_path: str | None,
    since: str | None,
    until: str | None,
    rule_names: Sequence[str],
    block_days: int = BLOCK_DAYS,
    lang: str | None = None,
) -> int:
    """The ``report`` command: print the report (text or JSON), optionally write the HTML
    page; exit 0. Raises ``click.UsageError`` for a mistake in the options and
    :class:`~engine.i18n.UserError` (exit 1) for a database or file that cannot be used."""
    from engine.language.diagnostics import has_errors
    from engine.language.diagnostics import render_text as render_diagnostics
    from engine.language.project import load_project
    from engine.language.settings import folder_language

    i18n.use(i18n.choose(lang, folder_language(rules_dir)))  # for the options' mistakes too
    try:
        if block_days < 1:
            raise ReportUsageError(_("--block-days must be at least 1"))
        store = open_db(db)  # the database first: a wrong path is the likelier mistake
        loaded = load_project(rules_dir)
        i18n.use(i18n.choose(lang, loaded.language))
        if has_errors(loaded.diagnostics) or loaded.project is None:
            store.close()
            sys.stderr.write(render_diagnostics(loaded.diagnostics, loaded.sources))
            return 1
        settings = loaded.project.settings
        tz = settings.tz
        options = Options(
            tz=tz,
            attribution_days=settings.attribution_days,
            block_days=block_days,
            monthly_quota=settings.monthly_quota,
            since=parse_moment(since, tz, end=False, option="--since") if since else None,
            until=parse_moment(until, tz, end=True, option="--until") if until else None,
            rules=tuple(dict.fromkeys(rule_names)),
        )
        if options.since is not None and options.until is not None and options.since >= options.until:
            raise ReportUsageError(_("--since must be before --until"))
        try:
            report = build_report(store, options, loaded.project)
        finally:
            store.close()
        if html_path:
            from .report_html import render_html

            try:
                with open(html_path, "w", encoding="utf-8") as fh:
                    fh.write(render_html(report, db))
            except OSError as exc:
                raise ReportError(
                    _("--html: cannot write {path}: {reason}", path=html_path, reason=exc.strerror or exc)
                ) from None
    except ReportUsageError as exc:
        raise click.UsageError(render(exc.args[0])) from None
    except ReportError as exc:
        raise i18n.UserError(exc.args[0]) from None
    if fmt == "json":
        sys.stdout.write(json.dumps(_rendered(report), ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(report, db))
    return 0
