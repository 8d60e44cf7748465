"""Entering rules: which triggers an event matches, who may enter, and the enrollment made.

Used by every stage that enrols friends: events (event triggers, ``wait for``), time and
condition triggers (set-based, :meth:`Entry.audience`) and the walk (``tag`` and ``start``
steps). A :class:`Walker` is one enrollment on its way through its steps in this tick.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from engine.language import ir
from engine.runtime import sqlcond
from engine.runtime.store import Placement, bucket
from engine.stages.context import Context, TickResult

#: Event types that are a friend's own words: sends they cause are answers (no window, no cap).
ANSWERED_TYPES = ("message", "postback")


@dataclass(slots=True)
class Cause:
    """The event an enrollment answers or replies to: its seq (None: a follow, whose welcome
    may use the reply token but is no answer), reply token and the token's deadline."""

    seq: int | None
    reply_token: str | None
    reply_deadline: int | None


@dataclass(slots=True)
class Walker:
    """One enrollment moving through its steps in this tick."""

    id: int
    friend: str
    rule: str
    pos: int
    entered_at: int
    due_at: int
    variant: str | None
    holdout: bool
    occurrence: str | None
    cause_seq: int | None
    reply_token: str | None
    reply_deadline: int | None
    event_seq: int | None = None
    buffer: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    #: when the first send step of ``buffer`` ran in the walk (the order of its intent)
    first_send: int = 0
    answered: bool = False
    #: the walk's write count (:attr:`engine.stages.walk.Walk.writes`) when ``exit when`` last
    #: held not for this walker; -1: not checked in this walk
    stays: int = -1


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def matches(trig: ir.EventTrigger, event_type: str, data: dict, source: str | None) -> bool:
    """Whether an event (its type and fields; the friend's add source) fires ``trig``."""
    if getattr(trig, "event_type", None) != event_type:
        return False
    if isinstance(trig, ir.Followed):
        if not trig.via:
            return True
        pairs = set((source or "").split(","))
        return any(f"{k}={v}" in pairs for k, v in trig.via)
    if isinstance(trig, ir.MessageTrigger):
        text = _norm(data.get("text") or "")
        keys = [_norm(k) for k in trig.keywords]
        return any(text == k for k in keys) if trig.exact else any(k in text for k in keys)
    if isinstance(trig, ir.PostbackTrigger):
        got = dict(parse_qsl(data.get("data") or "", keep_blank_values=True))
        return all(got.get(k) == v for k, v in trig.pairs)
    if isinstance(trig, ir.PurchasedTrigger):
        if not (trig.product or trig.category):
            return True
        return any(
            (trig.product is None or item.get("product") == trig.product)
            and (trig.category is None or item.get("category") == trig.category)
            for item in data.get("items") or []
        )
    if isinstance(trig, (ir.CartedTrigger, ir.ViewedTrigger)):
        return trig.product is None or data.get("product") == trig.product
    if isinstance(trig, ir.TaggedTrigger):
        return trig.name in (data.get("add") or [])
    if isinstance(trig, ir.CustomEventTrigger):
        return all(k in data and field_matches(data[k], v) for k, v in trig.pairs)
    return True  # Unfollowed, Linked


def field_matches(value: Any, written: str) -> bool:
    """Whether a custom event's field ``value`` (as JSON gave it) is the ``written`` value of
    ``event NAME key=value``: text as it is; a JSON true/false as `true`/`false`; a number equal
    to the number written (`boxes=2` is 2 and 2.0, `price=2.50` is 2.5); null as `null`."""
    if isinstance(value, bool):
        return written.lower() == ("true" if value else "false")
    if isinstance(value, (int, float)):
        try:
            return float(written) == value
        except ValueError:
            return False
    if value is None:
        return written.lower() == "null"
    if isinstance(value, str):
        return value == written
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) == written


