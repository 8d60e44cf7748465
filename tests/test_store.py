"""The SQLite store: migrations, atomic event batches, dedupe, outbox lifecycle, lease, clicks."""

from __future__ import annotations

import sqlite3
import time
import uuid

import pytest

from engine.runtime.store import MIGRATIONS, Delivery, Store
from enginekit import ev


@pytest.fixture
def store(fresh_db_path):
    s = Store(str(fresh_db_path))
    yield s
    s.close()


def test_migrates_an_empty_file_and_reopens_without_reapplying(fresh_db_path):
    s = Store(str(fresh_db_path))
    assert s.schema_version == len(MIGRATIONS)
    if not s.pg:  # SQLite's write-ahead log (PostgreSQL has its own)
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    s.close()
    again = Store(str(fresh_db_path))
    assert again.schema_version == len(MIGRATIONS)
    assert again.friend("U1")["id"] == "U1"
    again.close()


def test_batch_creates_friends_and_dedupes_by_order_id_and_event_id(store):
    batch = [
        ev("purchase", "U1", "2026-11-01 10:00", order_id="A-1", amount=5400),
        ev("purchase", "U1", "2026-11-01 10:05", order_id="A-1", amount=5400),
        ev("shipped", "U2", "2026-11-01 11:00", id="s-1"),
    ]
    first = store.apply_events(batch)
    assert (first.applied, first.duplicates) == (2, 1)
    again = store.apply_events(
        [ev("shipped", "U2", "2026-11-01 11:00", id="s-1"), ev("message", "U2", "2026-11-01 11:00", text="hi")]
    )
    assert (again.applied, again.duplicates) == (1, 1)
    assert store.friend("U2") is not None and store.friend("U3") is None
    pending = store.pending_events(10**10)
    assert [(e.type, e.friend) for e in pending] == [("purchase", "U1"), ("shipped", "U2"), ("message", "U2")]


def test_a_failing_batch_leaves_nothing_behind(store):
    bad = ev("follow", "U9", "2026-11-01 10:00")
    object.__setattr__(bad, "data", {"source": object()})  # not JSON-serialisable: fails mid-batch
    with pytest.raises(TypeError):
        store.apply_events([ev("follow", "U1", "2026-11-01 10:00"), bad])
    assert store.friend("U1") is None
    assert store.pending_events(10**10) == []


def test_rolled_back_transaction_leaves_no_half_state(store):
    store.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_tags("U1", ["vip"], 1)
            store.add_outbox(
                kind="push",
                recipients=["U1"],
                payload=[{"type": "text", "text": "x"}],
                messages=["x"],
                rule="r",
                not_before=0,
                now=0,
            )
            raise RuntimeError("crash between the outbox row and the enrollment update")
    assert store.friend("U1")["tags"] == []
    assert store.outbox() == []


def test_a_batch_logs_each_blocks_changes_at_its_end_and_rolls_back_whole(store):
    """``Store.batch`` (simulate's one transaction per stop): a block directly inside it logs
    its friends' changes at its end, as its own commit would have, so a condition check later in
    the same stop sees them; a block nested deeper logs with its parent; a change outside any
    block is logged at once; a failure undoes the whole batch."""

    def logged() -> list[str]:
        return [r[0] for r in store.conn.execute("SELECT friend FROM friend_changes ORDER BY n")]

    start = logged()
    with store.batch():
        with store.transaction():
            store.changed("U1")
            assert logged() == start  # not before the block ends
        assert logged() == [*start, "U1"]
        store.changed("U2")  # between the blocks: at once
        assert logged() == [*start, "U1", "U2"]
        with store.transaction():
            with store.transaction():
                store.changed("U3")
            assert logged() == [*start, "U1", "U2"]  # with the outer block, not the inner
        assert logged() == [*start, "U1", "U2", "U3"]
    assert logged() == [*start, "U1", "U2", "U3"]
    with pytest.raises(RuntimeError):
        with store.batch():
            with store.transaction():
                store.changed("U4")
            store.apply_events([ev("follow", "U5", "2026-11-01 10:00")], received_at=0)
            raise RuntimeError("the stop fails")
    assert logged() == [*start, "U1", "U2", "U3"]
    assert store.friend("U5") is None
    with store.transaction():  # an ordinary transaction after a batch logs at its commit only
        with store.transaction():
            store.changed("U6")
        assert logged() == [*start, "U1", "U2", "U3"]
    assert logged() == [*start, "U1", "U2", "U3", "U6"]


