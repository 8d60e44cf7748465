"""Stage 5 of a tick: every send due now is decided, whichever way it waited, by one procedure.

The due sends (intents a walk wrote, and the first sends an audience's enrollments carry) are
loaded by friend, :data:`DELIVER_CHUNK` friends per transaction, into the store's scratch table
(``temp.lr_due``, :meth:`engine.runtime.store.Store.load_due`), and a :class:`Decision` decides them
there (SPEC §4): window, left the rule, current friend and holdout (made when loaded), ``exit
when``, each step's ``if``, the cap by priority, replies, the monthly quota; then they are
rendered (:class:`Renderer`) and only then are outbox and delivery rows written, due at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from engine.language import ir, timeutil
from engine.language.project import collector_paused
from engine.language.render import MessagePlan, RenderError, render_message, sale_vars
from engine.line.limits import MAX_MULTICAST, MAX_OBJECTS, payload_json
from engine.runtime.store import Delivery, DueChange, DueChunk, DueSend, Encoded, LinkRow, OutboxRow, link_tokens
from engine.stages.context import Context, TickResult

log = logging.getLogger("linerules.engine")

#: Friends whose due sends the deliver stage decides per transaction (all of a friend's
#: competing sends are always decided together).
DELIVER_CHUNK = 5000

#: Rendered pushes: (message names, LINE message objects) of each push (the objects a list,
#: or :class:`Encoded`: known by their JSON text).
Pushes = list[tuple[list[str], Any]]


class Due(NamedTuple):
    """What rendering one due send needs: whose, of which rule and step, which messages."""

    enrollment: int
    friend: str
    rule: str
    occurrence: str | None
    variant: str | None
    event_seq: int | None
    step_id: str
    names: tuple[str, ...]


class _Part(NamedTuple):
    """One message of a due send, rendered: its objects (or what makes them) and, when known,
    each one's JSON text."""

    name: str
    count: int
    texts: list[str] | None
    objects: list | Callable[[], list]


def pack(parts: list[_Part]) -> Pushes:
    """The rendered messages of a send in pushes of at most five objects, keeping each message
    whole where it fits (a longer one is split); a push whose objects' JSON is all known is
    :class:`Encoded` (its objects made only when asked for)."""
    pushes: list[tuple[list[str], list[tuple[_Part, int, int]]]] = []  # names, (part, from, to)
    for part in parts:
        if pushes and sum(b - a for _, a, b in pushes[-1][1]) + part.count <= MAX_OBJECTS:
            pushes[-1][0].append(part.name)
            pushes[-1][1].append((part, 0, part.count))
        elif part.count <= MAX_OBJECTS:
            pushes.append(([part.name], [(part, 0, part.count)]))
        else:
            for i in range(0, part.count, MAX_OBJECTS):
                pushes.append(([part.name], [(part, i, min(i + MAX_OBJECTS, part.count))]))
    made: dict[int, list] = {}

    def objects_of(part: _Part) -> list:
        if id(part) not in made:
            made[id(part)] = part.objects() if callable(part.objects) else part.objects
        return made[id(part)]

    def objects(pieces: list[tuple[_Part, int, int]]) -> list:
        return [o for part, a, b in pieces for o in objects_of(part)[a:b]]

    out: Pushes = []
    for names, pieces in pushes:
        if all(part.texts is not None for part, _, _ in pieces):
            text = "[" + ",".join(t for part, a, b in pieces for t in part.texts[a:b]) + "]"
            out.append((names, Encoded(text, partial(objects, pieces))))
        else:
            out.append((names, objects(pieces)))
    return out


