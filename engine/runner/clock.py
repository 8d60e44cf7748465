"""The runner's one clock: what time it is for ticks, stored events, claims, the lease and
the dispatcher.

The runner makes one :class:`Clock` and hands it to everything that asks what time it is
(the store's ``received_at`` and default times, the engine, the dispatcher's quota month and
reply deadlines, the lease, the HTTP handlers), so they all agree. Real durations (network
timeouts, how long a tick took, the quiet period of a deploy) are measured with
``time.monotonic``/``perf_counter`` and are not the clock's business.

Tests and simulations use a :class:`ManualClock`, which moves only when told.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol, runtime_checkable

UTC = dt.UTC


@runtime_checkable
class Clock(Protocol):
    """What time it is, as an aware datetime (:meth:`now`) or as epoch seconds (:meth:`time`)."""

    def now(self) -> dt.datetime: ...

    def time(self) -> float: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


#: The wall clock, the default everywhere.
SYSTEM = SystemClock()


class ManualClock:
    """A clock that moves when told: :meth:`advance` by seconds, or :meth:`set` to a moment.
    It starts at ``start`` (default: the wall clock's now). With ``flowing`` it also moves on
    by itself at the pace of real time, like the wall clock, so that a runner under test sees
    webhooks stamped with the real time as already arrived, and a test still jumps ahead
    without sleeping. Safe to move from one thread while others read it."""

    def __init__(self, start: dt.datetime | float | None = None, *, flowing: bool = False) -> None:
        self._lock = threading.Lock()
        self.flowing = flowing
        self._base = _epoch(start) if start is not None else time.time()
        self._since = time.monotonic()

    def time(self) -> float:
        if not self.flowing:
            return self._base
        return self._base + (time.monotonic() - self._since)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), UTC)

    def set(self, moment: dt.datetime | float) -> None:
        """Jump to ``moment`` (an aware datetime or epoch seconds; backwards too)."""
        with self._lock:
            self._base, self._since = _epoch(moment), time.monotonic()

    def advance(self, seconds: float) -> dt.datetime:
        """Move on by ``seconds``; returns the time it moved to."""
        with self._lock:
            self._base += seconds
            return dt.datetime.fromtimestamp(self.time(), UTC)

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()}{', flowing' if self.flowing else ''})"


def _epoch(moment: dt.datetime | float) -> float:
    if isinstance(moment, dt.datetime):
        if moment.tzinfo is None:
            raise ValueError("a clock's time needs a UTC offset")
        return moment.timestamp()
    return float(moment)
