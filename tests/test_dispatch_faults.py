"""LINE faults, crashes and a lost lease, through the real runner process against the LINE
emulator (real line-bot-sdk over loopback HTTP, signed webhooks, real signals): replies left in
flight, answers whose response was lost, a long Retry-After, a hanging recipient, a refused or
expired token, and a runner stopped past its lease."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.runner.runloop import REPLY_SLOTS
from runnerkit import (
    PER_FRIEND_MESSAGES,
    add_friends,
    backlog,
    execute,
    follow,
    per_friend,
    rows,
    text_message,
    wait_until,
    write_rules,
)

ANSWER_RULES = """\
rule welcome
  when followed
  then send greeting

rule keyword
  when message "クーポン"
  reenter always
  then send thanks
"""


def answer_rules(root: Path) -> Path:
    return write_rules(root, ANSWER_RULES, PER_FRIEND_MESSAGES)


@pytest.fixture
def ask(line_emulator, line_webhook):
    """``ask(runner, friend, n)``: the friend writes "クーポン" on LINE (a signed webhook with a
    fresh reply token); the runner's HTTP status."""

    def post(runner, friend: str, n: int = 0) -> int:
        token = line_emulator.issue_reply_token(friend)
        return runner.post_webhook(line_webhook(text_message(friend, token, n)))

    return post


def stateless(line_emulator, line_channel, secret: str | None = None) -> dict[str, str]:
    """The runner issues its own access tokens from the channel id and secret."""
    return {
        "LINE_CHANNEL_ID": line_channel.channel_id,
        "LINE_CHANNEL_SECRET": secret or line_channel.channel_secret,
        "LINE_API_ENDPOINT": line_emulator.base_url,
    }


# ----------------------------------------------------------------------------- 3: replies after a crash


def test_replies_in_flight_at_a_sigkill_are_delivered_once_each_as_free_replies(
    tmp_path, line_emulator, line_env, processes, ask
):
    """Only a reply actually sent is ambiguous; its token tells after the restart whether it
    arrived. Replies waiting for a slot were never sent and simply go out."""
    rules = write_rules(tmp_path / "rules", ANSWER_RULES)
    db = tmp_path / "replies.db"
    friends = [f"U{i:03d}" for i in range(REPLY_SLOTS + 4)]
    add_friends(line_emulator, friends)
    half = REPLY_SLOTS // 2
    line_emulator.inject_lost_response("reply", count=half, delay=60)  # delivered, answer lost
    line_emulator.inject_timeout("reply", count=REPLY_SLOTS - half, delay=60)  # never processed
    first = processes(rules, db, env=line_env).started()
    for i, f in enumerate(friends):
        assert ask(first, f, i) == 200
    wait_until(lambda: len(line_emulator.requests_to("reply")) >= REPLY_SLOTS)
    wait_until(lambda: len(rows(db)) == len(friends))
    first.proc.send_signal(signal.SIGKILL)
    assert first.exit_code() == -signal.SIGKILL
    in_flight = rows(db, "SELECT * FROM outbox WHERE ambiguous = 1")
    waiting = rows(db, "SELECT * FROM outbox WHERE ambiguous = 0 AND status = 'pending'")
    assert len(in_flight) == REPLY_SLOTS and len(waiting) == 4
    assert len(line_emulator.requests_to("reply")) == REPLY_SLOTS  # the 4 were never sent

    second = processes(rules, db, env=line_env).started()
    wait_until(lambda: backlog(db) == 0, timeout=30)
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    assert per_friend(line_emulator, "reply") == Counter({f: 1 for f in friends})
    assert line_emulator.requests_to("push") == []
    second.proc.send_signal(signal.SIGTERM)
    assert second.exit_code() == 0
    done = rows(db)
    assert Counter(r["status"] for r in done) == {"sent": len(friends) - half, "duplicate": half}
    for r in done:
        if r["status"] == "duplicate":
            assert "reply token already used" in r["last_error"]
    reasons = rows(db, "SELECT status, reason FROM deliveries WHERE status != 'sent'")
    assert reasons == []


