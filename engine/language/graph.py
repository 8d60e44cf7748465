"""``linerules graph [RULE]``: the compiled rules as a Mermaid flowchart, for pull requests.

Each rule reads top to bottom in its own words: the trigger (a stadium), the entry filter,
holdout and split (decisions), every step (conditional steps are decisions with yes/no edges),
``exit when`` (a hexagon) and ``stop`` drawn to the rule's exit node, and the end of the steps
to its done node. With no RULE, every rule is a subgraph of one chart.
"""

from __future__ import annotations

import sys

import click

from engine import i18n
from engine.i18n import _, render

from . import ir
from .compiler import describe_cond, describe_step, describe_trigger
from .diagnostics import did_you_mean, has_errors, render_text
from .project import load_project


def escape(label: str) -> str:
    """Text safe inside a quoted Mermaid label: quotes, angle brackets, ``#`` and backticks
    become entity codes; everything else (Japanese included) is kept as UTF-8."""
    out = label.replace("#", "#35;")
    for ch, code in (('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("`", "#96;")):
        out = out.replace(ch, code)
    return out.replace("\n", " ")


class _Chart:
    """The lines of one rule's part of the chart; node ids are prefixed per rule."""

    def __init__(self, prefix: str, indent: str):
        self.prefix = prefix
        self.indent = indent
        self.lines: list[str] = []

    def node(self, suffix: str, label: str, shape: str = "box") -> str:
        ident = f"{self.prefix}_{suffix}"
        left, right = {
            "box": ("[", "]"),
            "decision": ("{", "}"),
            "stadium": ("([", "])"),
            "hexagon": ("{{", "}}"),
            "circle": ("((", "))"),
        }[shape]
        self.lines.append(f'{self.indent}{ident}{left}"{escape(label)}"{right}')
        return ident

    def edge(self, a: str, b: str, label: str | None = None, dotted: bool = False) -> None:
        arrow = "-.->" if dotted else "-->"
        text = f'|"{escape(label)}"|' if label else ""
        self.lines.append(f"{self.indent}{a} {arrow}{text} {b}")


def rule_lines(rule: ir.Rule, prefix: str, indent: str = "    ") -> list[str]:
    """Mermaid lines (nodes and edges) for one rule."""
    c = _Chart(prefix, indent)
    start = c.node("t", f"when {describe_trigger(rule.trigger)}", "stadium")
    stops = any(isinstance(s, ir.StopStep) for s in rule.steps)
    if rule.entry is not None or rule.holdout or rule.exit_when is not None or stops:
        c.node("x", "exit", "circle")
    exit_ = f"{prefix}_x"
    done = f"{prefix}_d"
    pending: list[tuple[str, str | None]] = [(start, None)]

    def goto(target: str) -> None:
        for source, label in pending:
            c.edge(source, target, label)

    if rule.entry is not None:
        entry = c.node("e", f"if {describe_cond(rule.entry)}", "decision")
        goto(entry)
        c.edge(entry, exit_, "no: not entered")
        pending = [(entry, "yes")]
    if rule.holdout:
        hold = c.node("h", f"holdout {_pct(rule.holdout)}", "decision")
        goto(hold)
        c.edge(hold, exit_, "control group: nothing sent")
        pending = [(hold, "others")]
    if rule.split:
        split = c.node("v", "split", "decision")
        goto(split)
        pending = [(split, f"variant {name} {_pct(p)}") for name, p in rule.split]
    for i, step in enumerate(rule.steps):
        cond = getattr(step, "cond", None)
        action_label = describe_step(step, with_cond=False)
        if cond is not None:
            decision = c.node(f"s{i}", f"if {describe_cond(cond)}", "decision")
            goto(decision)
            action = c.node(f"s{i}a", action_label)
            c.edge(decision, action, "yes")
            pending = [(decision, "no")]
        else:
            action = c.node(f"s{i}", action_label)
            goto(action)
            pending = []
        if isinstance(step, ir.StopStep):
            c.edge(action, exit_)
        else:
            pending.append((action, None))
    if rule.exit_when is not None:
        watch = c.node("w", f"exit when {describe_cond(rule.exit_when)}", "hexagon")
        c.edge(watch, exit_, dotted=True)
    if pending:
        c.node("d", "done", "circle")
        goto(done)
    return c.lines


def _box(r: ir.Rule, i: int) -> list[str]:
    """The rule's flow as a subgraph titled with its name and description."""
    title = r.name + (f": {r.description}" if r.description else "")
    return [
        f'    subgraph r{i}g["{escape(title)}"]',
        "        direction TB",
        *rule_lines(r, f"r{i}", "        "),
        "    end",
    ]


def _pct(p: float) -> str:
    return f"{int(p) if float(p).is_integer() else p}%"


def to_mermaid(project: ir.Project, rule: str | None = None) -> str:
    """A ``flowchart TD`` of one rule, or of every rule (one subgraph each, in file order)."""
    if rule is not None:
        r = project.rules[rule]
        if not r.description:
            return "\n".join(["flowchart TD", f"    %% rule {r.name} ({r.path})", *rule_lines(r, "r0")]) + "\n"
        # the description is for people, so it is shown: as the title of the rule's box
        return "\n".join(["flowchart TD", f"    %% rule {r.name} ({r.path})", *_box(r, 0)]) + "\n"
    lines = ["flowchart TD"]
    ordered = sorted(project.rules.values(), key=lambda r: (r.path, r.span.line if r.span else 0, r.name))
    for i, r in enumerate(ordered):
        lines += _box(r, i)
    return "\n".join(lines) + "\n"


def main(rules_dir: str, rule: str | None, lang: str | None = None) -> int:
    """The ``graph`` command: print the chart; exit 1 on an invalid folder; an unknown rule
    raises ``click.UsageError`` (exit 2)."""
    result = load_project(rules_dir)
    i18n.use(i18n.choose(lang, result.language))
    if result.project is None or has_errors(result.diagnostics):
        sys.stderr.write(render_text(result.diagnostics, result.sources))
        return 1
    project = result.project
    if rule is not None and rule not in project.rules:
        hint = did_you_mean(rule, project.rules)
        raise click.UsageError(
            render(
                _("unknown rule `{name}` ({hint})", name=rule, hint=hint)
                if hint
                else _("unknown rule `{name}`", name=rule)
            )
        )
    sys.stdout.write(to_mermaid(project, rule))
    return 0
