"""Several runners on one PostgreSQL schema share one LINE channel's work (docs/engine.md
"Several runners"): one leads the ticks, every one serves webhooks and sends, a runner killed
by SIGKILL is taken over within seconds, and every message is delivered exactly once (counted
on the LINE emulator's delivery log). Real runner processes, a real PostgreSQL, real signals."""

from __future__ import annotations

import json
import random
import signal
import urllib.error
from collections import Counter

import pytest

from engine.testing.webhooks import line_event
from runnerkit import PER_FRIEND_MESSAGES, add_friends, per_friend, wait_until, write_rules


@pytest.fixture
def rules(tmp_path):
    """Each friend welcomed with a text of their own (a push each)."""
    return write_rules(tmp_path / "rules", messages=PER_FRIEND_MESSAGES)


def cluster(runner) -> dict:
    return runner.get("/healthz")[1]["cluster"]


def follow_event(friend: str) -> dict:
    """A shop event for ``POST /events``: ``friend`` followed (a fixed moment: one push each)."""
    return {"type": "follow", "friend": friend, "at": "2026-11-01T10:00:00+09:00", "id": f"follow-{friend}"}


def test_two_runners_on_one_database_one_leads_both_take_webhooks_each_welcome_goes_once(
    pg_url, rules, line_emulator, line_env, line_webhook, processes
):
    friends = add_friends(line_emulator, [f"U{i:03d}" for i in range(20)])
    runners = [processes(rules, pg_url, env=line_env, tick=0.5).started() for _ in range(2)]
    wait_until(lambda: sorted(cluster(r)["leading"] for r in runners) == [False, True])
    assert {cluster(r)["runners"] for r in runners} == {2}
    leader = next(r for r in runners if cluster(r)["leading"])
    assert {cluster(r)["leader"] for r in runners} == {cluster(leader)["this_runner"]}
    for i, friend in enumerate(friends):  # a load balancer spreads the webhooks
        assert runners[i % 2].post_webhook(line_webhook(line_event("follow", friend))) == 200
    wait_until(lambda: len(per_friend(line_emulator)) == len(friends), timeout=30)
    wait_until(lambda: all(r.get("/healthz")[1]["outbox_backlog"] == 0 for r in runners))
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    for r in runners:  # both are healthy: the follower reads the leader's last tick from the database
        status, health = r.get("/healthz")
        assert status == 200, health
        assert r.metric("linerules_cluster_runners") == 2
    assert sorted(r.metric("linerules_leading") for r in runners) == [0.0, 1.0]


def test_the_leader_killed_is_taken_over_within_seconds(pg_url, rules, line_emulator, line_env, processes):
    friends = add_friends(line_emulator, ["U1", "U2"])
    runners = [processes(rules, pg_url, env=line_env, tick=0.5).started() for _ in range(2)]
    wait_until(lambda: sorted(cluster(r)["leading"] for r in runners) == [False, True])
    leader, other = sorted(runners, key=lambda r: not cluster(r)["leading"])
    leader.proc.send_signal(signal.SIGKILL)
    assert leader.exit_code() == -signal.SIGKILL
    other.wait_for(r"now runs the ticks", timeout=10)
    assert cluster(other) == {**cluster(other), "leading": True, "runners": 1}
    other.post_events([follow_event(f) for f in friends])
    wait_until(lambda: len(per_friend(line_emulator)) == 2, timeout=20)
    assert per_friend(line_emulator) == Counter({"U1": 1, "U2": 1})
    other.proc.send_signal(signal.SIGTERM)
    assert other.exit_code() == 0


def test_three_runners_killed_at_random_lose_nothing_and_repeat_nothing(
    pg_url, rules, line_emulator, line_env, line_webhook, processes
):
    """Webhooks and ``/events`` spread over three runners while one of them is killed
    (SIGKILL) and replaced again and again, with LINE losing answers and timing out: every
    friend gets exactly one welcome."""
    rng = random.Random(7)
    friends = add_friends(line_emulator, [f"U{i:03d}" for i in range(60)])
    line_emulator.inject_lost_response("push", count=3)
    line_emulator.inject_timeout("push", count=2, delay=0.5)
    env = {**line_env, "LINERULES_LINE_TIMEOUT": "2"}
    live = [processes(rules, pg_url, env=env, tick=0.3).started() for _ in range(3)]
    queue = list(friends)
    rng.shuffle(queue)
    killed = 0
    while queue:
        batch, queue = queue[:6], queue[6:]
        accepted = False
        for runner in rng.sample(live, len(live)):  # the load balancer tries the next one
            try:
                if rng.random() < 0.5:
                    runner.post_events([follow_event(f) for f in batch])
                else:
                    runner.post_webhook(line_webhook(*(line_event("follow", f, event_id=f"ev-{f}") for f in batch)))
                accepted = True
                break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                continue
        assert accepted
        victim = rng.choice(live)
        victim.proc.send_signal(signal.SIGKILL)
        assert victim.exit_code() == -signal.SIGKILL
        killed += 1
        live.remove(victim)
        live.append(processes(rules, pg_url, env=env, tick=0.3).started())
    wait_until(lambda: len(per_friend(line_emulator)) == len(friends), timeout=60)
    wait_until(lambda: all(r.get("/healthz")[1]["outbox_backlog"] == 0 for r in live), timeout=30)
    assert killed == 10
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    notes = Counter(r.note for r in line_emulator.requests)
    assert notes["lost"] == 3 and notes["timeout"] == 2  # the faults happened; the retries were answered 409
    assert any(r.status == 409 for r in line_emulator.requests)