def test_a_restart_after_the_reply_tokens_expired_pushes_only_what_was_never_sent(
    tmp_path, line_emulator, line_env, processes, ask
):
    rules = write_rules(tmp_path / "rules", ANSWER_RULES)
    db = tmp_path / "late.db"
    friends = [f"U{i:03d}" for i in range(REPLY_SLOTS + 3)]
    add_friends(line_emulator, friends)
    line_emulator.inject_lost_response("reply", count=REPLY_SLOTS, delay=60)
    first = processes(rules, db, env=line_env).started()
    for i, f in enumerate(friends):
        ask(first, f, i)
    wait_until(lambda: len(line_emulator.requests_to("reply")) >= REPLY_SLOTS)
    wait_until(lambda: len(rows(db)) == len(friends))
    first.proc.send_signal(signal.SIGKILL)
    first.exit_code()
    # the runner comes back more than 50 s later: every reply token is past its deadline
    execute(db, "UPDATE outbox SET reply_deadline = ?", (int(time.time()) - 1,))
    second = processes(rules, db, env=line_env).started()
    wait_until(lambda: backlog(db) == 0, timeout=30)
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})  # none twice
    assert len(line_emulator.requests_to("push")) == 3  # the 3 never sent
    second.proc.send_signal(signal.SIGTERM)
    assert second.exit_code() == 0
    statuses = Counter(r["status"] for r in rows(db))
    assert statuses == {"unconfirmed": REPLY_SLOTS, "sent": 3}
    unconfirmed = rows(db, "SELECT status, reason FROM deliveries WHERE status = 'unconfirmed'")
    assert len(unconfirmed) == REPLY_SLOTS
    assert all("not pushed, so that it is never sent twice" in r["reason"] for r in unconfirmed)


# ----------------------------------------------------------------------------- 4: lost answer, then 500/429


def test_a_reply_whose_answer_was_lost_then_500_and_429_is_never_doubled_by_a_push(
    tmp_path, line_emulator, line_env, processes, ask
):
    rules = write_rules(tmp_path / "rules", ANSWER_RULES)
    db = tmp_path / "doubled.db"
    line_emulator.add_user("U1", "Hanako")
    line_emulator.inject_lost_response("reply", count=1)
    # five attempts go in one call: the lost one, two 500s, two 429s; the row is then held
    # and goes again with its own token, which LINE refuses as used
    line_emulator.inject("reply", 500, count=2)
    line_emulator.inject("reply", 429, count=2, headers={"Retry-After": "1"})
    runner = processes(rules, db, env=line_env).started()
    ask(runner, "U1")
    wait_until(lambda: len(rows(db)) == 1 and backlog(db) == 0, timeout=40)
    assert line_emulator.inbox("U1") == [{"type": "text", "text": "ありがとうございます"}]
    assert line_emulator.requests_to("push") == []
    statuses = [r.status for r in line_emulator.requests_to("reply")]
    assert statuses[0] is None and 500 in statuses and 429 in statuses
    assert statuses[-1] == 400  # the token was used: delivered
    runner.wait_for(r"outbox 1 reply to U1: 500 .*retrying in")
    runner.wait_for(r"outbox 1 to U1 not sent .* and may have arrived; next attempt")
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0
    [row] = rows(db)
    assert (row["status"], row["ambiguous"]) == ("duplicate", 1)
    assert "reply token already used" in row["last_error"]


# ----------------------------------------------------------------------------- 5: one row never holds the others


