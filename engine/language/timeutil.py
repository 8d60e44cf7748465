"""Time arithmetic in the configured zone: waits, delivery windows, cron and sale moments.

Everything the engine stores is an integer UTC epoch second; these helpers convert to local
wall-clock time only where a rule speaks in local terms (``at 12:00``, windows, the cap's day).
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from zoneinfo import ZoneInfo

from . import ir
from .ir import parse_duration  # noqa: F401  (the language's durations; used from here too)


def epoch(moment: dt.datetime) -> int:
    """An aware datetime -> UTC epoch seconds."""
    if moment.tzinfo is None:
        raise ValueError("time without a UTC offset")
    return int(moment.timestamp())


def local(ts: int, tz: ZoneInfo) -> dt.datetime:
    """UTC epoch seconds -> aware datetime in ``tz``."""
    return dt.datetime.fromtimestamp(ts, tz)


def iso(ts: int, tz: ZoneInfo) -> str:
    """ISO 8601 with the zone's offset, seconds precision."""
    return local(ts, tz).isoformat(timespec="seconds")


def local_day(ts: int, tz: ZoneInfo) -> str:
    """The local calendar day (``YYYY-MM-DD``) of a moment, for ``max_per_day``."""
    return local(ts, tz).date().isoformat()


def _at(day: dt.date, at: dt.time, tz: ZoneInfo) -> int:
    """Epoch of local ``day`` at wall time ``at`` (a gap in a DST change resolves forward)."""
    naive = dt.datetime.combine(day, at.replace(tzinfo=None))
    return epoch(naive.replace(tzinfo=tz))


def wait_at(now: int, seconds: int, at: dt.time | None, tz: ZoneInfo) -> int:
    """``wait D`` -> now + D. ``wait Nd at HH:MM`` (whole days or weeks) -> HH:MM on the Nth
    calendar day after today in ``tz`` (``wait 0d at HH:MM``: today's, or tomorrow's when it has
    passed; at HH:MM itself, now). ``wait D at HH:MM`` with hours or minutes in D -> the first
    HH:MM at or after now + D."""
    base = now + seconds
    if at is None:
        return base
    if seconds % 86400 == 0:
        day = local(now, tz).date() + dt.timedelta(days=seconds // 86400)
        moment = _at(day, at, tz)
        if moment >= now:  # (only `0d` can be today: at 10:00 itself, `wait 0d at 10:00` is over)
            return moment
        return _at(day + dt.timedelta(days=1), at, tz)
    day = local(base, tz).date()
    moment = _at(day, at, tz)
    return moment if moment >= base else _at(day + dt.timedelta(days=1), at, tz)


def wait_until(now: int, at: dt.time | None, weekday: int | None, tz: ZoneInfo) -> int:
    """``wait until HH:MM`` / ``wait until monday [at HH:MM]``: the next such moment strictly
    after ``now`` (a weekday without a time means 00:00)."""
    at = at or dt.time(0, 0)
    day = local(now, tz).date()
    for offset in range(0, 9):
        d = day + dt.timedelta(days=offset)
        if weekday is not None and d.weekday() != weekday:
            continue
        moment = _at(d, at, tz)
        if moment > now:
            return moment
    raise AssertionError("unreachable: a weekday recurs within 8 days")


def in_window(ts: int, window: ir.Window | None, tz: ZoneInfo) -> bool:
    """Whether the local time of ``ts`` lies in the daily window (start inclusive, end exclusive)."""
    if window is None:
        return True
    t = local(ts, tz).time().replace(tzinfo=None)
    start, end = window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)
    if start == end:
        return True
    if start < end:
        return start <= t < end
    return t >= start or t < end


def next_opening(ts: int, window: ir.Window | None, tz: ZoneInfo) -> int:
    """``ts`` itself when inside the window, else the next moment the window opens."""
    if in_window(ts, window, tz):
        return ts
    assert window is not None
    day = local(ts, tz).date()
    for offset in range(0, 3):
        moment = _at(day + dt.timedelta(days=offset), window.start, tz)
        if moment > ts:
            return moment
    raise AssertionError("unreachable: a window opens every day")


