"""``linerules simulate``: replay a timeline through the same engine as the runner.

A fresh database (in memory, or ``--db FILE``) and a virtual clock that stops at each event
time, at each moment the engine has work (:meth:`Engine.next_wakeup`: due steps, window
openings, schedule and sale occurrences) and at every ``--tick`` boundary aligned to local
midnight, where condition triggers are checked. Outbox rows are "sent" by a simulated
transport at the moment they become due; nothing touches the network.

Output: one JSON object per push per friend, in time order (ties by friend, then in the order
the pushes go out: a friend's several pushes of one moment as the friend gets them):
``{"at": ISO 8601 in the configured zone, "friend": ID, "rule": NAME, "messages": [NAME, ...]}``
(with ``--render`` also ``"rendered"``: the LINE objects). The engine applies ``monthly_quota``
as the runner does, so a forecast shows sends held for the next month.
Without ``--until`` the clock runs to 30 days after the last event.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import NoReturn

import click

from engine import i18n
from engine.i18n import _
from engine.interpreter import Engine
from engine.language import ir, timeutil
from engine.language.render import RenderError

from .events import Event, EventError
from .store import Store, StoreError, database_version, remove_database

#: How far the clock runs after the last event when no ``--until`` is given.
DEFAULT_HORIZON = 30 * 86400
SENT_KINDS = ("push", "multicast", "reply")
#: Meta key marking a database that ``simulate --db`` made (and may replace next time).
SIMULATION_META = "simulation"
#: Event types that come from LINE webhooks (with a reply token) when the runner is live.
WEBHOOK_TYPES = ("follow", "message", "postback")


def run_timeline(
    project: ir.Project,
    events: Sequence[Event],
    *,
    until: dt.datetime | None,
    tick_seconds: int,
    db_path: str | None = None,
    webhook_tokens: bool = False,
    render: bool = False,
) -> list[dict]:
    """Run ``events`` through ``project`` on a virtual clock; return the pushes as printed.

    ``webhook_tokens``: give follow, message and postback events without a reply token one, as
    LINE's webhooks would, so welcomes and answers are recorded as the free replies they will be
    (``simulate`` does, for its forecasts). ``render``: each push also carries ``"rendered"``,
    the LINE message objects as they would be sent."""
    if tick_seconds <= 0:
        raise ValueError("the tick must be a positive duration")
    tz = project.settings.tz
    # follow, message and postback events reach the runner as LINE webhooks, which carry a reply
    # token: give them one, so answers and welcomes are forecast as the free replies they will be
    ordered = sorted(
        (
            replace(e, reply_token=f"simulated-{n}")
            if webhook_tokens and e.reply_token is None and e.type in WEBHOOK_TYPES
            else e
            for n, e in enumerate(events, 1)
        ),
        key=lambda e: e.at,
    )
    if not ordered:
        return []
    start = timeutil.epoch(ordered[0].at)
    end = timeutil.epoch(until) if until is not None else timeutil.epoch(ordered[-1].at) + DEFAULT_HORIZON
    store = Store(db_path or ":memory:")
    if db_path:
        store.set_meta(SIMULATION_META, "1")  # only such a file may be replaced (_fresh_db)
    clock_now = start
    engine = Engine(project, store, clock=lambda: timeutil.local(clock_now, tz))
    pushes: list[tuple[int, str, int, dict]] = []
    times = [timeutil.epoch(e.at) for e in ordered]
    # The clock stops at every event, every wake-up of the engine and every condition tick (a
    # boundary of ``tick_seconds``). A condition tick before the engine's
    # ``conditions_quiet_until`` would enter nobody and is skipped, except the last one, which
    # the database keeps as the last tick (``linerules report`` on ``--db``).
    last_boundary = _last_boundary(end, tick_seconds, tz)
    boundaries = _Boundaries(tick_seconds, tz)
    i, now = 0, start
    try:
        while now <= end:
            clock_now = now
            j = i
            while j < len(times) and times[j] <= now:
                j += 1
            # one transaction for the whole stop: nobody else reads or writes the database, and
            # each stage's transaction became a block of it (Store.batch)
            with store.batch():
                if j > i:
                    store.apply_events(ordered[i:j], received_at=now)
                    i = j
                boundary = boundaries.after(now - 1) == now
                engine.tick(timeutil.local(now, tz), conditions=boundary)
                _transport(store, now, tz, pushes, render)
            quiet = engine.conditions_quiet_until(now)
            candidates = [last_boundary] if last_boundary > now else []
            if quiet <= now:
                candidates.append(boundaries.after(now))
            elif quiet < last_boundary:
                candidates.append(boundaries.after(max(now, math.ceil(quiet) - 1)))
            if i < len(times):
                candidates.append(times[i])
            wake = engine.next_wakeup(timeutil.local(now, tz))
            if wake is not None:
                candidates.append(timeutil.epoch(wake))
            if not candidates:
                break
            now = min(candidates)
    finally:
        store.close()
    pushes.sort(key=lambda p: p[:3])
    return [p[3] for p in pushes]


class _Boundaries:
    """:func:`engine.language.timeutil.next_boundary` for a clock that moves forward, asked
    about ``now - 1`` and ``now`` at every stop: the last two answers are kept as spans
    ``(after, boundary)`` with no boundary in between."""

    def __init__(self, interval: int, tz) -> None:
        self.interval, self.tz = interval, tz
        self.spans: list[tuple[int, int]] = []

    def after(self, ts: int) -> int:
        """The first boundary strictly after ``ts``."""
        for low, boundary in self.spans:
            if low <= ts < boundary:
                return boundary
        boundary = timeutil.next_boundary(ts, self.interval, self.tz)
        self.spans = [*self.spans[-1:], (ts, boundary)]
        return boundary


def _last_boundary(end: int, tick_seconds: int, tz) -> int:
    """The last condition tick at or before ``end``: a multiple of ``tick_seconds`` after local
    midnight of ``end``'s day (:func:`engine.language.timeutil.next_boundary`)."""
    midnight = timeutil.next_boundary(end - 86400 * 2, 86400, tz)
    while True:
        following = timeutil.next_boundary(midnight, 86400, tz)
        if following > end:
            break
        midnight = following
    return midnight + (end - midnight) // tick_seconds * tick_seconds


