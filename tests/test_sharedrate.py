"""LINE's rate limits shared by several runners of one channel through PostgreSQL
(engine/line/sharedrate.py): real processes with real Dispatchers, the LINE emulator over HTTP
counting what arrives, a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import psycopg
import pytest
from sharedratekit import Proxy, results, start_runners

from engine.line.dispatch import Dispatcher
from engine.line.sharedrate import LATE, SHARED_WINDOW, SharedRateLimits
from engine.testing.line_emulator import DEFAULT_ACCESS_TOKEN, busiest, synthetic_user_id

LIMIT = 100  # pushes/s: LINE's 2,000 scaled down, so that a test takes seconds


def _paced(span: float) -> int:
    """The most requests a limiter lets go in any ``span`` seconds: one slot each 1/rate (the
    limit over the 1.05 s window), a slot used up to LATE after its moment."""
    return int((span + LATE) * LIMIT / SHARED_WINDOW) + 1


@pytest.mark.timing  # the emulator counts arrivals per second: a loaded machine bunches them
@pytest.mark.line_emulator(rate_limits={"push": LIMIT})
def test_three_runners_together_stay_inside_the_channels_limit(line_emulator, pg_url, tmp_path):
    counts = [70, 70, 70]
    for i in range(sum(counts)):
        line_emulator.add_user(synthetic_user_id(i), f"Friend {i}")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    children = start_runners(pg_url, line_emulator.base_url, LIMIT, counts, tmp_path, env)
    done = results(children)

    assert [r["outcomes"] for r in done] == [{"sent": n} for n in counts]
    pushes = line_emulator.requests_to("push")
    assert len(pushes) == sum(counts)
    assert {r.status for r in pushes} == {200}, "no 429: the channel's limit was never exceeded"
    assert len(line_emulator.delivered) == sum(counts)
    # as LINE counts: no second (any second, and each second of the clock) holds more than the limit
    assert line_emulator.busiest_second("push") <= LIMIT
    assert max(Counter(int(r.time) for r in pushes).values()) <= LIMIT
    # they sent at the same time, not one after the other: most pushes arrived while two or
    # more runners were sending (a busy machine may start one of them late)
    first_of, last_of = {}, {}
    for r in pushes:
        runner = int(r.json()["to"][1:], 16) // counts[0]
        first_of.setdefault(runner, r.time)
        last_of[runner] = r.time
    together = [r for r in pushes if sum(first_of[i] <= r.time <= last_of[i] for i in first_of) >= 2]
    assert len(together) >= len(pushes) / 2, (first_of, last_of)
    # lots, not a statement per push
    assert sum(r["limits"]["statements"] for r in done) < sum(counts) / 2


@pytest.mark.timing  # the emulator counts arrivals per second: a loaded machine bunches them
@pytest.mark.line_emulator(rate_limits={"push": LIMIT})
def test_a_runner_killed_while_holding_slots_leaves_the_others_sending_inside_the_limit(
    line_emulator, pg_url, tmp_path
):
    counts = [150, 100]
    for i in range(sum(counts)):
        line_emulator.add_user(synthetic_user_id(i), f"Friend {i}")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    doomed, survivor = start_runners(pg_url, line_emulator.base_url, LIMIT, counts, tmp_path, env)
    deadline = time.monotonic() + 30
    while sum(int(r.json()["to"][1:], 16) < counts[0] for r in line_emulator.requests_to("push")) < 30:
        assert time.monotonic() < deadline, "the first runner did not get going"
        time.sleep(0.01)
    doomed.kill()  # SIGKILL: its reserved slots are simply never used
    doomed.wait(10)
    [done] = results([survivor])

    assert done["outcomes"] == {"sent": counts[1]}
    pushes = line_emulator.requests_to("push")
    assert {r.status for r in pushes} == {200}
    assert line_emulator.busiest_second("push") <= LIMIT


async def _granted_times(limiter, n: int) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(times)


def test_slots_reserved_but_not_used_are_lost_not_a_burst_later(pg_url):
    async def scenario() -> tuple[list[float], dict, int]:
        async with SharedRateLimits(pg_url, {"push": LIMIT}, lot_seconds=0.3) as limits:
            limiter = limits["push"]
            # a lot is reserved for waiters that give up before its slots come
            waiting = [asyncio.ensure_future(limiter.acquire()) for _ in range(limiter.max_lot)]
            while not limits.metrics["endpoints"].get("push", {}).get("held"):
                await asyncio.sleep(0.005)
            held = limits.metrics["endpoints"]["push"]["held"]
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            await asyncio.sleep(0.6)  # idle: the lot's moments pass unused
            times = await _granted_times(limiter, 30)
            return times, limits.metrics, held

    times, metrics, held = asyncio.run(scenario())
    assert held >= 10
    # after the pause, the 30 requests are paced at the rate like any others: the unused lot
    # gave no head start (a burst would let a whole lot go at once)
    for span in (0.05, 0.1, 0.2):
        assert busiest(times, span) <= _paced(span), (span, busiest(times, span))
    assert metrics["endpoints"]["push"]["lost"] >= held


def test_runners_on_one_schema_share_one_schedule_and_other_schemas_are_other_channels(pg_server, tmp_path):
    """Two channels (schemas) do not share limits; two runners of one channel do."""
    schemas = [pg_server.new_schema(), pg_server.new_schema()]
    try:

        async def scenario() -> tuple[list[float], list[float]]:
            one_a = SharedRateLimits(schemas[0][1], {"push": LIMIT})
            one_b = SharedRateLimits(schemas[0][1], {"push": LIMIT})
            other = SharedRateLimits(schemas[1][1], {"push": LIMIT})
            for limits in (one_a, one_b, other):
                await limits.open()
            try:
                a, b, c = await asyncio.gather(
                    _granted_times(one_a["push"], 40),
                    _granted_times(one_b["push"], 40),
                    _granted_times(other["push"], 40),
                )
            finally:
                for limits in (one_a, one_b, other):
                    await limits.close()
            return sorted(a + b), c

        same_channel, other_channel = asyncio.run(scenario())
        rate = LIMIT / 1.05
        # one channel: the two runners' 80 requests together at the channel's rate
        assert busiest(same_channel, 0.5) <= _paced(0.5)
        assert same_channel[-1] - same_channel[0] >= 79 / rate - 0.05
        # the other channel was not slowed by them: its 40 took about half as long
        assert other_channel[-1] - other_channel[0] < (same_channel[-1] - same_channel[0]) * 0.75
        for _, url in schemas:
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT endpoint FROM rate_schedule WHERE endpoint = 'push'").fetchone()
    finally:
        for schema, _ in schemas:
            pg_server.drop_schema(schema)


def test_while_the_database_cannot_be_reached_requests_wait_then_resume_at_the_limit(pg_url):
    proxy, url = Proxy.to(pg_url)

    async def scenario() -> None:
        async with SharedRateLimits(url, {"push": LIMIT}) as limits:
            limiter = limits["push"]
            before = await _granted_times(limiter, 10)
            assert len(before) == 10
            await asyncio.sleep(0.1)  # what was held is used or has passed
            proxy.cut()
            waiting = asyncio.ensure_future(_granted_times(limiter, 20))
            await asyncio.sleep(1.0)
            assert not waiting.done(), "nothing may go while the shared schedule cannot be asked"
            assert limits.metrics["endpoints"]["push"]["granted"] == 10
            assert not limits.reachable
            proxy.restore()
            after = await asyncio.wait_for(waiting, 30)
            assert limits.reachable
            assert limits.metrics["failures"] >= 1 and limits.metrics["connects"] >= 2
            # paced at the channel's rate again, not a catch-up burst
            assert busiest(after, 0.1) <= _paced(0.1)

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()


def test_a_runner_cannot_start_without_its_database():
    async def scenario() -> None:
        await SharedRateLimits("postgresql://postgres@127.0.0.1:1/postgres", {"push": LIMIT}).open()

    with pytest.raises(psycopg.OperationalError):
        asyncio.run(scenario())


def test_the_dispatcher_takes_limiters_for_known_endpoints_only():
    class Gate:
        async def acquire(self, n: float = 1.0) -> None:
            return None

    with pytest.raises(ValueError, match="unknown endpoint 'pushes'"):
        Dispatcher(DEFAULT_ACCESS_TOKEN, "http://127.0.0.1:9", limiters={"pushes": Gate()})