def test_a_long_retry_after_holds_only_its_row_and_sigterm_is_prompt(tmp_path, line_emulator, line_env, processes, ask):
    rules = answer_rules(tmp_path / "rules")
    db = tmp_path / "retry_after.db"
    friends = [f"U{i}" for i in range(1, 6)]
    add_friends(line_emulator, friends + ["UR"])
    line_emulator.inject("push", 429, count=1, headers={"Retry-After": "3600"})
    runner = processes(rules, db, env=line_env).started()
    runner.post_events([follow(f) for f in friends])
    wait_until(lambda: len(line_emulator.delivered) == 4)
    ask(runner, "UR")
    wait_until(lambda: line_emulator.inbox("UR"))
    assert per_friend(line_emulator, "reply") == Counter({"UR": 1})
    [held] = rows(db, "SELECT * FROM outbox WHERE status = 'held'")
    assert 290 <= held["not_before"] - int(time.time()) <= 301  # capped at 5 minutes
    runner.wait_for(rf"outbox {held['id']} to U\d not sent \(429 .*\); next attempt at")
    assert runner.metric("linerules_pushes_total", outcome="retry") == 1
    started = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code(timeout=10) == 0
    assert time.monotonic() - started < 5


def test_a_hanging_recipient_holds_nobody_else_and_answers_stay_free_replies(
    tmp_path, line_emulator, line_env, processes, ask
):
    rules = answer_rules(tmp_path / "rules")
    db = tmp_path / "hang.db"
    friends = [f"U{i}" for i in range(1, 9)]
    add_friends(line_emulator, friends + ["UR"])
    line_emulator.inject_timeout("push", count=1, delay=60)  # the first push's connection hangs
    line_emulator.inject("push", 500, count=2)  # and two others fail once
    runner = processes(rules, db, env={**line_env, "LINERULES_LINE_TIMEOUT": "2"}).started()
    runner.post_events([follow(f) for f in friends])
    wait_until(lambda: len(line_emulator.delivered) == len(friends) - 1, timeout=10)
    hanging = [r for r in line_emulator.requests_to("push") if r.note == "timeout"]
    assert len(hanging) == 1 and len(line_emulator.requests_to("push")) >= len(friends)
    ask(runner, "UR")
    wait_until(lambda: line_emulator.inbox("UR"), timeout=5)
    assert per_friend(line_emulator, "reply") == Counter({"UR": 1})  # free, not pushed
    wait_until(lambda: runner.metric("linerules_line_retries_total", reason="500") == 2)
    # the hung request times out (LINERULES_LINE_TIMEOUT, 2 s) and goes again with its retry key
    wait_until(lambda: backlog(db) == 0, timeout=30)
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends + ["UR"]})
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0


def test_an_answer_goes_at_once_while_every_push_slot_hangs(tmp_path, line_emulator, line_env, processes, ask):
    """Replies have slots of their own: a push backlog stuck on LINE never makes an answer
    wait (and turn from a free reply into a paid push)."""
    from engine.runner.runloop import SEND_SLOTS

    rules = answer_rules(tmp_path / "rules")
    db = tmp_path / "lanes.db"
    friends = [f"U{i:03d}" for i in range(SEND_SLOTS + 10)]
    add_friends(line_emulator, friends + ["UR"])
    line_emulator.inject_timeout("push", count=SEND_SLOTS, delay=60)
    runner = processes(rules, db, env=line_env).started()
    runner.post_events([follow(f) for f in friends])
    wait_until(lambda: len(line_emulator.requests_to("push")) == SEND_SLOTS)
    asked = time.monotonic()
    ask(runner, "UR")
    wait_until(lambda: line_emulator.inbox("UR"), timeout=5)
    assert time.monotonic() - asked < 3
    assert per_friend(line_emulator, "reply") == Counter({"UR": 1})
    assert len(line_emulator.requests_to("push")) == SEND_SLOTS  # the backlog still waits
    assert runner.metric("linerules_sends_in_flight") == SEND_SLOTS


# ----------------------------------------------------------------------------- 6: the token