def test_one_schema_per_channel_keeps_two_accounts_apart(pg_server, rules, line_emulator, line_env, processes):
    """An agency: two LINE channels on one PostgreSQL, each in its own schema with its own
    runners (docs/scale.md). Each channel's friends get its welcome, from its own token, and
    neither runner set sees the other's friends or takes the other's lead."""
    from engine.testing.line_emulator import run_in_thread

    schemas = []
    try:
        with run_in_thread(access_token="token-b", channel_secret="secret-b", channel_id="2000000002") as other:
            add_friends(line_emulator, ["UA1", "UA2"])
            add_friends(other, ["UB1"])
            env_b = {
                "LINE_API_ENDPOINT": other.base_url,
                "LINE_CHANNEL_ACCESS_TOKEN": "token-b",
                "LINE_CHANNEL_SECRET": "secret-b",
            }
            urls = {}
            for name in ("shop_a", "shop_b"):
                schema, urls[name] = pg_server.new_schema()
                schemas.append(schema)
            shop_a = [processes(rules, urls["shop_a"], env=line_env, tick=0.5).started() for _ in range(2)]
            shop_b = [processes(rules, urls["shop_b"], env=env_b, tick=0.5).started()]
            for group in (shop_a, shop_b):  # each channel has its own leader
                wait_until(lambda g=group: sum(cluster(r)["leading"] for r in g) == 1)
                assert {cluster(r)["runners"] for r in group} == {len(group)}
            shop_a[1].post_events([follow_event("UA1"), follow_event("UA2")])
            shop_b[0].post_events([follow_event("UB1")])
            wait_until(lambda: len(per_friend(line_emulator)) == 2 and len(per_friend(other)) == 1, timeout=30)
            assert per_friend(line_emulator) == Counter({"UA1": 1, "UA2": 1})
            assert per_friend(other) == Counter({"UB1": 1})
            assert shop_b[0].get("/healthz")[1]["friends"] == 1
            assert shop_a[0].get("/healthz")[1]["friends"] == 2
    finally:
        for schema in schemas:
            pg_server.drop_schema(schema)


def test_runners_whose_sessions_the_server_ends_carry_on_with_one_leader(
    pg_url, rules, line_emulator, line_env, processes
):
    """A PostgreSQL restart or failover ends every session: the runners open new ones, take
    their member locks again, compete for the lead anew (exactly one wins), and what happens
    next is sent once."""
    import psycopg

    friends = add_friends(line_emulator, ["U1", "U2", "U3"])
    runners = [processes(rules, pg_url, env=line_env, tick=0.3).started() for _ in range(2)]
    wait_until(lambda: sorted(cluster(r)["leading"] for r in runners) == [False, True])
    runners[0].post_events([follow_event("U1")])
    wait_until(lambda: len(per_friend(line_emulator)) == 1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ended = conn.execute(  # the runners' sessions are named after their schema (other tests' are not ended)
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'linerules ' || current_schema() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert ended >= 6  # three sessions per runner: the HTTP side's, the ticks', the listener's
    runners[1].wait_for(r"was lost and is open again", timeout=10)
    wait_until(lambda: sorted(cluster(r)["leading"] for r in runners) == [False, True], timeout=15)
    wait_until(lambda: {cluster(r)["runners"] for r in runners} == {2}, timeout=15)
    runners[1].post_events([follow_event("U2")])
    runners[0].post_events([follow_event("U3")])
    wait_until(lambda: len(per_friend(line_emulator)) == 3, timeout=20)
    wait_until(lambda: all(r.get("/healthz")[1]["outbox_backlog"] == 0 for r in runners))
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    for r in runners:
        status, health = r.get("/healthz")
        assert status == 200, health
