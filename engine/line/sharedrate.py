"""LINE's rate limits shared by several runners of one channel, coordinated through PostgreSQL.

LINE counts its limits per channel (2,000 pushes/s for the channel, however many processes
send), so runners that share one channel's work must share its limits too. Each runner opens
one :class:`SharedRateLimits` on the channel's PostgreSQL schema and gives the Dispatcher its
:meth:`~SharedRateLimits.limiters` (``Dispatcher(..., limiters=...)``) in place of its own
token buckets; each limiter has the buckets' ``acquire(n=1)``.

How (virtual scheduling, GCRA): the table ``rate_schedule`` holds one row per endpoint with
``tat``, the moment (in the database's clock, epoch seconds) from which the channel's time for
that endpoint is not yet handed out. A runner that needs ``k`` requests reserves a *lot* of
``k`` slots in one statement (:data:`RESERVE_SQL`): ``tat = GREATEST(tat, db_now) + k / rate``,
and the lot is the ``k`` moments ``start, start + 1/rate, ...``. Lots of different runners
never overlap, so together the slots are never closer than ``1/rate``, whoever holds them. The
runner then lets its lot's requests go locally, each at its slot's moment.

* Clocks: the slots are in the database's clock; each runner maps them to its own monotonic
  clock with the bounds every statement gives (the database's ``clock_timestamp()`` was read
  between sending the statement and receiving its answer) and the later end of those bounds,
  so a slot is never let go before its moment, and runners on different machines need no
  clock synchronisation.
* Margin: ``rate`` is the limit over :data:`SHARED_WINDOW` (1.05): requests that reach LINE up
  to about 50 ms later than their slots (a slot used up to :data:`LATE` after its moment, the
  network, a busy event loop, the clock bound) still never make one second as LINE counts it
  hold more than the limit. Lots are short (:data:`LOT_SECONDS` of the channel's time at
  most), so that a runner slower than the channel's full rate falls only milliseconds behind
  the slots of a lot it sends.
* No bursts: a slot whose moment passed more than :data:`LATE` seconds ago is dropped, never
  used later; a lot nobody used (its waiters gave up, its runner stopped or died) is simply
  channel time lost, never a burst later. Lots are short and a runner reserves its next lot
  only shortly before its slots run out (or when a fair number of requests wait), so a dead
  runner costs the others a few tens of milliseconds once.
* Few statements, little waiting: a lot holds as many slots as requests are waiting, plus, while
  the runner is sending, as many as it used in the last :data:`LATE` seconds (so that a request
  finds a slot rather than waiting for a statement; more would be channel time another runner
  lacks). A runner busy at the channel's limit has tens of requests waiting, so the database
  sees tens of statements per second for the channel, not one per request.
* The database unreachable: the limiter reconnects (backing off to :data:`RECONNECT_MAX`),
  and meanwhile lets go only the slots it had already reserved; every other request waits.
  Nothing is paced from a guess of how many runners are alive: when the database is away the
  runner cannot record what it sent either, and a wait never exceeds LINE's limit.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .limits import RATE_LIMITS

logger = logging.getLogger("linerules.sharedrate")

#: The shared limiters pace at the limit divided by this: the slots of any 1.05 s hold at most
#: the limit, so requests reaching LINE up to ~50 ms off their slots never make a second hold more.
SHARED_WINDOW = 1.05
#: A lot is at most this much of the channel's time (and only as many slots as are wanted).
LOT_SECONDS = 0.025
#: A slot not used within this many seconds after its moment is dropped (never a late burst).
LATE = 0.025
#: How often a limiter measures how fast its runner uses slots (seconds).
USE_SAMPLE = 0.25
#: A statement (or a connection attempt) that takes longer fails; the connection is replaced.
STATEMENT_TIMEOUT = 2.0
#: Waits between connection attempts while the database cannot be reached: doubling up to the max.
RECONNECT_MIN = 0.1
RECONNECT_MAX = 2.0
#: Clock bounds older than this are forgotten (clocks drift apart slowly; a database clock may be set).
CLOCK_SAMPLE_AGE = 2.0

#: One lot of ``cost`` seconds of ``endpoint``'s schedule, starting no earlier than ``ahead``
#: seconds from the database's now (``clock_timestamp()``: read once the row is this
#: statement's, after any wait for another runner's). Returns the new ``tat`` (the lot ends
#: there) and the database's clock after the update.
RESERVE_SQL = (
    "UPDATE rate_schedule "
    "SET tat = GREATEST(tat, EXTRACT(EPOCH FROM clock_timestamp())::float8 + %(ahead)s) + %(cost)s "
    "WHERE endpoint = %(endpoint)s "
    "RETURNING tat, EXTRACT(EPOCH FROM clock_timestamp())::float8"
)
#: The endpoint's row, created once (by whichever runner comes first).
ENSURE_SQL = "INSERT INTO rate_schedule(endpoint, tat) VALUES (%s, 0) ON CONFLICT (endpoint) DO NOTHING"


class LimiterClosed(RuntimeError):
    """The shared rate limits were closed while a request was waiting for a slot."""


class DatabaseClock:
    """The database's clock as an offset from this process's monotonic clock, from bounds.

    A statement sent at local ``t0`` and answered at local ``t1`` that read the database's
    clock as ``db`` says ``db - t1 <= offset <= db - t0``. The lower bound (the greatest of the
    recent ones) maps a database moment to the latest local moment it can be, so nothing is
    early. A bound that contradicts the others (the database's clock was set) starts afresh.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_age: float = CLOCK_SAMPLE_AGE):
        self._clock = clock
        self.max_age = max_age
        self._samples: deque[tuple[float, float, float]] = deque()  # (taken at, low, high)
        self.low: float | None = None
        self.high: float | None = None

    def add(self, db: float, t0: float, t1: float) -> None:
        low, high = db - t1, db - t0
        if self.low is not None and (high < self.low or self.high is not None and low > self.high):
            self._samples.clear()  # the clocks jumped apart: what was known no longer holds
        self._samples.append((t1, low, high))
        while self._samples and t1 - self._samples[0][0] > self.max_age:
            self._samples.popleft()
        self.low = max(s[1] for s in self._samples)
        self.high = min(s[2] for s in self._samples)

    def local(self, db: float) -> float:
        """The latest local monotonic moment that ``db`` (database epoch seconds) can be."""
        assert self.low is not None, "no statement has been answered yet"
        return db - self.low

    @property
    def uncertainty(self) -> float:
        """How far the mapping may be late (seconds): the tightest round trip seen recently."""
        return 0.0 if self.low is None or self.high is None else self.high - self.low


class SharedRateLimits:
    """The rate limits of one LINE channel, shared by every runner on its PostgreSQL schema.

    ``url``: the conninfo URL of the channel's database and schema (``postgresql://...``, with
    ``options=-csearch_path=SCHEMA`` when the channel has a schema of its own). ``rates``:
    requests per second per endpoint (default LINE's, for the endpoints the Dispatcher calls);
    every runner of a channel must give the same. Call :meth:`open` (creates the store's schema
    when missing and the endpoints' rows), use :meth:`limiters`, then :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        rates: Mapping[str, float] | None = None,
        *,
        window: float = SHARED_WINDOW,
        lot_seconds: float = LOT_SECONDS,
        late: float = LATE,
        statement_timeout: float = STATEMENT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ):
        from .dispatch import DISPATCH_ENDPOINTS

        chosen = {name: RATE_LIMITS[name].rate for name in DISPATCH_ENDPOINTS}
        for name, rate in (rates or {}).items():
            if name not in RATE_LIMITS:
                raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(RATE_LIMITS)}")
            if rate <= 0:
                raise ValueError(f"the rate of {name} must be positive, got {rate}")
            chosen[name] = float(rate)
        if window < 1:
            raise ValueError(f"window must be at least 1 second, got {window}")
        self.url = url
        self.window = window
        self.lot_seconds = lot_seconds
        self.late = late
        self.statement_timeout = statement_timeout
        self.clock = clock
        self.db_clock = DatabaseClock(clock)
        self._limiters = {name: SharedLimiter(self, name, rate) for name, rate in chosen.items()}
        self._conn: Any = None
        self._connect_lock = asyncio.Lock()
        self._retry_at = 0.0
        self._backoff = RECONNECT_MIN
        self._down_since: float | None = None
        self._closed = False
        self._rtt: float | None = None
        self.statements = 0  # reservations answered
        self.failures = 0  # statements or connection attempts that failed
        self.connects = 0

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> SharedRateLimits:
        """Connect, create the store's schema when it is missing (the rows live in its
        ``rate_schedule`` table) and each endpoint's row. Raises when the database cannot be
        reached now (a runner should not start so)."""
        await asyncio.to_thread(_migrate, self.url)
        await self._connection()
        return self

    async def __aenter__(self) -> SharedRateLimits:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: waiting requests are cancelled, the connection closed."""
        self._closed = True
        for limiter in self._limiters.values():
            limiter._stop()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def limiters(self) -> dict[str, SharedLimiter]:
        """Endpoint -> limiter, for ``Dispatcher(limiters=...)``."""
        return dict(self._limiters)

    def __getitem__(self, endpoint: str) -> SharedLimiter:
        return self._limiters[endpoint]

    @property
    def reachable(self) -> bool:
        """False while the database cannot be reached (requests beyond the slots held wait)."""
        return self._down_since is None

    @property
    def metrics(self) -> dict[str, Any]:
        """Statements, failures, connections, and per endpoint the slots granted, dropped unused
        and held, and the requests waiting."""
        return {
            "statements": self.statements,
            "failures": self.failures,
            "connects": self.connects,
            "reachable": self.reachable,
            "endpoints": {
                name: {"granted": lim.granted, "lost": lim.lost, "held": len(lim._slots), "waiting": len(lim._waiters)}
                for name, lim in self._limiters.items()
                if lim.granted or lim.lost or lim._waiters
            },
        }

    # ----------------------------------------------------------------- the connection

    async def _connection(self):
        if self._conn is not None and not self._conn.closed:
            return self._conn
        async with self._connect_lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self._closed:
                raise LimiterClosed("the shared rate limits are closed")
            import psycopg

            wait = self._retry_at - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                conn = await asyncio.wait_for(
                    psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=max(1, round(self.statement_timeout))
                    ),
                    self.statement_timeout,
                )
                try:
                    async with conn.cursor() as cur:
                        rows = [(name,) for name in self._limiters]
                        await asyncio.wait_for(cur.executemany(ENSURE_SQL, rows), self.statement_timeout)
                except BaseException:
                    await conn.close()
                    raise
            except (OSError, TimeoutError, psycopg.Error) as exc:
                self._failed(exc)
                raise
            self._conn = conn
            self.connects += 1
            self._backoff = RECONNECT_MIN
            if self._down_since is not None:
                logger.warning(
                    "the shared rate schedule in PostgreSQL is reachable again after %.1f s",
                    self.clock() - self._down_since,
                )
                self._down_since = None
            return conn

    def _failed(self, exc: BaseException) -> None:
        """A statement or a connection attempt failed: drop the connection, wait before the next."""
        self.failures += 1
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                asyncio.ensure_future(conn.close())
        self._retry_at = self.clock() + self._backoff
        self._backoff = min(RECONNECT_MAX, self._backoff * 2)
        if self._down_since is None:
            self._down_since = self.clock()
            logger.warning(
                "the shared rate schedule in PostgreSQL cannot be reached (%s: %s); requests to LINE "
                "wait until it can, so that the runners together never exceed LINE's limits",
                type(exc).__name__,
                " ".join(str(exc).split()) or "no answer",
            )

    async def _reserve(self, endpoint: str, cost: float, ahead: float) -> tuple[float, float] | None:
        """Reserve ``cost`` seconds of ``endpoint``'s schedule; the lot's start and end as local
        monotonic moments, or None when the database could not be asked."""
        import psycopg

        try:
            conn = await self._connection()
        except (OSError, TimeoutError, psycopg.Error, LimiterClosed):
            return None
        t0 = self.clock()
        try:
            cur = await asyncio.wait_for(
                conn.execute(RESERVE_SQL, {"ahead": ahead, "cost": cost, "endpoint": endpoint}),
                self.statement_timeout,
            )
            row = await cur.fetchone()
        except (OSError, TimeoutError, psycopg.Error) as exc:
            self._failed(exc)
            return None
        t1 = self.clock()
        if row is None:  # the row is gone (the schema was emptied): make it again
            self._failed(RuntimeError(f"no rate_schedule row for {endpoint}"))
            return None
        self.statements += 1
        rtt = t1 - t0
        self._rtt = rtt if self._rtt is None else 0.8 * self._rtt + 0.2 * rtt
        tat, db_now = float(row[0]), float(row[1])
        self.db_clock.add(db_now, t0, t1)
        return self.db_clock.local(tat - cost), self.db_clock.local(tat)

    @property
    def round_trip(self) -> float:
        """The recent time a reservation takes (seconds)."""
        return self._rtt if self._rtt is not None else 0.005