def test_a_refused_token_holds_everything_and_sending_resumes_when_it_is_accepted(
    tmp_path, line_emulator, line_env, processes
):
    rules = answer_rules(tmp_path / "rules")
    db = tmp_path / "auth.db"
    friends = [f"U{i}" for i in range(1, 6)]
    add_friends(line_emulator, friends)
    runner = processes(rules, db, env=line_env).started()
    line_emulator.revoke_token()
    runner.post_events([follow(f) for f in friends])
    runner.wait_for(
        r"LINE refuses the channel access token \(401 .*every send is held, "
        r"nothing is dropped"
    )
    status, health = runner.get("/healthz")
    assert status == 503 and health["sending"].startswith("held")
    assert any("refuses the channel access token" in p for p in health["problems"])
    assert runner.metric("linerules_sending_held") == 1
    wait_until(lambda: len(rows(db)) == len(friends))
    assert line_emulator.delivered == [] and backlog(db) == len(friends)  # nothing dropped
    line_emulator.restore_token()
    runner.wait_for(r"LINE accepts the channel access token again: sending resumes", timeout=20)
    wait_until(lambda: backlog(db) == 0)
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    assert runner.get("/healthz")[0] == 200
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0
    assert {r["status"] for r in rows(db)} == {"sent"}


def test_stateless_tokens_are_issued_and_renewed_by_the_runner(tmp_path, line_emulator, processes, line_channel):
    rules = write_rules(tmp_path / "rules", ANSWER_RULES)
    db = tmp_path / "stateless.db"
    add_friends(line_emulator, ("U1", "U2"))
    runner = processes(rules, db, env=stateless(line_emulator, line_channel)).started()
    runner.post_events([follow("U1")])
    wait_until(lambda: line_emulator.inbox("U1"))
    assert len(line_emulator.stateless_tokens) == 1
    line_emulator.expire_stateless_tokens()  # 15 minutes later, or refused
    runner.post_events([follow("U2")])
    wait_until(lambda: line_emulator.inbox("U2"))
    assert len(line_emulator.stateless_tokens) == 2
    assert [r.status for r in line_emulator.requests_to("push")][-2:] == [401, 200]
    assert runner.get("/healthz")[1]["dry_run"] is False
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0
    assert [r["status"] for r in rows(db)] == ["sent", "sent"]


def test_a_wrong_channel_secret_holds_sends_and_says_so(tmp_path, line_emulator, processes, line_channel):
    rules = write_rules(tmp_path / "rules", ANSWER_RULES)
    db = tmp_path / "wrong.db"
    line_emulator.add_user("U1", "Hanako")
    env = stateless(line_emulator, line_channel, secret="not-the-secret")
    runner = processes(rules, db, env=env).started()
    runner.post_events([follow("U1")])
    runner.wait_for(
        r"LINE refuses the channel access token \(token: LINE refused to "
        r"issue a channel access token for channel \d+: 400 .*invalid_client"
    )
    status, health = runner.get("/healthz")
    assert status == 503 and "invalid_client" in " ".join(health["problems"])
    assert backlog(db) == 1 and line_emulator.delivered == []


# ----------------------------------------------------------------------------- 7: fencing