def draw(friend: str, rule: ir.Rule) -> tuple[str | None, bool]:
    """The friend's split variant and holdout membership in this rule (stable hashes; the SQL
    twin for set-based entry is :func:`engine.runtime.sqlcond.draw`)."""
    variant = None
    if rule.split:
        b, edge = bucket(friend, rule.name, "split"), 0
        for name, percent in rule.split:
            edge += round(percent * 100)
            variant = name
            if b < edge:
                break
    holdout = bool(rule.holdout) and bucket(friend, rule.name, "holdout") < round(rule.holdout * 100)
    return variant, holdout


def may_enter(rule: ir.Rule, last: Any, now: int) -> bool:
    """The re-entry policy, given the friend's last enrollment in ``rule`` (None: never)."""
    if last is None:
        return True
    if last["state"] in ("active", "waiting"):
        return False
    mode = rule.reenter.mode
    if mode == "always":
        return True
    if mode == "after":
        return (last["finished_at"] or 0) <= now - rule.reenter.after
    return False


class Entry:
    """Enrols friends in rules of the context's project."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        rules = sorted(ctx.rules.values(), key=lambda r: (-r.priority, r.name))
        #: event type -> the rules it triggers, highest priority first
        self.by_type: dict[str, list[ir.Rule]] = {}
        for rule in rules:
            event_type = getattr(rule.trigger, "event_type", None)
            if event_type is not None:
                self.by_type.setdefault(event_type, []).append(rule)
        #: event types some ``wait for`` listens to; whether any rule has ``exit when``
        self.wait_types = {
            getattr(st.trigger, "event_type", None)
            for r in ctx.rules.values()
            for st in r.steps
            if isinstance(st, ir.WaitFor)
        }
        self.has_exits = any(r.exit_when is not None for r in ctx.rules.values())

    def enter(
        self,
        rule: ir.Rule,
        friend: str,
        now: int,
        entered_at: int,
        *,
        cause: Cause | None = None,
        occurrence: str | None = None,
        event_seq: int | None = None,
        holdout: bool | None = None,
    ) -> Walker | None:
        """Enrol one friend if the re-entry policy and the entry filter allow it (``holdout``:
        True holds the friend out whatever the rule's draw, as a ``start`` of a held-out friend)."""
        s = self.ctx.store
        # a rule entered once per friend (no ``reenter``) and no entry filter: the insert itself
        # checks that the friend was never in it, one statement instead of two
        first_only = rule.entry is None and rule.reenter.mode not in ("always", "after")
        if not first_only and not may_enter(rule, s.last_enrollment(friend, rule.name), now):
            return None
        if rule.entry is not None:
            c = self.ctx.cond(rule.entry, False)
            if not s.friend_matches(friend, c.sql, {**c.params, "now": now, "rule": rule.name}):
                return None
        variant, drawn = draw(friend, rule)
        holdout = drawn or bool(holdout)
        cause = cause or Cause(None, None, None)
        first = rule.steps[0].id if rule.steps else None
        eid = s.enroll(
            friend=friend,
            rule=rule.name,
            version=self.ctx.versions[rule.name],
            step_id=first,
            now=now,
            entered_at=entered_at,
            variant=variant,
            holdout=holdout,
            occurrence=occurrence,
            cause_seq=cause.seq,
            reply_token=cause.reply_token,
            reply_deadline=cause.reply_deadline,
            event_seq=event_seq,
            first_only=first_only,
        )
        if eid is None:
            return None
        return Walker(
            eid,
            friend,
            rule.name,
            0,
            entered_at,
            now,
            variant,
            holdout,
            occurrence,
            cause.seq,
            cause.reply_token,
            cause.reply_deadline,
            event_seq,
        )

    def fire(
        self,
        event_type: str,
        data: dict,
        friend: str,
        now: int,
        at: int,
        cause: Cause | None,
        result: TickResult,
        event_seq: int | None = None,
        *,
        walking: bool = False,
    ) -> list[Walker]:
        """Enter the rules this event triggers and resume matching ``wait for`` enrollments.
        Returns walkers for what became due now (the walk may take them at once). Only a
        current friend enters a rule (``when unfollowed`` excepted: it fires on the block).
        ``walking``: fired by a step of the walk (``tag``), which the walkers returned join."""
        s = self.ctx.store
        out: list[Walker] = []
        source = None
        rules = self.by_type.get(event_type, ())
        waits = event_type in self.wait_types
        if (rules or waits) and event_type != "unfollow":
            # (the add source, for `followed via` in a trigger or in a `wait for`)
            followed_at, blocked_at, source = s.friend_status(friend) or (None, None, None)
            if followed_at is None or blocked_at is not None:
                rules = ()
        for rule in rules:
            if matches(rule.trigger, event_type, data, source):
                walker = self.enter(rule, friend, now, at, cause=cause, event_seq=event_seq)
                if walker:
                    result.entered += 1
                    out.append(walker)
        for row in s.open_enrollments(friend) if waits else ():
            if row["state"] != "waiting":
                continue
            rule = self.ctx.rules.get(row["rule"])
            step = rule.step(row["step_id"]) if rule else None
            if isinstance(step, ir.WaitFor) and matches(step.trigger, event_type, data, source):
                pos = rule.index_of(step.id) + 1
                nxt = rule.steps[pos].id if pos < len(rule.steps) else None
                now_cause = cause or Cause(None, None, None)
                s.resume(row["id"], nxt, now, now_cause.seq, now_cause.reply_token, now_cause.reply_deadline, event_seq)
                if event_seq is not None and not walking:
                    self.ctx.carry.resumed.add(row["id"])
                out.append(self._resumed(row, pos, cause))
        return out

    @staticmethod
    def _resumed(row: Any, pos: int, cause: Cause | None) -> Walker:
        """A walker for an enrollment row (mapping) resumed now."""
        if cause is None:
            cause = Cause(row["cause_seq"], row["reply_token"], row["reply_deadline"])
        return Walker(
            row["id"],
            row["friend"],
            row["rule"],
            pos,
            row["entered_at"],
            row["due_at"],
            row["variant"],
            bool(row["holdout"]),
            row["occurrence"],
            cause.seq,
            cause.reply_token,
            cause.reply_deadline,
            row["event_seq"],
        )

    def check_exits(self, friend: str, now: int) -> int:
        """Re-check ``exit when`` of the friend's open enrollments after a state change."""
        s = self.ctx.store
        exited: list[int] = []
        for row in s.open_enrollments(friend) if self.has_exits else ():
            rule = self.ctx.rules.get(row["rule"])
            if rule is not None and rule.exit_when is not None:
                c = self.ctx.cond(rule.exit_when, True)
                if s.select_enrollments(c.sql, {**c.params, "now": now, "rule": rule.name}, [row["id"]]):
                    exited.append(row["id"])
        s.exit_enrollments(exited, "exit_when", now)
        return len(exited)

    def audience(
        self,
        rule: ir.Rule,
        now: int,
        cond: ir.Cond | None,
        occurrence: str | None,
        reenter: ir.Reenter | None,
        placed: Placement | None = None,
    ) -> int:
        """Set-based entry of every current friend for whom ``cond`` and the entry filter hold
        and whom ``reenter`` lets in (None: everybody not inside the rule), in short transactions
        (``placed``: past their first sends, see :meth:`engine.runtime.store.Store.enroll_audience`)."""
        parts = tuple(c for c in (cond, rule.entry) if c is not None)
        where = sqlcond.audience(self.ctx.cond(ir.All(parts), False) if parts else None)
        blocked = sqlcond.reentry_blocked(reenter)
        variant, holdout, drawn = sqlcond.draw(rule.split, rule.holdout)
        first = rule.steps[0].id if rule.steps else None
        return self.ctx.store.enroll_audience(
            rule=rule.name,
            version=self.ctx.versions[rule.name],
            step_id=first,
            now=now,
            where_sql=where.sql,
            params={**where.params, **blocked.params, **drawn},
            occurrence=occurrence,
            blocked_sql=blocked.sql,
            variant_sql=variant,
            holdout_sql=holdout,
            placed=placed,
        )