def test_outbox_claim_finish_hold(store):
    with store.transaction():
        first = store.add_outbox(
            kind="push",
            recipients=["U1"],
            payload=[{"type": "text", "text": "a"}],
            messages=["a"],
            rule="r",
            not_before=100,
            now=50,
        )
        later = store.add_outbox(
            kind="multicast", recipients=["U1", "U2"], payload=[], messages=["b"], rule="r", not_before=200, now=50
        )
        store.add_deliveries([Delivery("U1", "r", "send a", 1, first, ["a"], "queued", None, None, 100, "d", 1)])
    assert store.claim_outbox(99, 10) == []
    rows = store.claim_outbox(100, 10)
    assert [r["id"] for r in rows] == [first] and rows[0]["friend"] == "U1" and rows[0]["attempts"] == 1
    assert store.claim_outbox(120, 10) == []  # claimed rows are not handed out twice
    assert store.claim_outbox(161, 10)[0]["retry_key"] == rows[0]["retry_key"]  # reclaimed, same key
    store.finish_outbox(first, "sent", request_id="req-1", at=170)
    assert store.outbox("sent")[0]["request_id"] == "req-1"
    status = store.conn.execute("SELECT status, at FROM deliveries WHERE outbox_id = ?", (first,)).fetchone()
    assert tuple(status) == ("sent", 170)
    store.hold_outbox(later, 500, error="429")
    assert store.claim_outbox(300, 10) == [] and store.outbox_backlog() == 1
    assert store.claim_outbox(500, 10)[0]["recipients"] == ["U1", "U2"]
    assert store.next_outbox_at(0) == 500


def test_replies_are_claimed_ahead_of_a_push_backlog(store):
    """A reply token lives about a minute: a backlog of older pushes must not make it wait."""
    with store.transaction():
        backlog = [
            store.add_outbox(
                kind="push", recipients=[f"U{i}"], payload=[], messages=["a"], rule="r", not_before=10 + i, now=0
            )
            for i in range(5)
        ]
        reply = store.add_outbox(
            kind="reply",
            recipients=["U9"],
            payload=[],
            messages=["b"],
            rule="r",
            not_before=100,
            now=100,
            reply_token="rt",
            reply_deadline=150,
        )
    first = store.claim_outbox(100, 3)
    assert [r["id"] for r in first] == [reply, backlog[0], backlog[1]]
    assert [r["id"] for r in store.claim_outbox(100, 10)] == backlog[2:]


def test_retry_keys_are_unique_uuids(store):
    with store.transaction():
        ids = [
            store.add_outbox(kind="push", recipients=["U1"], payload=[], messages=[], rule=None, not_before=0, now=0)
            for _ in range(3)
        ]
    keys = {r["retry_key"] for r in store.outbox()}
    assert len(ids) == len(keys) == 3 and all(len(k) == 36 for k in keys)
    # UUIDs of version 7 (time first), in the order of the rows of one insert, as the SQL
    # function of set-based sends makes them too
    with store.transaction():
        many = store.add_outbox_rows([("push", [f"U{i}"], [], [], None, 0, None, None) for i in range(500)], 0)
    batch = [r["retry_key"] for r in store.outbox() if r["id"] in set(many)]
    batch.append(store.conn.execute("SELECT lr_retry_key()").fetchone()[0])
    assert len(set(batch)) == 501 and batch == sorted(batch)
    assert {(uuid.UUID(k).version, uuid.UUID(k).variant, str(uuid.UUID(k)) == k) for k in keys | set(batch)} == {
        (7, uuid.RFC_4122, True)
    }
    assert all(abs((uuid.UUID(k).int >> 80) - time.time() * 1000) < 60_000 for k in batch)
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute(
            "UPDATE outbox SET retry_key = (SELECT retry_key FROM outbox WHERE id = ?) WHERE id = ?", (ids[0], ids[1])
        )


