"""Condition triggers checked by what changed (docs/engine.md "Condition triggers"): after its
first check, a rule looks only at the friends something may have changed for. Whatever
happens between two checks, it must enter exactly whom a check of every friend would."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.interpreter import Engine
from engine.runtime.store import Store
from enginekit import at, compile_rules, ev

RULES = """
rule lapsed
  when last purchase older than 5d
  reenter after 3d
  then send a

rule ranked
  when in segment big
  unless tagged done
  then
    send b
    tag done

rule fresh
  when friend for 2d and not purchased within 3d
  reenter always
  then
    wait 1d
    send c

rule carted
  when carted within 2d and spent within 4d >= 100
  reenter after 1d
  then send d

rule rich
  when top 40% by total_spent and not tagged rich
  then
    send e
    tag rich

rule fan
  when score >= 3 or followed via qr=shop
  reenter always
  exit when score < 3
  then
    wait 2d
    send f

rule middle
  when top 50% by score and not top 20% by score
  reenter after 1d
  then
    wait 1d
    send g

rule clicker
  when clicked within 3d
  reenter after 1d
  then send a

segment big: top 30% by spent within 6d or orders >= 3
"""

FRIENDS = [f"U{i}" for i in range(10)]
START = at("2026-11-01 09:00")

follow = st.tuples(st.just("follow"), st.sampled_from(FRIENDS), st.sampled_from([None, "qr=shop", "ad=x"]))
purchase = st.tuples(st.just("purchase"), st.sampled_from(FRIENDS), st.integers(1, 400))
event = st.one_of(
    follow,
    follow,
    purchase,
    st.tuples(st.just("unfollow"), st.sampled_from(FRIENDS), st.none()),
    st.tuples(st.just("purchase"), st.sampled_from(FRIENDS), st.integers(1, 400)),
    st.tuples(st.just("cart"), st.sampled_from(FRIENDS), st.none()),
    st.tuples(st.just("tag"), st.sampled_from(FRIENDS), st.sampled_from(["done", "rich", "x"])),
    st.tuples(st.just("untag"), st.sampled_from(FRIENDS), st.sampled_from(["done", "rich", "x"])),
    st.tuples(st.just("attributes"), st.sampled_from(FRIENDS), st.integers(0, 5)),
    st.tuples(st.just("message"), st.sampled_from(FRIENDS), st.none()),
    st.tuples(st.just("click"), st.sampled_from(FRIENDS), st.none()),
    st.tuples(st.just("refund"), st.sampled_from(FRIENDS), st.integers(1, 30)),
)
#: hours to the next check, and the events in between (at its start)
steps = st.lists(st.tuples(st.integers(1, 60), st.lists(event, max_size=6)), min_size=1, max_size=16)


def _event(kind: str, friend: str, arg, when: dt.datetime, n: int):
    stamp = when.strftime("%Y-%m-%d %H:%M")
    if kind == "follow":
        return ev("follow", friend, stamp, **({"source": arg} if arg else {}))
    if kind == "unfollow":
        return ev("unfollow", friend, stamp)
    if kind == "purchase":
        return ev("purchase", friend, stamp, order_id=f"O{n}", amount=arg, items=[])
    if kind == "cart":
        return ev("cart", friend, stamp, product="SKU1")
    if kind == "tag":
        return ev("tag", friend, stamp, add=[arg], remove=[])
    if kind == "untag":
        return ev("tag", friend, stamp, add=[], remove=[arg])
    if kind == "message":  # a message from someone with no follow on record makes them a friend
        return ev("message", friend, stamp, text="hello")
    if kind == "click":
        return ev("click", friend, stamp, rule="clicker", url="https://shop.example.jp/")
    if kind == "refund":  # of an earlier order (unknown orders are kept for later)
        return ev("refund", friend, stamp, order_id=f"O{arg}", amount=50)
    return ev("attributes", friend, stamp, set={"score": arg})


def _entries(store: Store) -> list[tuple]:
    return sorted(
        tuple(r)
        for r in store.conn.execute(
            "SELECT friend, rule, entered_at, holdout, state, finished_at FROM enrollments"
        ).fetchall()
    )


def _replay(timeline, db_a: str, db_b: str) -> None:
    # most friends follow and buy at first, so that later follows and purchases move rankings
    opening = [("follow", f, None) for f in FRIENDS[:7]] + [("purchase", f, 10 * i) for i, f in enumerate(FRIENDS[:7])]
    timeline = [(1, opening), *timeline]
    project = compile_rules(RULES)
    stores = [Store(db_a), Store(db_b)]
    engines = [Engine(project, s, clock=lambda: START) for s in stores]
    engines[1].conditions.incremental = False
    now, n = START, 0
    try:
        for hours, events in timeline:
            batch = []
            for kind, friend, arg in events:
                n += 1
                batch.append(_event(kind, friend, arg, now, n))
            for store, engine in zip(stores, engines, strict=True):
                if batch:
                    store.apply_events(batch, received_at=0)
                engine.tick(now)
            assert _entries(stores[0]) == _entries(stores[1]), f"at {now}"
            now += dt.timedelta(hours=hours)
        for engine in engines:
            engine.tick(now)
        assert _entries(stores[0]) == _entries(stores[1])
    finally:
        for s in stores:
            s.close()


def test_checking_what_changed_enters_whom_checking_everyone_would(backend, tmp_path):
    # each example makes two databases: on PostgreSQL two schemas, so fewer examples there
    @settings(max_examples=6 if backend.pg else 40, deadline=None)
    @given(timeline=steps)
    def replay(timeline):
        if backend.pg:
            _replay(timeline, backend.new_db(), backend.new_db())
        else:
            name = uuid.uuid4().hex
            _replay(timeline, str(tmp_path / f"{name}-a.db"), str(tmp_path / f"{name}-b.db"))

    replay()


def test_a_quiet_check_reads_only_the_changed_friends(backend, tmp_path):
    """After the first check, a check reads the friends changed since, not every friend."""
    project = compile_rules(RULES)
    store = Store(backend.new_db() if backend.pg else str(tmp_path / "q.db"))
    engine = Engine(project, store, clock=lambda: START)
    store.apply_events(
        [ev("follow", f"F{i}", "2026-11-01 09:00") for i in range(300)]
        + [ev("purchase", f"F{i}", "2026-11-01 09:00", order_id=f"A{i}", amount=i + 1, items=[]) for i in range(300)],
        received_at=0,
    )
    engine.tick(START)
    engine.tick(at("2026-11-01 09:30"))  # looks at the friends the first check's tag steps changed
    first = _entries(store)
    assert {r[1] for r in first} >= {"ranked", "rich"}
    store.apply_events([ev("purchase", "F3", "2026-11-01 10:00", order_id="B3", amount=5000, items=[])], received_at=0)
    looked: list[int] = []
    fill = store.condition_candidates

    def counting(seen, queries, params):
        count = fill(seen, queries, params)
        looked.append(count)
        return count

    store.condition_candidates = counting
    engine.tick(at("2026-11-01 10:00"))
    assert looked and max(looked) <= 3, looked
    # F3 is now the biggest spender: it enters both rankings' rules, nobody else does
    assert {(r[0], r[1]) for r in set(_entries(store)) - set(first)} == {("F3", "ranked"), ("F3", "rich")}
    store.close()


ranked_friends = st.lists(
    st.tuples(
        st.booleans(),  # a current friend (else blocked)
        st.one_of(st.none(), st.integers(-3, 3), st.just("text")),  # the attribute score
        st.lists(st.sampled_from([0, 50, 100, 250]), max_size=3),  # orders in the window
        st.integers(0, 2),  # orders before it
    ),
    max_size=25,
)


def test_a_ranking_by_threshold_keeps_whom_cume_dist_keeps(backend, tmp_path):
    """`top N% by M` of a condition trigger (a kept value against a threshold found through an
    index) keeps exactly the friends `CUME_DIST() <= N%` keeps, ties, zeros, negative and
    missing values, and blocked friends included."""
    from engine.language import ir
    from engine.runtime import sqlcond

    now = 400 * 86400
    measures = [ir.Measure("score"), ir.Measure("spent", 30 * 86400), ir.Measure("total_spent"), ir.Measure("orders")]
    store = Store(backend.new_db() if backend.pg else str(tmp_path / "rank.db"))

    @settings(max_examples=15 if backend.pg else 60, deadline=None)
    @given(friends=ranked_friends, percent=st.sampled_from([0, 1, 10, 20, 30, 33.3, 50, 66.7, 99, 100]))
    def check(friends, percent):
        c = store.conn
        for table in ("friends", "activity", "measure_values"):
            c.execute(f"DELETE FROM {table}")
        for i, (current, score, recent, old) in enumerate(friends):
            attributes = (
                "{}" if score is None else f'{{"score": {score if score != "text" else chr(34) + "x" + chr(34)}}}'
            )
            amounts = recent + [100] * old
            c.execute(
                "INSERT INTO friends(id, followed_at, blocked_at, attributes, orders, total_spent, created_at) "
                "VALUES (?, 1, ?, ?, ?, ?, 0)",
                (f"F{i}", None if current else 2, attributes, len(amounts), float(sum(amounts))),
            )
            for k, amount in enumerate(amounts):
                when = now - 86400 * (1 + k) if k < len(recent) else now - 90 * 86400
                c.execute(
                    "INSERT INTO activity(friend, kind, amount, at) VALUES (?, 'order', ?, ?)", (f"F{i}", amount, when)
                )
        dialect = "postgresql" if store.pg else "sqlite"
        for m in measures:
            top = ir.Top(percent, m)
            window = sqlcond.CondCompiler({}, with_enrollment=False, dialect=dialect).compile(top)
            ranked: list[sqlcond.Ranking] = []
            compiler = sqlcond.CondCompiler({}, with_enrollment=False, dialect=dialect, ranked=ranked)
            kept = compiler.compile(top)
            key = ranked[0].key
            c.execute("DELETE FROM measure_values")
            fill = sqlcond.measure_fill(m, dialect, some=False)
            c.execute(fill.sql, {**fill.params, "key": key, "now": now})
            threshold = store.measure_threshold(key, ranked[0].share)

            def who(compiled, extra):
                sql = f"SELECT f.id FROM friends f WHERE {sqlcond.CURRENT} AND {compiled.sql}"
                return {r[0] for r in c.execute(sql, {**compiled.params, "now": now, **extra})}

            assert who(kept, {ranked[0].param: threshold}) == who(window, {}), (m, percent, threshold)

    try:
        check()
    finally:
        store.close()
