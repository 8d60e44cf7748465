"""Token buckets at LINE's per-endpoint rate limits.

One table, :data:`LINE_RATE_LIMITS`, holds LINE's published limits per endpoint. The LINE
emulator enforces them (answering 429) and the dispatcher paces itself with them (so it never
provokes a 429). Both use :class:`TokenBucket`; the clock is injectable so tests need no sleeps.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """``count`` requests per ``per`` seconds (LINE states limits per second or per hour)."""

    count: float
    per: float = 1.0

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.count / self.per


_PER_HOUR = 3600.0

#: LINE Messaging API rate limits per channel and endpoint (the emulator's endpoint names).
LINE_RATE_LIMITS: Mapping[str, Limit] = {
    "push": Limit(2000),
    "reply": Limit(2000),
    "multicast": Limit(200),
    "broadcast": Limit(60, _PER_HOUR),
    "narrowcast": Limit(60, _PER_HOUR),
    "validate_push": Limit(2000),
    "validate_multicast": Limit(2000),
    "validate_reply": Limit(2000),
    "profile": Limit(2000),
    "quota": Limit(2000),
    "quota_consumption": Limit(2000),
    "richmenu_link": Limit(2000),
    "richmenu_unlink": Limit(2000),
    "richmenu_bulk_link": Limit(2000),
    "link_token": Limit(2000),
}


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``capacity`` tokens.

    :meth:`try_take` answers at once (a server deciding on 429); :meth:`acquire` waits for a
    token (a client pacing itself). Waiters are served in call order by one pacer that hands
    out only tokens that are there, so callers are spread evenly over time, each wakes once,
    and a stalled event loop can never release more than ``capacity`` requests at once.
    """

    def __init__(self, rate: float, capacity: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate)
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._pacer: asyncio.Task[None] | None = None

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while reservations are outstanding)."""
        self._refill(self._clock())
        return self._tokens

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if they are all there now; return whether they were taken."""
        self._refill(self._clock())
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def reserve(self, n: float = 1.0) -> float:
        """Take ``n`` tokens, going into debt if needed; return the seconds until they are due."""
        self._refill(self._clock())
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self, n: float = 1.0) -> None:
        """Wait until ``n`` tokens are ours (never more than ``rate`` per second on average,
        never more than ``capacity`` at once)."""
        if not self._waiters and self.try_take(n):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.ensure_future(self._pace())
        await future

    async def _pace(self) -> None:
        while self._waiters:
            self._refill(self._clock())
            while self._waiters:
                n, future = self._waiters[0]
                if future.done():               # its caller was cancelled
                    self._waiters.popleft()
                    continue
                if self._tokens < n:
                    break
                self._tokens -= n
                self._waiters.popleft()
                future.set_result(None)
            if self._waiters:
                await asyncio.sleep(max(0.0, (self._waiters[0][0] - self._tokens) / self.rate))


def buckets_for(limits: Mapping[str, Limit], *, scale: float = 1.0,
                burst_seconds: float | None = None,
                clock: Callable[[], float] = time.monotonic) -> dict[str, TokenBucket]:
    """One bucket per endpoint at ``scale`` times each limit.

    The capacity is the limit's full window (``count``, e.g. 2,000 for 2,000/s, 60 for 60/hour),
    or ``burst_seconds`` worth of tokens when given (a client keeps its bursts short so a
    server's bucket, refilling at the same rate, always has room).
    """
    out = {}
    for name, limit in limits.items():
        rate = limit.rate * scale
        if burst_seconds is None:
            capacity = max(1.0, limit.count * scale)
        else:
            capacity = max(1.0, rate * burst_seconds)
        out[name] = TokenBucket(rate, capacity, clock=clock)
    return out