class DeliverStage:
    """Decides the due sends of the context's project."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.renderer = Renderer(ctx)
        #: (name, priority, uncapped) of the project's rules, for the store's scratch table
        self.rules = tuple((name, r.priority, int(r.uncapped)) for name, r in ctx.rules.items())

    def run(self, now: int, result: TickResult) -> None:
        """Decide every send due at ``now``, :data:`DELIVER_CHUNK` friends per transaction."""
        s, ctx = self.ctx.store, self.ctx
        if not s.has_due_intents(now):
            return
        today = timeutil.local_day(now, ctx.tz)
        after, first = "", True
        while True:
            with s.transaction(), collector_paused():
                if first:
                    self._start(now)
                    first = False
                chunk = s.load_due(now, DELIVER_CHUNK, after, today, ctx.settings.max_per_day)
                if chunk.last is not None and (chunk.intents or chunk.carried):  # else nothing loaded
                    Decision(ctx, self.renderer, now, result).decide(chunk)
                if not chunk.more:
                    s.finish_deliver(now)
                    return
            after = chunk.last

    def _start(self, now: int) -> None:
        """Sends due while their window is closed (after a reload, or a hold that ended outside
        it) wait for its opening; overdue ones become due now."""
        s, ctx = self.ctx.store, self.ctx
        closed: dict[int, list[str]] = {}  # the next opening -> the rules whose window opens then
        openings: dict[int, int] = {}  # id(window) -> its next opening (most rules share the account's)
        for name, rule in ctx.rules.items():
            window = rule.window or ctx.settings.window
            if window:
                opening = openings.get(id(window))
                if opening is None:
                    opening = openings[id(window)] = timeutil.next_opening(now, window, ctx.tz)
                if opening > now:
                    closed.setdefault(opening, []).append(name)
        for opening, names in closed.items():
            s.defer_intents(names, opening, now)
        s.start_deliver(now, self.rules)


class Decision:
    """One chunk of the deliver stage, on ``temp.lr_due``: the decisions in order, then the
    outbox and delivery rows."""

    def __init__(self, ctx: Context, renderer: Renderer, now: int, result: TickResult):
        self.ctx = ctx
        self.renderer = renderer
        self.now = now
        self.result = result
        self.today = timeutil.local_day(now, ctx.tz)

    def decide(self, chunk: DueChunk) -> None:
        """Decide the loaded ``chunk`` (statements with nothing to decide in it are left out)."""
        s, settings, now = self.ctx.store, self.ctx.settings, self.now
        self.renderer.new_chunk()
        present = s.due_rules()
        for name, rule in self.ctx.rules.items():
            if rule.exit_when is not None and name in present:
                c = self.ctx.cond(rule.exit_when, True)
                self.result.exited += s.due_exits(name, c.sql, {**c.params, "now": now, "rule": name}, now)
        s.due_update(self._conditions())
        if settings.max_per_day is not None:
            s.due_cap(settings.max_per_day, chunk.dups)
        if chunk.intents:  # an audience's carried sends hold no reply token
            s.due_replies(now)
        held_until = None
        month = timeutil.local(now, self.ctx.tz).strftime("%Y-%m")
        if settings.monthly_quota is not None:
            if s.due_quota(settings.monthly_quota - s.quota_used(month)):
                held_until = next_month_opening(now, self.ctx.tz)
        # a friend's several sends are written round by round: their first, then their second...
        # (the rows of a round after the last's), so that the friend gets them in order
        rounds = s.due_rounds() if chunk.dups or settings.max_per_day is None else 1
        billed = 0
        for rnd in range(1, rounds + 1):
            sent: list[int] = []  # the round's groups sent set-based
            billed += 0 if settings.base_url else self._same_for_everyone(sent, rnd)
            rows = s.due_rows(sent, rnd)
            billed += Outgoing(self.ctx, self.renderer, now, self.today, self.result).send(rows)
        s.add_quota_used(month, billed)
        counts = s.due_finish(now, self.today, held_until, chunk)
        self.result.capped += counts.get("capped", 0)
        self.result.skipped += counts.get("skipped", 0)

    def _conditions(self) -> list[DueChange]:
        """Each step's ``if``/``unless`` of every due group, now: the steps whose condition
        fails are left out of their send (all of them: the send is dropped)."""
        s, params = self.ctx.store, {"now": self.now}
        changes: list[DueChange] = []
        for rule_name, steps_text in s.due_groups():
            rule = self.ctx.rules.get(rule_name)
            steps = split_steps(rule, json.loads(steps_text))
            failing: dict[int, set[str]] = defaultdict(set)
            for step_id, _names in steps:
                step = rule.step(step_id) if rule else None
                cond = getattr(step, "cond", None)
                if cond is None:
                    continue
                c = self.ctx.cond(cond, True)
                for i in s.due_failing(rule_name, steps_text, c.sql, {**c.params, **params, "rule": rule_name}):
                    failing[i].add(step_id)
            for i, gone in failing.items():
                kept = [[sid, names] for sid, names in steps if sid not in gone]
                names = [n for _, step_names in kept for n in step_names]
                changes.append(
                    DueChange(
                        self.ctx.encode(tuple((sid, tuple(n)) for sid, n in kept)),
                        self.ctx.encode(tuple(names)),
                        None if kept else "dropped",
                        None if kept else "condition",
                        i,
                    )
                )
        return changes

    def _same_for_everyone(self, sent: list[int], rnd: int = 1) -> int:
        """Messages that render the same for every friend: rendered once, written set-based as
        multicasts for the friends of round ``rnd`` (their groups appended to ``sent``).
        Returns the billed messages."""
        s, now, billed = self.ctx.store, self.now, 0
        for grp, rule_name, steps_text, names_text, occurrence in s.due_render_keys(rnd):
            names = tuple(json.loads(names_text))
            if not self.renderer.static(names):
                continue
            rejected: list[Delivery] = []
            chunks = self.renderer.render(
                Due(0, "", rule_name, occurrence, None, None, "", names), {}, now, rejected, self.today
            )
            if rejected or not chunks:
                continue  # a message that does not render: recorded per friend
            self.renderer.write_links()
            step_id = json.loads(steps_text)[0][0]
            rows, count = s.due_static_send(grp, rule_name, step_id, chunks, now, self.today, rnd)
            self.result.queued += rows
            billed += count * len(chunks)
            sent.append(grp)
        return billed


class Outgoing:
    """The due sends rendered per friend (personalised messages, tracked links, replies): the
    outbox rows (identical renders of one rule still share a multicast), delivery rows and
    decisions of one chunk, written together by :meth:`send`."""

    def __init__(self, ctx: Context, renderer: Renderer, now: int, today: str, result: TickResult):
        self.ctx = ctx
        self.renderer = renderer
        self.now = now
        self.today = today
        self.result = result
        self.deliveries: list[Delivery | tuple] = []  # (a tuple: in the order of Delivery's fields)
        self.outbox: list[OutboxRow | tuple] = []
        #: (rule, payload JSON, message names) -> the due sends sharing it: (due id, 1 for the
        #: send's first push else 0, friend)
        self.shared: dict[tuple, list[tuple[int, int, str]]] = defaultdict(list)
        self._keys: dict[int, tuple[Pushes, list]] = {}
        self.billed = 0

    def send(self, rows: list[DueSend]) -> int:
        """Render and write ``rows`` (as :meth:`Store.due_rows` reads them); returns the billed
        messages (recipients of pushes and multicasts)."""
        if not rows:
            return 0
        s = self.ctx.store
        mentions = self.renderer.mentions_event
        events = s.events_data({r.event_seq for r in rows if r.event_seq is not None and mentions(r.messages)})
        decoded: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}  # the chunk's few distinct sends
        own: dict[tuple, tuple | None] = {}  # (rule, steps, messages, occurrence) -> what own_push needs
        renderer, now, today, deliveries = self.renderer, self.now, self.today, self.deliveries
        render, shared = renderer.render, self.shared
        for r in rows:
            key = (r.steps, r.messages)
            step_names = decoded.get(key)
            if step_names is None:
                step_names = decoded[key] = (json.loads(key[0])[0][0], tuple(json.loads(key[1])))
            if r.kind is None and not r.answer:  # a push, not a reply nor an answer
                group = (r.rule, r.steps, r.messages, r.occurrence)
                plan = own.get(group, False)
                if plan is False:
                    plan = own[group] = renderer.own_plan(step_names[1], r.rule, r.occurrence)
                if plan is not None:  # one message of the friend's own, as a rule: rendered here
                    text = renderer.own_push(plan, r, step_names, events.get(r.event_seq), now, deliveries, today)
                    if text is not None:
                        shared[r.rule, text, plan[1]].append((r.due, 1, r.friend_id))
                    continue
            due = Due(r.enrollment, r.friend_id, r.rule, r.occurrence, r.variant, r.event_seq, *step_names)
            chunks = render(due, r.friend, now, deliveries, today, events.get(r.event_seq))
            if not chunks:
                continue  # nothing rendered: its rejected delivery rows say why
            if r.kind == "reply" or r.answer:
                self._alone(r, due, chunks)
            else:
                self._share(r, chunks)
        self.renderer.write_links()
        ids = s.add_outbox_rows(self.outbox, self.now)  # replies and answers, each for its friend
        s.add_deliveries(self.deliveries, ids)  # the delivery rows are the per-friend decisions
        self.result.queued += len(self.outbox) + self._multicasts()
        return self.billed

    def _alone(self, r: DueSend, due: Due, chunks: Pushes) -> None:
        """A reply or an answer, for its one friend now: the first push as the reply (when it
        holds the token), the rest as pushes."""
        counts = 1 if r.counts else 0
        reason = "answer" if r.answer else None
        for i, (push_names, objects) in enumerate(chunks):
            token = r.reply_token if i == 0 and r.kind == "reply" else None
            self.outbox.append(
                OutboxRow(
                    "reply" if token else "push",
                    [r.friend_id],
                    objects,
                    push_names,
                    r.rule,
                    self.now,
                    token,
                    r.reply_deadline if token else None,
                )
            )
            self.billed += 0 if token else 1
            ref = len(self.outbox) - 1
            self.deliveries.append(
                Delivery(
                    r.friend_id,
                    r.rule,
                    due.step_id,
                    r.enrollment,
                    ref,
                    push_names,
                    "queued",
                    reason,
                    r.variant,
                    self.now,
                    self.today,
                    counts if i == 0 else 0,
                )
            )

    def _share(self, r: DueSend, chunks: Pushes) -> None:
        """A push that may share a multicast with other friends' identical pushes."""
        if len(chunks) == 1 and type(chunks[0][1]) is Encoded:  # one friend's own push, as a rule
            names, payload = chunks[0]
            self.shared[r.rule, payload.json, tuple(names)].append((r.due, 1, r.friend_id))
            return
        # a render the same for everyone is shared by the friends it is due for
        hit = self._keys.get(id(chunks))
        if hit is None:  # keeps ``chunks`` alive, so its id stays unique in this chunk
            hit = self._keys[id(chunks)] = (
                chunks,
                [(r.rule, self.renderer.key(objects), tuple(push_names)) for push_names, objects in chunks],
            )
        for i, key in enumerate(hit[1]):
            self.shared[key].append((r.due, 1 if i == 0 else 0, r.friend_id))

    def _multicasts(self) -> int:
        """The shared pushes in the order of their first friend, written set-based
        (:meth:`Store.add_due_pushes`): one push for a friend alone, multicasts of
        :data:`MAX_MULTICAST` friends for the same payload. Returns the outbox rows written."""
        pushes: list[tuple] = []  # (due, head, payload, messages) of a friend's own push
        multicasts: list[tuple] = []
        members: list[tuple] = []
        names_json: dict[tuple[str, ...], str] = {}
        n = 0
        for (_rule, text, names), items in self.shared.items():
            encoded = names_json.get(names)
            if encoded is None:
                encoded = names_json[names] = payload_json(list(names))
            if len(items) == 1:  # a friend's own, as a rule
                due, head, _friend = items[0]
                pushes.append((due, head, text, encoded))
                n += 1
                continue
            for start in range(0, len(items), MAX_MULTICAST):
                part = items[start : start + MAX_MULTICAST]
                n += 1
                if len(part) == 1:
                    pushes.append((part[0][0], part[0][1], text, encoded))
                    continue
                recipients = payload_json([friend for _due, _head, friend in part])
                multicasts.append((n, part[0][0], part[0][1], text, encoded, recipients))
                members.extend((n, i, due, head) for i, (due, head, _friend) in enumerate(part[1:], 1))
        self.billed += n + len(members)
        return self.ctx.store.add_due_pushes(pushes, multicasts, members, self.now, self.today)