def test_lease_one_owner_at_a_time(store):
    assert store.acquire_lease("a", 100, 30)
    assert not store.acquire_lease("b", 110, 30)
    assert store.renew_lease("a", 120, 30) and store.lease_holder() == "a"
    assert store.acquire_lease("b", 151, 30)  # expired: taken over
    assert not store.renew_lease("a", 152, 30)
    store.release_lease("b")
    assert store.lease_holder() is None


def test_source_profile_and_clicks(store):
    store.set_source("U1", "qr = shipping", now=10)
    store.set_profile("U1", display_name="花子", language="ja")
    friend = store.friend("U1")
    assert (friend["source"], friend["display_name"], friend["language"]) == ("qr=shipping", "花子", "ja")
    with store.transaction():
        token = store.link_token("U1", "welcome", "coupon15", "https://shop.example.jp/?utm_source=line", 10)
    assert store.record_click(token, 20) == "https://shop.example.jp/?utm_source=line"
    assert store.record_click("unknown", 20) is None
    assert store.record_click(friend="U1", rule="welcome", message="m", url="https://x.example", at=30)
    clicks = store.conn.execute("SELECT friend, rule, at FROM activity WHERE kind = 'click' ORDER BY at").fetchall()
    assert [tuple(c) for c in clicks] == [("U1", "welcome", 20), ("U1", "welcome", 30)]


def test_health_reports_counts(store):
    store.apply_events([ev("follow", "U1", "2026-11-01 10:00")], received_at=0)
    health = store.health()
    assert health["friends"] == 0 and health["pending_events"] == 1 and health["outbox_backlog"] == 0
    with store.transaction():
        store.follow("U1", 10, None)
        store.ensure_friend("U2", 10)  # known from a shop event only: not a friend
    assert store.health()["friends"] == 1
    with store.transaction():
        store.unfollow("U1", 20)
    assert store.health()["friends"] == 0


def test_a_new_process_reclaims_rows_left_in_flight(fresh_db_path):
    first = Store(str(fresh_db_path))
    with first.transaction():
        first.add_outbox(kind="push", recipients=["U1"], payload=[], messages=["a"], rule="r", not_before=0, now=0)
    claimed = first.claim_outbox(10, 10)
    assert first.claim_outbox(11, 10) == []
    first.close()  # killed before the outcome was stored
    second = Store(str(fresh_db_path))
    again = second.claim_outbox(12, 10)
    assert [r["retry_key"] for r in again] == [claimed[0]["retry_key"]] and again[0]["attempts"] == 2
    second.close()