#: Outbox rows the simulated transport claims at once.
CLAIM = 1000


def _transport(store: Store, now: int, tz, pushes: list, render: bool = False) -> None:
    """Mark every due outbox row sent, noting one push per recipient."""
    if not store.outbox_due(now):  # most stops of the clock send nothing: no claim to make
        return
    while True:
        with store.transaction():  # the claim and its outcomes at once: nothing sends between
            if _send_claimed(store, now, tz, pushes, render) < CLAIM:
                return  # every due row was claimed: nothing else sends during the stop


def _send_claimed(store: Store, now: int, tz, pushes: list, render: bool) -> int:
    """Claim up to :data:`CLAIM` due rows and mark them sent; returns how many were claimed."""
    rows = store.claim_outbox(now, CLAIM)
    if not rows:
        return 0
    sent = []
    for row in rows:
        if row["kind"] in SENT_KINDS:
            for friend in row["recipients"]:
                push = {
                    "at": timeutil.iso(now, tz),
                    "friend": friend,
                    "rule": row["rule"],
                    "messages": row["messages"],
                }
                if render:
                    push["rendered"] = row["payload"]
                pushes.append((now, friend, len(pushes), push))  # (claimed in the order sent)
        sent.append((row["id"], "sent", f"simulated-{row['id']}", None))
    store.finish_outbox_rows(sent, at=now)
    return len(rows)