def test_a_runner_stopped_past_its_lease_writes_nothing_over_the_new_runners_rows(
    tmp_path, line_emulator, line_env, processes
):
    rules = write_rules(tmp_path / "rules", messages=PER_FRIEND_MESSAGES)
    db = tmp_path / "fenced.db"
    friends = [f"U{i:02d}" for i in range(20)]
    add_friends(line_emulator, friends)
    env = {**line_env, "LINERULES_LEASE_SECONDS": "2", "LINERULES_LINE_TIMEOUT": "3"}
    line_emulator.inject_timeout("push", count=len(friends), delay=60)
    old = processes(rules, db, env=env).started()
    old.post_events([follow(f) for f in friends])
    wait_until(lambda: len(line_emulator.requests_to("push")) == len(friends))
    old.proc.send_signal(signal.SIGSTOP)
    wait_until(lambda: rows(db, "SELECT expires_at FROM lease")[0]["expires_at"] < time.time())
    new = processes(rules, db, env=env).started()
    wait_until(lambda: backlog(db) == 0)
    sent_by_new = {r["id"]: r["request_id"] for r in rows(db)}
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    old.proc.send_signal(signal.SIGCONT)
    assert old.exit_code(timeout=30) == 1
    old.wait_for(r"lost the lease")
    old.wait_for(r"outbox \d+ to U\d+: \w+ not stored: the row is no longer this runner's")
    assert {r["id"]: r["request_id"] for r in rows(db)} == sent_by_new
    assert {r["status"] for r in rows(db)} == {"sent"}
    assert per_friend(line_emulator) == Counter({f: 1 for f in friends})
    assert rows(db, "SELECT owner FROM lease")[0]["owner"].endswith(f":{new.proc.pid}")
    new.proc.send_signal(signal.SIGTERM)
    assert new.exit_code() == 0


# ----------------------------------------------------------------------------- 10: deploys

TWO_RULES = """\
rule first
  when followed
  then send greeting

rule second
  when followed
  then wait 1d
  send thanks
"""


def open_in(db: Path, rule: str) -> Counter:
    return Counter(r["state"] for r in rows(db, "SELECT state FROM enrollments WHERE rule = ?", (rule,)))


def test_a_deploy_written_in_two_steps_is_reloaded_once_whole(tmp_path, processes):
    rules = write_rules(tmp_path / "rules", TWO_RULES)
    db = tmp_path / "deploy.db"
    runner = processes(rules, db).started()
    runner.post_events([follow(f"U{i}") for i in range(3)])
    wait_until(lambda: open_in(db, "second") == {"waiting": 3})
    # step 1 of the deploy writes a file that lacks `rule second` ...
    (rules / "main.rule").write_text(TWO_RULES.split("rule second")[0], encoding="utf-8")
    runner.wait_for(r"rule files changed; reloading once they are unchanged for 2 s")
    time.sleep(0.5)  # ... and the deploy tool writes the rest half a second later
    (rules / "main.rule").write_text(
        TWO_RULES + "\nrule third\n  when purchased\n  then send thanks\n", encoding="utf-8"
    )
    runner.wait_for(r"rules reloaded \(version \S+, 3 rules, rule files changed\)")
    assert open_in(db, "second") == {"waiting": 3}
    assert len([line for line in runner.lines if "rules reloaded" in line]) == 1
    assert runner.get("/healthz")[1]["last_reload"]["suspended"] == 0


def test_a_removed_rule_suspends_its_friends_and_they_resume_when_it_comes_back(tmp_path, processes):
    rules = write_rules(tmp_path / "rules", TWO_RULES)
    db = tmp_path / "suspend.db"
    runner = processes(rules, db, tick=30).started()
    runner.post_events([follow(f"U{i}") for i in range(3)])
    wait_until(lambda: open_in(db, "second") == {"waiting": 3})
    (rules / "main.rule").write_text(TWO_RULES.split("rule second")[0], encoding="utf-8")
    runner.proc.send_signal(signal.SIGHUP)
    runner.wait_for(
        r"reload: 0 friends in flight carried over to changed rules, 3 suspended "
        r"\(their rule is gone: second; they resume if it comes back within 60 min"
    )
    assert open_in(db, "second") == {"suspended": 3}
    status, health = runner.get("/healthz")
    assert health["suspended_enrollments"] == 3
    assert (health["last_reload"]["suspended"], health["last_reload"]["removed_rules"]) == (3, ["second"])
    (rules / "main.rule").write_text(TWO_RULES, encoding="utf-8")
    runner.proc.send_signal(signal.SIGHUP)
    runner.wait_for(r"reload: .* 3 resumed \(their rule is back\)")
    assert open_in(db, "second") == {"waiting": 3}
    assert runner.get("/healthz")[1]["suspended_enrollments"] == 0
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.exit_code() == 0