def test_a_commit_that_fails_gives_the_writers_turn_back_once(tmp_path):
    """A yielding writer (the engine's tick) whose COMMIT fails is rolled back; the turn it held
    is given back once, so the other writers of the process do not wait for it afterwards."""
    import time

    from engine.runtime.store import TURN_WAIT

    path = str(tmp_path / "turns.db")
    tick, webhook = Store(path, yields=True), Store(path)
    try:
        tick.conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        tick.conn.execute("CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
        with pytest.raises(sqlite3.IntegrityError):
            with tick.transaction():
                tick.conn.execute("INSERT INTO child VALUES (1)")  # fails only at COMMIT
        started = time.monotonic()
        for _ in range(3):
            with webhook.transaction():
                webhook.set_meta("probe", "1")
            with tick.transaction():
                tick.set_meta("probe", "2")
        assert time.monotonic() - started < TURN_WAIT  # nobody waited for a turn never given back
    finally:
        tick.close()
        webhook.close()


def test_members_claiming_at_once_never_take_the_same_row(pg_url):
    # PostgreSQL: three members claim from one schema at the same moment, without the schema's
    # write lock (FOR UPDATE SKIP LOCKED): every row goes to exactly one of them, marked with
    # its epoch, and a row a live member claimed is not handed to another
    import threading
    import time

    from engine.runtime.store import OutboxRow

    stores = [Store(pg_url) for _ in range(3)]
    try:
        now = int(time.time())
        text = [{"type": "text", "text": "hi"}]
        stores[0].add_outbox_rows([OutboxRow("push", [f"U{i}"], text, ["m"], "r", now) for i in range(1200)], now)
        leases = [(f"m{k}", s.join_cluster(f"m{k}", now, 30), 30) for k, s in enumerate(stores)]
        claimed: list[list[int]] = [[] for _ in stores]
        start = threading.Barrier(len(stores))

        def claim(k: int) -> None:
            start.wait()
            while rows := stores[k].claim_outbox(now, 30, reply_limit=0, other_limit=30, lease=leases[k]):
                claimed[k] += [r["id"] for r in rows]
                assert {r["claim_epoch"] for r in rows} == {leases[k][1]}

        threads = [threading.Thread(target=claim, args=(k,)) for k in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [i for c in claimed for i in c]
        assert len(ids) == len(set(ids)) == 1200
        assert sum(1 for c in claimed if c) >= 2  # they claimed at the same time
        epochs = dict(stores[0].conn.execute("SELECT id, claim_epoch FROM outbox").fetchall())
        assert all(epochs[i] == leases[k][1] for k, c in enumerate(claimed) for i in c)
        # another member's rows stay its own while it lives: a new member finds nothing to claim
        late = Store(pg_url)
        try:
            lease = ("late", late.join_cluster("late", now, 30), 30)
            assert late.claim_outbox(now, 100, lease=lease) == []
        finally:
            late.close()
    finally:
        for s in stores:
            s.close()


def test_a_member_whose_lease_row_is_gone_claims_nothing_and_is_told(pg_url):
    # PostgreSQL: the lease is checked inside the claim statement; a member whose lease row no
    # longer names its epoch claims no row, due ones included, and gets LeaseLost
    import time

    from engine.runtime.store import LeaseLost, OutboxRow

    store = Store(pg_url)
    try:
        now = int(time.time())
        store.add_outbox_rows([OutboxRow("push", ["U1"], [{"type": "text", "text": "hi"}], ["m"], "r", now)], now)
        epoch = store.join_cluster("m0", now, 30)
        store.conn.execute("UPDATE lease SET epoch = ? WHERE name = ?", (epoch + 100, store.dispatch_lease("m0")))
        with pytest.raises(LeaseLost):
            store.claim_outbox(now, 10, lease=("m0", epoch, 30))
        assert store.conn.execute("SELECT claimed_at, claim_epoch FROM outbox").fetchall() == [(None, None)]
    finally:
        store.close()


@pytest.mark.parametrize(
    "text",
    ['{"points":12,"rank":"gold"}', ' {"a": [1, 2.5, null]} ', '{"名前": "花子🌸", "n": 1e400}', "{}\n", "[1]", '"x"'],
)
def test_attributes_are_decoded_as_json_loads_decodes_them(text):
    import json

    from engine.runtime.store import _loads

    assert _loads(text) == json.loads(text) and type(_loads(text)) is type(json.loads(text))


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "nope"])
def test_attributes_that_are_not_json_fail_as_json_loads_fails(text):
    import json

    from engine.runtime.store import _loads

    with pytest.raises(json.JSONDecodeError) as ours:
        _loads(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)