def cron_latest(expr: str, after: int, upto: int, tz: ZoneInfo) -> int | None:
    """The latest occurrence of a cron expression in ``(after, upto]``, or None."""
    return _cron(expr, tz).latest(after, upto)


def cron_next(expr: str, after: int, tz: ZoneInfo) -> int:
    """The first occurrence strictly after ``after``."""
    return _cron(expr, tz).next_after(after)


class CronTimes:
    """The occurrences of one cron expression in one zone. The expression is expanded once,
    and the last answer is kept as a span ``(base, next)`` with no occurrence in
    ``(base, next)``: a clock that ticks many times between two occurrences (every tick asks
    for the latest occurrence since the last tick and for the next one) is answered from it
    without asking croniter again.

    A job at set hours (`30 1 * * *`) fires once on the day a zone's clocks go back, though its
    time of day comes twice: the second one (``fold`` 1) is no occurrence. One whose hours are
    a wildcard (`30 * * * *`) fires in both of the repeated hours, as they are two hours."""

    def __init__(self, expr: str, tz: ZoneInfo):
        from croniter import croniter  # imported here: only schedule triggers need it

        self.tz = tz
        self._iter = croniter(expr, local(0, tz))
        fields = expr.split()
        self._set_hours = len(fields) >= 2 and not fields[1].startswith("*")
        self._span: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _repeated(self, moment: int) -> bool:
        """Whether ``moment`` is the second of a time of day the clocks went back over."""
        return self._set_hours and local(moment, self.tz).fold == 1

    def next_after(self, ts: int) -> int:
        span = self._span
        if span is not None and span[0] <= ts < span[1]:
            return span[1]
        with self._lock:
            moment = epoch(self._iter.get_next(dt.datetime, start_time=local(ts, self.tz)))
            while self._repeated(moment):
                moment = epoch(self._iter.get_next(dt.datetime, start_time=local(moment, self.tz)))
        if span is None or not (span[0] <= ts < span[1]):
            self._span = (ts, moment)
        return moment

    def latest(self, after: int, upto: int) -> int | None:
        """The latest occurrence in ``(after, upto]``, or None."""
        first = self.next_after(after)
        if first > upto:
            return None
        if self.next_after(first) > upto:
            return first
        with self._lock:
            moment = epoch(self._iter.get_prev(dt.datetime, start_time=local(upto + 1, self.tz)))
            while self._repeated(moment):
                moment = epoch(self._iter.get_prev(dt.datetime, start_time=local(moment, self.tz)))
        return moment if after < moment <= upto else None


@functools.lru_cache(maxsize=256)
def _cron(expr: str, tz: ZoneInfo) -> CronTimes:
    return CronTimes(expr, tz)


def sale_moment(trigger: ir.SaleTrigger, sale: ir.Sale, tz: ZoneInfo) -> int:
    """When a ``sale`` trigger fires for one sale: ``in Nd at HH:MM`` is N calendar days before
    the sale's local date at that time; without ``at``, exactly ``before`` seconds earlier."""
    instant = sale.starts if trigger.edge == "starts" else sale.ends
    if trigger.at is None:
        return epoch(instant) - trigger.before
    day = instant.astimezone(tz).date() - dt.timedelta(days=trigger.before // 86400)
    return _at(day, trigger.at, tz)


def next_boundary(ts: int, interval: int, tz: ZoneInfo) -> int:
    """The first multiple of ``interval`` seconds after local midnight of ``ts``'s day that is
    strictly later than ``ts`` (it may fall on the next day's midnight)."""
    midnight = _at(local(ts, tz).date(), dt.time(0, 0), tz)
    steps = (ts - midnight) // interval + 1
    moment = midnight + steps * interval
    tomorrow = _at(local(ts, tz).date() + dt.timedelta(days=1), dt.time(0, 0), tz)
    return min(moment, tomorrow)


def boundary_index(ts: int, interval: int, tz: ZoneInfo) -> tuple[str, int]:
    """Which ``interval``-slot of its local day ``ts`` falls in, as (day, slot)."""
    midnight = _at(local(ts, tz).date(), dt.time(0, 0), tz)
    return local_day(ts, tz), (ts - midnight) // interval
