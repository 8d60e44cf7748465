"""Crash-and-fault soak: the real runner process against the LINE emulator, on loopback only.

N friends follow (shop events) and each writes one keyword message (a signed webhook with a
reply token), so every friend is owed three messages: a personal welcome (a push), a shared
announcement (a multicast, sent to the friends who followed in the same tick) and an answer
(a free reply, or a push when its token is stale). Meanwhile the emulator injects 500, 503,
429 (``Retry-After: 1``), hanging connections and lost answers (the request delivered, the
answer dropped) on push, multicast and reply, and the runner is SIGKILLed at random moments
and started again at once. At the end every friend's inbox on the emulator is counted:
delivered once, twice (or more) or lost, per kind.

Bounded: at most ``--seconds`` of traffic, ``--kills`` kills, then at most ``--drain`` seconds
for the backlog to empty. Exit status 1 when anything was delivered twice or lost.

    python benchmarks/soak.py [--friends 120] [--kills 6] [--seconds 40] [--seed 7]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.testing.line_emulator import DEFAULT_CHANNEL_SECRET, run_in_thread, synthetic_user_id  # noqa: E402

SECRET = DEFAULT_CHANNEL_SECRET
API_TOKEN = "soak-token"
RULES = """\
rule welcome
  when followed
  then send greeting

rule news
  when followed
  then send news

rule answer
  when message "クーポン"
  reenter always
  then send coupon
