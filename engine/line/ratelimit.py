"""Token buckets at LINE's per-endpoint rate limits.

LINE's published limits per endpoint are :data:`engine.line.limits.RATE_LIMITS`. The LINE
emulator enforces them (answering 429) and the dispatcher paces itself with them (so it never
provokes a 429). Both use :class:`TokenBucket`; the clock is injectable so tests need no sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping

from .limits import Limit


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``capacity`` tokens.

    :meth:`try_take` answers at once (a server deciding on 429); :meth:`acquire` waits for a
    token (a client pacing itself). Waiters are served in call order by one pacer that hands
    out only tokens that are there, so callers are spread evenly over time, each wakes once,
    and a stalled event loop can never release more than ``capacity`` requests at once.

    ``window`` (seconds) adds a sliding window: at most ``window_limit`` tokens (default
    ``rate * window``) are handed out in any ``window`` seconds (a bucket that starts full would
    otherwise let ``capacity`` more through in the first second than the rate allows). A client
    pacing itself at a server's per-second limit allows the limit in a window a little longer
    than the second (:data:`CLIENT_WINDOW`), so that no second as the server counts it ever
    holds more. ``full``: start with ``capacity`` tokens (a server's bucket); a client starts
    empty, so that its first requests are paced like the rest rather than sent as one burst
    whose connections are still being opened when the later ones arrive.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        window: float | None = None,
        window_limit: float | None = None,
        full: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate)
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.window = window
        self._window_limit = (
            0.0 if not window else max(1.0, window_limit if window_limit is not None else self.rate * window)
        )
        self._granted: deque[tuple[float, float]] = deque()  # (when, tokens) in the window
        self._in_window = 0.0
        self._clock = clock
        self._tokens = self.capacity if full else 0.0
        self._last = clock()
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._pacer: asyncio.Task[None] | None = None

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def _window_wait(self, now: float, n: float) -> float:
        """Seconds until ``n`` more tokens fit in the sliding window (0: now)."""
        if self.window is None:
            return 0.0
        granted = self._granted
        while granted and now - granted[0][0] >= self.window:
            self._in_window -= granted.popleft()[1]
        excess = self._in_window + n - self._window_limit
        if excess <= 1e-9:
            return 0.0
        for when, tokens in granted:
            excess -= tokens
            if excess <= 1e-9:
                return max(0.0, when + self.window - now)
        return self.window

    def _take(self, now: float, n: float) -> None:
        self._tokens -= n
        if self.window is not None:
            self._granted.append((now, n))
            self._in_window += n

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while reservations are outstanding)."""
        self._refill(self._clock())
        return self._tokens

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if they are all there now; return whether they were taken."""
        now = self._clock()
        self._refill(now)
        if self._tokens >= n and not self._window_wait(now, n):
            self._take(now, n)
            return True
        return False

    async def acquire(self, n: float = 1.0) -> None:
        """Wait until ``n`` tokens are ours (never more than ``rate`` per second on average,
        never more than ``capacity`` at once, never more than the window allows)."""
        if not self._waiters and self.try_take(n):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.ensure_future(self._pace())
        await future

    async def _pace(self) -> None:
        while self._waiters:
            now = self._clock()
            self._refill(now)
            wait = 0.0
            while self._waiters:
                n, future = self._waiters[0]
                if future.done():  # its caller was cancelled
                    self._waiters.popleft()
                    continue
                wait = max((n - self._tokens) / self.rate, self._window_wait(now, n))
                if wait > 0:
                    break
                self._take(now, n)
                self._waiters.popleft()
                future.set_result(None)
            if self._waiters:
                await asyncio.sleep(max(0.0, wait))


#: The sliding window a client paces itself in at a per-second limit: a little longer than the
#: second, so that requests that reach the server a few milliseconds apart from when they were
#: sent never make any second as the server counts it hold more than the limit.
CLIENT_WINDOW = 1.02


def client_bucket(
    limit_per_second: float, burst_seconds: float = 0.05, *, clock: Callable[[], float] = time.monotonic
) -> TokenBucket:
    """The bucket a client paces itself with at a server's per-second limit: never more than
    the limit in any :data:`CLIENT_WINDOW` seconds (so in no second as the server counts it),
    in bursts of at most ``burst_seconds`` worth after a stall, starting empty."""
    return TokenBucket(
        limit_per_second / CLIENT_WINDOW,
        max(1.0, limit_per_second * burst_seconds),
        window=CLIENT_WINDOW,
        window_limit=limit_per_second,
        full=False,
        clock=clock,
    )


def buckets_for(
    limits: Mapping[str, Limit],
    *,
    scale: float = 1.0,
    burst_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, TokenBucket]:
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
