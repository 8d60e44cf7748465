"""Stage 1 of a tick: the applied events with ``at <= now``, in (at, seq) order.

Each event changes the friend's state (follow, block, activity, attributes, tags; shop events
through :mod:`engine.runtime.identity`), fires the event triggers and ``wait for`` steps it matches
(:meth:`engine.stages.entry.Entry.fire`) and re-checks the friend's ``exit when``. Enrollments
it enters or resumes are due now: the walk (stage 4) takes them.
"""

from __future__ import annotations

import logging

from engine.line.limits import REPLY_TOKEN_TTL
from engine.runtime import identity
from engine.runtime.store import EventRow, is_store_fault
from engine.stages.context import Context, TickResult
from engine.stages.entry import ANSWERED_TYPES, Cause, Entry

log = logging.getLogger("linerules.engine")

#: Events processed per transaction.
EVENT_CHUNK = 500
#: Seconds a reply token is used after its webhook arrived: LINE's token life less a margin
#: for the tick and the request.
REPLY_SECONDS = int(REPLY_TOKEN_TTL) - 10
#: Other webhook events whose reply token is used when their sends go out at once.
REPLIED_TYPES = ("follow",)


class EventStage:
    """Processes pending events. ``follow_grace`` (seconds, 0 = none) holds a ``follow`` until
    it was received that long ago, and the friend's later events with it."""

    def __init__(self, ctx: Context, entry: Entry, follow_grace: int = 0):
        self.ctx = ctx
        self.entry = entry
        self.follow_grace = follow_grace

    def run(self, now: int, result: TickResult) -> None:
        s = self.ctx.store
        held_after = now - self.follow_grace if self.follow_grace else None
        while True:
            rows = s.pending_events(now, EVENT_CHUNK, held_after=held_after)
            if not rows:
                return
            with s.transaction():
                applied: list[int] = []
                for ev in rows:
                    # one event that fails for its friend is undone alone and set aside with the
                    # reason; the others of the chunk (and every later tick) go on (SPEC §4)
                    try:
                        with s.savepoint():
                            self.apply(ev, now, result)
                    except Exception as exc:
                        if is_store_fault(exc) or isinstance(exc, (OSError, MemoryError)):
                            raise  # the database or the machine failed, not this event: the
                            # chunk is rolled back and processed again at the next tick
                        reason = f"{type(exc).__name__}: {exc}"[:1000]
                        log.error(
                            "event %d (%s of friend %s) not processed, set aside: %s",
                            ev.seq,
                            ev.type,
                            ev.friend,
                            reason,
                        )
                        s.mark_failed(ev.seq, now, reason)
                        result.failed += 1
                        continue
                    applied.append(ev.seq)
                    result.events += 1
                s.mark_processed(applied, now)
            if len(rows) < EVENT_CHUNK:
                return  # every pending event was read (one stored meanwhile waits for the next tick)

    def next_moment(self, after: int) -> int | None:
        """When a follow held by the grace (and the friend's later events) may go on."""
        if not self.follow_grace:
            return None
        held = self.ctx.store.first_held_follow(after - self.follow_grace)
        return None if held is None else held + self.follow_grace

    def apply(self, ev: EventRow, now: int, result: TickResult) -> None:
        """One event: the friend's state, then the triggers it fires, then ``exit when``."""
        s, friend, at, data = self.ctx.store, ev.friend, ev.at, ev.data
        # links, orders and refunds, events naming the shop's customer (engine/runtime/identity.py)
        shop = identity.handle(s, ev)
        if shop is not None:
            if shop.friend is None:
                return  # kept for a customer not linked yet; counts once linked
            friend, data = shop.friend, shop.data
        if ev.type == "follow":
            s.follow(friend, at, data.get("source"))  # seen, too
        else:
            s.touch(friend, at, line=ev.type in ANSWERED_TYPES)
        if ev.type == "unfollow":
            s.unfollow(friend, at, now)
        elif ev.type in ("cart", "view"):
            s.track(friend, ev.type, data.get("product"), at, seq=ev.seq)
        elif ev.type == "click":
            s.click(friend, at, data.get("rule"), data.get("message"), data.get("url"), seq=ev.seq)
        elif ev.type == "attributes":
            s.set_attributes(friend, data.get("set") or {})
        elif ev.type == "tag":
            new = s.add_tags(friend, data.get("add") or [], at)
            s.remove_tags(friend, data.get("remove") or [])
            data = {**data, "add": new}
        cause = None
        if ev.type in ANSWERED_TYPES:
            cause = Cause(ev.seq, ev.reply_token, ev.received_at + REPLY_SECONDS if ev.reply_token else None)
        elif ev.type in REPLIED_TYPES and ev.reply_token:
            # not an answer (window and cap apply), but a welcome sent at once goes as a free reply
            cause = Cause(None, ev.reply_token, ev.received_at + REPLY_SECONDS)
        for linked, linked_data in shop.linked if shop is not None else ():
            self.entry.fire(identity.LINKED, linked_data, linked, now, at, cause, result, event_seq=ev.seq)
        if shop is None or shop.fire:
            self.entry.fire(ev.type, data, friend, now, at, cause, result, event_seq=ev.seq)
        result.exited += self.entry.check_exits(friend, now)