"""
MESSAGES = """\
greeting: "ようこそ {{ friend.id }}さん"
news: "今週のおすすめはこちら"
coupon: "クーポンです: SOAK15"
"""
KINDS = {"push": "ようこそ", "multicast": "今週のおすすめ", "reply": "クーポンです"}
FAULT_ENDPOINTS = ("push", "multicast", "reply")


class Runner:
    """The runner as its own process (``python runner.py``); its log goes to a file."""

    def __init__(self, rules: Path, db: Path, env: dict[str, str], log: Path):
        self.log = log.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "runner.py",
                "--rules",
                str(rules),
                "--db",
                str(db),
                "--listen",
                "127.0.0.1:0",
                "--tick",
                "0.5",
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:  # type: ignore[union-attr]
                self.log.write(line)
                if not self.url and (m := re.search(r"listening on (http://[\d.]+:\d+)", line)):
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or not self.url:
            raise SystemExit(f"the runner did not start; see {log}")

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


def webhook(friend: str, token: str, n: int) -> tuple[bytes, dict[str, str]]:
    event = {
        "type": "message",
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": friend},
        "webhookEventId": f"01SOAK{n:08d}",
        "deliveryContext": {"isRedelivery": False},
        "replyToken": token,
        "message": {"type": "text", "id": f"m{n}", "text": "クーポン"},
    }
    body = json.dumps({"destination": "Ubot", "events": [event]}, ensure_ascii=False).encode()
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return body, {"Content-Type": "application/json", "x-line-signature": signature}


def follows(friends: list[str]) -> tuple[bytes, dict[str, str]]:
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    body = json.dumps([{"type": "follow", "friend": f, "at": at, "id": f"follow-{f}"} for f in friends]).encode()
    return body, {"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"}


def inject_random(emulator, rng: random.Random) -> str:
    endpoint = rng.choice(FAULT_ENDPOINTS)
    kind = rng.choice(("500", "503", "429", "timeout", "lost", "lost_hang"))
    if kind in ("500", "503"):
        emulator.inject(endpoint, int(kind))
    elif kind == "429":
        emulator.inject(endpoint, 429, headers={"Retry-After": "1"})
    elif kind == "timeout":
        emulator.inject_timeout(endpoint, delay=2.0)  # dropped unprocessed after 2 s
    elif kind == "lost":
        emulator.inject_lost_response(endpoint)  # delivered, answer dropped at once
    else:
        emulator.inject_lost_response(endpoint, delay=2.0)  # delivered, answer hangs, dropped
    return f"{kind}@{endpoint}"


def backlog(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        outbox = conn.execute("SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'held')").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM events WHERE processed_at IS NULL").fetchone()[0]
        return outbox, events
    except sqlite3.Error:
        return -1, -1
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--friends", type=int, default=120)
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs during the traffic")
    parser.add_argument("--seconds", type=float, default=40, help="seconds of traffic at most")
    parser.add_argument("--drain", type=float, default=120, help="seconds at most for the backlog to empty afterwards")
    parser.add_argument("--faults-per-second", type=float, default=4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    friends = [synthetic_user_id(i) for i in range(args.friends)]

    work = Path(tempfile.mkdtemp(prefix="linerules-soak-"))
    rules = work / "rules"
    rules.mkdir()
    (rules / "settings.yaml").write_text("timezone: Asia/Tokyo\n", encoding="utf-8")
    (rules / "messages.yaml").write_text(MESSAGES, encoding="utf-8")
    (rules / "main.rule").write_text(RULES, encoding="utf-8")
    db, log = work / "soak.db", work / "runner.log"
    faults: Counter[str] = Counter()
    kills = 0
    started = time.monotonic()

    with run_in_thread() as emulator:
        for f in friends:
            emulator.add_user(f, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LINE_", "LINERULES_"))}
        env.update(
            {
                "LINE_CHANNEL_ACCESS_TOKEN": emulator.access_token,
                "LINE_API_ENDPOINT": emulator.base_url,
                "LINE_CHANNEL_SECRET": SECRET,
                "LINERULES_API_TOKEN": API_TOKEN,
            }
        )
        runner = Runner(rules, db, env, log)
        # the traffic: follows in groups, each friend's message a moment after its follow
        plan: list[tuple[str, list[str]]] = []
        for i in range(0, len(friends), 10):
            group = friends[i : i + 10]
            plan.append(("follow", group))
            plan.append(("message", group))
        step = max(0.05, (args.seconds * 0.6) / max(1, len(plan)))
        kill_at = sorted(rng.uniform(1.0, args.seconds * 0.8) for _ in range(args.kills))
        tokens: dict[str, str] = {}
        n = 0
        deadline = started + args.seconds
        # faults and kills for --seconds; what is left of the traffic is posted afterwards
        while (plan or kill_at) and time.monotonic() < deadline + args.drain:
            now = time.monotonic() - started
            in_time = time.monotonic() < deadline
            if kill_at and (now >= kill_at[0] or not in_time):
                if not in_time:
                    kill_at.clear()
                    continue
                kill_at.pop(0)
                runner.kill()
                kills += 1
                runner = Runner(rules, db, env, log)
            expected = args.faults_per_second * step if in_time else 0
            for _ in range(int(expected) + (rng.random() < expected % 1)):
                faults[inject_random(emulator, rng)] += 1
            if plan:
                kind, group = plan[0]
                if kind == "follow":
                    body, headers = follows(group)
                    delivered = runner.post("/events", body, headers)
                else:
                    delivered = True
                    for f in group:
                        if f not in tokens:
                            tokens[f] = emulator.issue_reply_token(f)
                        n += 1
                        body, headers = webhook(f, tokens[f], friends.index(f))
                        delivered = runner.post("/callback", body, headers) and delivered
                if delivered:  # a post the runner did not answer is posted again (deduped)
                    plan.pop(0)
            time.sleep(step)
        traffic = time.monotonic() - started
        # drain: no new faults; everything owed must arrive
        drain_until = time.monotonic() + args.drain
        while time.monotonic() < drain_until:
            outbox, events = backlog(db)
            if outbox == 0 and events == 0 and not plan:
                break
            time.sleep(0.5)
        drained = time.monotonic() - started
        code = runner.stop()
        delivered = list(emulator.delivered)
        requests = Counter((r.endpoint, r.status) for r in emulator.requests)

    counts = {kind: Counter() for kind in KINDS}
    via = Counter()
    for d in delivered:
        for msg in d.messages:
            for kind, marker in KINDS.items():
                if marker in msg.get("text", ""):
                    counts[kind][d.user_id] += 1
                    via[(kind, d.endpoint)] += 1
    print(
        f"soak: {len(friends)} friends, {kills} SIGKILLs, {sum(faults.values())} injected faults "
        f"({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))})"
    )
    print(f"traffic {traffic:.0f} s, all delivered after {drained:.0f} s; runner exit {code}; log {log}")
    print(f"{'kind':<10} {'once':>6} {'twice+':>7} {'lost':>6}  delivered via")
    bad = 0
    for kind in KINDS:
        once = sum(1 for f in friends if counts[kind][f] == 1)
        twice = sum(1 for f in friends if counts[kind][f] > 1)
        lost = sum(1 for f in friends if counts[kind][f] == 0)
        bad += twice + lost
        ways = ", ".join(f"{ep} {n}" for (k, ep), n in sorted(via.items()) if k == kind)
        print(f"{kind:<10} {once:>6} {twice:>7} {lost:>6}  {ways}")
    answered = Counter(status for (ep, status), n in requests.items() for _ in range(n) if ep in FAULT_ENDPOINTS)
    print(
        "LINE answers (push, multicast, reply): "
        + ", ".join(
            f"{'no answer' if s is None else s} {n}" for s, n in sorted(answered.items(), key=lambda kv: str(kv[0]))
        )
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