class Renderer:
    """Liquid renders a due send now, with the friend as they are now, and packs the objects
    into pushes of at most five. Messages that mention neither ``friend`` nor ``event`` (and
    carry no tracked links) are rendered once per chunk and shared."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._static: dict[tuple[str, ...], bool] = {}  # a group of messages -> renders the same for all
        self._reads: dict[str, tuple[bool, bool]] = {}  # a message -> whether it reads friend, event
        self._events: dict[str, bool] = {}  # a due send's message names (JSON) -> mentions ``event``
        self._rendered: dict[tuple, tuple[Pushes, list]] = {}
        self._keys: dict[int, tuple[list[dict], str]] = {}
        self._plans: dict[tuple[str, str, bool], MessagePlan] = {}
        self._only: dict[tuple[tuple[str, ...], str, bool], ir.MessageDef | bool] = {}
        self._sales: dict[str, dict | None] = {}
        #: the click-tracking links made while rendering, written by :meth:`write_links`
        self.links: list[LinkRow] = []
        self._tokens: list[str] = []

    def new_chunk(self) -> None:
        """Friend-independent renders are shared within one chunk only."""
        self._rendered.clear()
        self._keys.clear()

    def write_links(self) -> None:
        """Store the tracked links rendered since the last call, in the order they were made."""
        if self.links:
            self.ctx.store.add_links(self.links)
            self.links = []

    def render(
        self, due: Due, friend: dict, now: int, deliveries: list[Delivery], day: str, event: dict | None = None
    ) -> Pushes:
        """The due send's messages rendered for one friend, in pushes of at most five objects,
        keeping each message whole where it fits. A message that fails to render is recorded
        as a rejected delivery and left out."""
        rule, occurrence = due.rule, due.occurrence
        base_url = self.ctx.settings.base_url
        only = self._only.get((due.names, rule, bool(base_url)))
        if only is None:
            only = self._only[due.names, rule, bool(base_url)] = self._only_message(due.names, bool(base_url)) or False
        if only:  # one message of the friend's own, as a rule
            link = self._linker(friend.get("id"), rule, only.name, now) if base_url else None
            plan = self._plan(only, rule, link is not None)
            if plan.takes(link):
                try:
                    sale = self._sale(occurrence) if occurrence else None
                    texts, values = plan.encode(friend, sale=sale, link=link, event=event)
                except RenderError as exc:
                    self._rejected(due, friend, only.name, exc, now, day, deliveries)
                    return []
                if len(texts) <= MAX_OBJECTS:
                    return [([only.name], Encoded("[" + ",".join(texts) + "]", partial(plan.build, values)))]
                return pack([_Part(only.name, len(texts), texts, partial(plan.build, values))])
        key = None
        if not base_url and self.static(due.names):
            key = (due.names, rule, occurrence if occurrence and occurrence.startswith("sale:") else None)
            hit = self._rendered.get(key)
            if hit is not None:
                chunks, failures = hit
                deliveries.extend(
                    Delivery(
                        due.friend,
                        rule,
                        due.step_id,
                        due.enrollment,
                        None,
                        [name],
                        "rejected",
                        error,
                        due.variant,
                        now,
                        day,
                        0,
                    )
                    for name, error in failures
                )
                return chunks
        sale = self._sale(occurrence)
        parts: list[_Part] = []
        failures: list[tuple[str, str]] = []
        for name in due.names:
            defn = self.ctx.project.messages.get(name)
            if defn is None:
                continue
            link = self._linker(friend.get("id"), rule, name, now)
            try:
                if key is not None:  # the same for everyone
                    objects = render_message(
                        defn, friend=friend, rule=rule, sale=sale, utm=self.ctx.settings.utm, link=link, event=event
                    )
                    parts.append(_Part(name, len(objects), None, objects))
                    continue
                plan = self._plan(defn, rule, link is not None)  # this friend's own render
                if plan.takes(link):
                    texts, values = plan.encode(friend, sale=sale, link=link, event=event)
                    parts.append(_Part(name, len(texts), texts, partial(plan.build, values)))
                else:
                    objects = plan.render(friend, sale=sale, link=link, event=event)[0]
                    parts.append(_Part(name, len(objects), None, objects))
            except RenderError as exc:
                failures.append((name, str(exc)))
                self._rejected(due, friend, name, exc, now, day, deliveries)
        if len(parts) == 1 and parts[0].texts is not None and parts[0].count <= MAX_OBJECTS:  # as a rule
            part = parts[0]
            chunks: Pushes = [([part.name], Encoded("[" + ",".join(part.texts) + "]", part.objects))]
        else:
            chunks = pack(parts)
        if key is not None:
            self._rendered[key] = (chunks, failures)
        return chunks

    def own_plan(self, names: tuple[str, ...], rule: str, occurrence: str | None) -> tuple | None:
        """For a send of one message rendered per friend that its plan renders (as
        :meth:`render` takes it first): (the plan, the message names, the sale), for
        :meth:`own_push`; None for any other send."""
        tracked = bool(self.ctx.settings.base_url)
        only = self._only.get((names, rule, tracked))
        if only is None:
            only = self._only[names, rule, tracked] = self._only_message(names, tracked) or False
        if not only or len(only.objects) > MAX_OBJECTS:  # (a longer one is packed by render)
            return None
        plan = self._plan(only, rule, tracked)
        if not plan.takes((lambda url: url) if tracked else None):
            return None
        return plan, names, self._sale(occurrence) if occurrence else None

    def own_push(
        self, own: tuple, r: Any, step_names: tuple, event: dict | None, now: int, deliveries: list, day: str
    ) -> str | None:
        """The JSON of the push of one friend's own message (``own`` from :meth:`own_plan`), as
        :meth:`render` makes it, for the due send ``r`` (as :meth:`Store.due_rows` reads it);
        None when it did not render (recorded as rejected)."""
        plan, names, sale = own
        friend = r.friend
        link = self._linker(friend.get("id"), r.rule, names[0], now) if plan.tracked else None
        try:
            texts, _values = plan.encode(friend, sale=sale, link=link, event=event)
        except RenderError as exc:
            due = Due(r.enrollment, r.friend_id, r.rule, r.occurrence, r.variant, r.event_seq, *step_names)
            self._rejected(due, friend, names[0], exc, now, day, deliveries)
            return None
        return "[" + ",".join(texts) + "]"

    def _only_message(self, names: tuple[str, ...], tracked: bool) -> ir.MessageDef | None:
        """The message of a send of one message rendered per friend (None: another kind of send)."""
        if len(names) != 1 or not tracked and self.static(names):
            return None
        return self.ctx.project.messages.get(names[0])

    def _rejected(
        self, due: Due, friend: dict, name: str, exc: RenderError, now: int, day: str, deliveries: list
    ) -> None:
        """A message that did not render for the friend: logged, and recorded as rejected."""
        who = friend.get("id") or due.friend
        # (``rejected``: for ``simulate``, which tells the marketer in their language)
        told = {"rejected": (due.rule, name, who, exc, now)}
        if who:
            log.error("rule %s: message %s not sent to %s: %s", due.rule, name, who, exc, extra=told)
        else:  # a message the same for everyone: it fails for each friend it is due for
            log.error("rule %s: message %s not sent to anyone it is due for: %s", due.rule, name, exc, extra=told)
        deliveries.append(
            Delivery(
                due.friend,
                due.rule,
                due.step_id,
                due.enrollment,
                None,
                [name],
                "rejected",
                str(exc),
                due.variant,
                now,
                day,
                0,
            )
        )

    def _plan(self, defn: ir.MessageDef, rule: str, tracked: bool) -> MessagePlan:
        """How ``defn`` renders per friend when ``rule`` sends it (worked out at its first send)."""
        plan = self._plans.get((defn.name, rule, tracked))
        if plan is None:
            plan = self._plans[defn.name, rule, tracked] = MessagePlan(
                defn, rule, utm=self.ctx.settings.utm, tracked=tracked
            )
        return plan

    def static(self, names: tuple[str, ...]) -> bool:
        """Whether these messages render the same for every friend (no ``friend`` or ``event``)."""
        known = self._static.get(names)
        if known is None:
            known = self._static[names] = not any(any(self._reading(n)) for n in names)
        return known

    def mentions_event(self, names_json: str) -> bool:
        """Whether any of these messages (their names as the JSON list a due send holds) may
        read ``event``: only their sends need the causing event's fields read."""
        known = self._events.get(names_json)
        if known is None:
            known = self._events[names_json] = any(self._reading(n)[1] for n in json.loads(names_json))
        return known

    def _reading(self, name: str) -> tuple[bool, bool]:
        """Whether the message may read ``friend`` and ``event`` (the words anywhere in it)."""
        known = self._reads.get(name)
        if known is None:
            defn = self.ctx.project.messages.get(name)
            text = "" if defn is None else repr(defn.objects)
            known = self._reads[name] = ("friend" in text, "event" in text)
        return known

    def key(self, objects: list[dict]) -> str:
        """What makes two payloads one: their JSON text as the store writes it (keys sorted,
        as ``render_hash`` hashes it), taken once per distinct payload object."""
        if type(objects) is Encoded:
            return objects.json
        hit = self._keys.get(id(objects))
        if hit is None:
            text = json.dumps(objects, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
            hit = self._keys[id(objects)] = (objects, text)
        return hit[1]

    def _linker(self, friend: str | None, rule: str, message: str, now: int) -> Callable[[str], str] | None:
        """Click tracking: each link becomes ``<base_url>/c/<token>`` when a base URL is set
        (the link rows are written by :meth:`write_links`)."""
        base = self.ctx.settings.base_url
        if not base or friend is None:
            return None
        base = base.rstrip("/")
        tokens = self._tokens

        def link(url: str) -> str:
            if not tokens:
                tokens.extend(reversed(link_tokens(1024)))  # taken from the end: in ascending order
            token = tokens.pop()
            self.links.append(LinkRow(token, friend, rule, message, url, now))
            return f"{base}/c/{token}"

        return link

    def _sale(self, occurrence: str | None) -> dict | None:
        """The sale of a ``sale`` rule's occurrence, for templates' ``sale`` (worked out once
        per occurrence; templates only read it)."""
        if not (occurrence or "").startswith("sale:"):
            return None
        if occurrence not in self._sales:
            name = occurrence.split(":")[1]
            sale = next((s for s in self.ctx.project.sales if s.name == name), None)
            self._sales[occurrence] = sale_vars(sale, self.ctx.tz) if sale else None
        return self._sales[occurrence]


def split_steps(rule: ir.Rule | None, steps: list) -> list:
    """A group rebuilt from its delivery rows (a send the dispatcher handed back) names only
    its first step: split its messages over the consecutive send steps they came from."""
    if rule is None or len(steps) != 1:
        return steps
    step_id, names = steps[0]
    pos = rule.index_of(step_id)
    if pos is None or not isinstance(rule.steps[pos], ir.Send) or tuple(rule.steps[pos].messages) == tuple(names):
        return steps
    out, rest = [], list(names)
    for step in rule.steps[pos:]:
        if not rest:
            break
        if isinstance(step, ir.WAIT_STEPS):
            break
        if not isinstance(step, ir.Send):
            continue
        if tuple(rest[: len(step.messages)]) == tuple(step.messages):
            out.append([step.id, list(step.messages)])
            rest = rest[len(step.messages) :]
    return out if out and not rest else steps


def next_month_opening(now: int, tz: Any) -> int:
    """Where sends held by ``monthly_quota`` go: the first moment of next month (local)."""
    local = timeutil.local(now, tz)
    first = (local.replace(day=1) + dt.timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return timeutil.epoch(first)