def main(
    events_path: str,
    rules_dir: str,
    until: str | None,
    tick: str | float,
    db: str | None,
    lang: str | None = None,
    *,
    render: bool = False,
) -> int:
    """The ``simulate`` command: exit 0 after printing the pushes. A bad ``--tick`` or
    ``--until`` (a duration string or seconds) raises ``click.UsageError``; input that cannot
    be used raises :class:`~engine.i18n.UserError` (exit 1)."""
    from engine.language.diagnostics import has_errors, render_text
    from engine.language.project import load_project
    from engine.language.settings import folder_language

    from .intake import parse_events

    i18n.use(i18n.choose(lang, folder_language(rules_dir)))  # for the options' mistakes too
    try:
        # the virtual clock counts whole seconds
        tick_seconds = math.ceil(tick) if isinstance(tick, (int, float)) else timeutil.parse_duration(tick)
    except ValueError as exc:
        return _usage(_("--tick: {reason}", reason=exc.args[0] if exc.args else exc))
    if tick_seconds <= 0:
        return _usage(_("--tick: must be longer than 0s"))
    until_at = None
    if until:
        try:
            until_at = dt.datetime.fromisoformat(until)
        except ValueError:
            return _usage(_("--until: `{value}` is not an ISO 8601 time like 2026-12-31T00:00:00+09:00", value=until))
        if until_at.tzinfo is None:
            return _usage(_("--until: `{value}` needs a UTC offset, like 2026-12-31T00:00:00+09:00", value=until))
    loaded = load_project(rules_dir)
    i18n.use(i18n.choose(lang, loaded.language))
    sys.stderr.write(render_text(loaded.diagnostics, loaded.sources))  # errors and warnings
    if has_errors(loaded.diagnostics) or loaded.project is None:
        return 1
    try:
        with open(events_path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        return _fail(_("{path}: the file is not UTF-8 text; save it as UTF-8", path=events_path))
    except OSError as exc:
        return _fail(_("{path}: cannot read the events: {reason}", path=events_path, reason=exc.strerror or exc))
    try:
        events = parse_events(text, "jsonl")
    except EventError as exc:
        return _fail(_("{path}: {reason}", path=events_path, reason=exc.text))
    if db:
        problem = _fresh_db(db)
        if problem:
            return _fail(problem)
    if until_at is not None and (late := sum(e.at > until_at for e in events)):
        sys.stderr.write(
            i18n.render(
                _(
                    "warning: {n} of {total} events are after --until {until} and are not replayed",
                    n=late,
                    total=len(events),
                    until=until_at.isoformat(timespec="seconds"),
                )
            )
            + "\n"
        )
    engine_log = logging.getLogger("linerules.engine")
    told = _Told(loaded.project.settings.tz)
    engine_log.addHandler(told)
    engine_log.propagate = False
    try:
        for push in run_timeline(
            loaded.project,
            events,
            until=until_at,
            tick_seconds=tick_seconds,
            db_path=db,
            webhook_tokens=True,
            render=render,
        ):
            sys.stdout.write(json.dumps(push, ensure_ascii=False) + "\n")
    except StoreError as exc:
        return _fail(_("--db: {reason}", reason=exc.args[0] if exc.args else exc))
    finally:
        engine_log.removeHandler(told)
        engine_log.propagate = True
    return 0


class _Told(logging.Handler):
    """The engine's warnings during a simulation, on standard error: a send that did not render
    for a friend is told in the user's language, at its simulated time."""

    def __init__(self, tz) -> None:
        super().__init__(logging.WARNING)
        self.tz = tz

    def emit(self, record: logging.LogRecord) -> None:
        rejected = getattr(record, "rejected", None)
        if rejected is None:
            sys.stderr.write(record.getMessage() + "\n")
            return
        rule, message, friend, exc, at = rejected
        reason = exc.detail if isinstance(exc, RenderError) else str(exc)
        when = timeutil.iso(at, self.tz)
        text = (
            _(
                "warning: {at}: rule `{rule}`: message `{message}` was not sent to {friend}: {reason}",
                at=when,
                rule=rule,
                message=message,
                friend=friend,
                reason=reason,
            )
            if friend
            else _(
                "warning: {at}: rule `{rule}`: message `{message}` was not sent to anyone it was due for: {reason}",
                at=when,
                rule=rule,
                message=message,
                reason=reason,
            )
        )
        sys.stderr.write(i18n.render(text) + "\n")


def _fresh_db(path: str) -> str | None:
    """Make room for a new simulated database at ``path``: an earlier simulation's database is
    replaced; anything else that exists, a runner's database above all, is refused (returns
    the error text)."""
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return None  # an empty file becomes the new database, as for the runner
        if database_version(path) is not None and not _simulated(path):
            return _(
                "--db: {path} is a linerules database that no simulation made (a runner's?); "
                "it is never replaced: choose another file",
                path=path,
            )
        remove_database(path)
    except StoreError as exc:
        return _("--db: {reason}", reason=exc.args[0])
    except OSError as exc:
        return _("--db: cannot replace {path}: {reason}", path=path, reason=exc.strerror or exc)
    return None


def _simulated(path: str) -> bool:
    """Whether the linerules database at ``path`` was made by ``simulate --db``."""
    store = Store(path, read_only=True)
    try:
        return store.get_meta(SIMULATION_META) is not None
    finally:
        store.close()


def _fail(message) -> NoReturn:
    raise i18n.UserError(message)


def _usage(message) -> NoReturn:
    raise click.UsageError(i18n.render(message))