class SharedLimiter:
    """One endpoint's share of the channel's schedule, for this runner: ``await acquire(n)``
    returns when ``n`` slots are this runner's and due (see the module's text)."""

    def __init__(self, owner: SharedRateLimits, endpoint: str, limit: float):
        self.owner = owner
        self.endpoint = endpoint
        self.limit = limit
        self.rate = limit / owner.window
        self.interval = 1.0 / self.rate
        # a lot is short at the channel's full rate, so that a runner slower than that lags a
        # few milliseconds behind its slots at most; at low rates a few slots, not one a statement
        self.max_lot = max(4, int(self.rate * owner.lot_seconds))
        # fewer wanted than this wait for the held slots to run out (not a statement each)
        self.min_batch = max(1, self.max_lot // 4)
        self._slots: deque[float] = deque()  # local monotonic moments reserved, not yet used
        self._waiters: deque[list] = deque()  # [slots still wanted, future]
        self._wanted = 0  # slots the waiters still want
        self._pacer: asyncio.Task[None] | None = None
        self._reserving: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.granted = 0  # slots used
        self._mark = (owner.clock(), 0)  # (when, granted then): how fast this runner uses slots
        self._used_rate = 0.0
        self._kicked = False
        self.lost = 0  # slots dropped unused (their moment passed)

    async def acquire(self, n: float = 1) -> None:
        """Wait until ``n`` requests may go to ``endpoint`` (never sooner than their slots)."""
        if self.owner._closed:
            raise LimiterClosed("the shared rate limits are closed")
        count = max(1, int(-(-n // 1)))
        if count == 1 and not self._waiters and self._slots:
            now = self.owner.clock()
            self._drop_late(now)
            if self._slots and self._slots[0] <= now:
                self._slots.popleft()
                self.granted += 1
                self._kick()
                return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append([count, future])
        self._wanted += count
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.ensure_future(self._pace())
        else:
            self._kick()
        try:
            await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._forget(future)
            raise

    def _kick(self) -> None:
        """Consider a reservation once the requests asked for at the same moment are all in
        (soon, not now: so that they share one statement)."""
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._kicked_off)

    def _kicked_off(self) -> None:
        self._kicked = False
        self._maybe_reserve(self.owner.clock())

    def _forget(self, future: asyncio.Future) -> None:
        for entry in self._waiters:
            if entry[1] is future:
                self._waiters.remove(entry)
                self._wanted -= entry[0]
                return

    def _stop(self) -> None:
        for task in (self._pacer, self._reserving):
            if task is not None:
                task.cancel()
        for _, future in self._waiters:
            if not future.done():
                future.cancel()
        self._waiters.clear()
        self._wanted = 0

    def _drop_late(self, now: float) -> None:
        late = now - self.owner.late
        slots = self._slots
        while slots and slots[0] < late:
            slots.popleft()
            self.lost += 1

    def _maybe_reserve(self, now: float) -> None:
        """Reserve the next lot, at most one statement in flight: for the requests waiting beyond
        the slots held, once the held ones run out soon or a fair number wait; and, while the
        runner is sending, for the requests it will ask for within :data:`LATE` (what it used
        lately), so that a request that comes finds a slot instead of waiting for a statement."""
        if self._reserving is not None or self.owner._closed:
            return
        elapsed = now - self._mark[0]
        if elapsed >= USE_SAMPLE:
            used = (self.granted - self._mark[1]) / elapsed
            self._used_rate = used if elapsed > 4 * USE_SAMPLE else 0.5 * (self._used_rate + used)
            self._mark = (now, self.granted)
        held = len(self._slots)
        need = self._wanted - held
        short = need + int(self._used_rate * self.owner.late)
        if short <= 0:
            return
        owner = self.owner
        held_until = self._slots[-1] - now if self._slots else 0.0
        lead = 2 * owner.round_trip + 0.005
        if held_until > lead and need < self.min_batch:
            return
        self._reserving = asyncio.ensure_future(self._reserve(min(self.max_lot, short)))

    async def _reserve(self, k: int) -> None:
        owner = self.owner
        try:
            # a lot that starts now is only known a round trip later: start it half of one on
            ahead = min(owner.late, owner.round_trip / 2)
            lot = await owner._reserve(self.endpoint, k * self.interval, ahead)
            if lot is not None:
                start = lot[0]
                moments = [start + i * self.interval for i in range(k)]
                if self._slots and moments[0] < self._slots[-1]:
                    for moment in moments:
                        bisect.insort(self._slots, moment)
                else:
                    self._slots.extend(moments)
        finally:
            self._reserving = None
            if self._wake is not None:
                self._wake.set()

    async def _pace(self) -> None:
        assert self._wake is not None
        waiters, slots = self._waiters, self._slots
        while waiters:
            now = self.owner.clock()
            self._drop_late(now)
            while slots and slots[0] <= now and waiters:
                entry = waiters[0]
                if entry[1].done():
                    waiters.popleft()
                    self._wanted -= entry[0]
                    continue
                slots.popleft()
                entry[0] -= 1
                self._wanted -= 1
                self.granted += 1
                if entry[0] == 0:
                    waiters.popleft()
                    entry[1].set_result(None)
            while waiters and waiters[0][1].done():
                self._wanted -= waiters.popleft()[0]
            if not waiters:
                break
            self._maybe_reserve(now)
            self._wake.clear()
            if slots:
                await asyncio.sleep(max(0.0, slots[0] - self.owner.clock()))
            else:
                await self._wake.wait()


def _migrate(url: str) -> None:
    """The store's schema in the database of ``url`` (``rate_schedule`` is one of its tables)."""
    import psycopg

    from engine.runtime import pgschema

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        pgschema.migrate(conn)
