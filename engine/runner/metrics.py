"""The runner's metrics, exposed at ``GET /metrics`` in the Prometheus text format (0.0.4).

A tiny registry: counters with labels, gauges read at scrape time, and one summary for the
tick duration. Every metric is named ``linerules_*`` and documented in docs/operations.md.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

Labels = tuple[tuple[str, str], ...]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass
class Counter:
    """A monotonically increasing count per label set."""
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def inc(self, amount: float = 1, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]
        return out


@dataclass
class Gauge:
    """A value read from ``read`` at scrape time; ``None`` means unknown (not exported)."""
    name: str
    help: str
    read: Callable[[], float | None]

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        value = self.read()
        if value is not None:
            out.append(f"{self.name} {_number(value)}")
        return out


@dataclass
class Collected:
    """A counter kept elsewhere (e.g. by the dispatcher), read at scrape time as
    ``{labels: value}``."""
    name: str
    help: str
    read: Callable[[], dict[Labels, float]]

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.read().items())]
        return out


@dataclass
class Summary:
    """Count and sum of observations (e.g. tick durations in seconds), plus the last one."""
    name: str
    help: str
    count: int = 0
    total: float = 0.0
    last: float | None = None

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.last = value

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} summary",
                f"{self.name}_sum {_number(self.total)}", f"{self.name}_count {self.count}"]


class Metrics:
    """Every metric the runner exports. Gauges are bound to the runner with :meth:`gauge`."""

    def __init__(self) -> None:
        self.events = Counter("linerules_events_total", "Events received, by type and origin (webhook or api).")
        self.pushes = Counter("linerules_pushes_total",
                              "Outbox rows handled, by outcome (sent, duplicate, rejected, held, retry, dry_run).")
        self.webhooks = Counter("linerules_webhook_requests_total", "POST /callback requests, by HTTP status.")
        self.reloads = Counter("linerules_rule_reloads_total", "Rule folder reloads, by result (ok, invalid).")
        self.clicks = Counter("linerules_clicks_total", "Tracked link clicks redirected.")
        self.tick_seconds = Summary("linerules_tick_duration_seconds", "Time spent in engine ticks.")
        self.gauges: list[Gauge | Collected] = []

    def gauge(self, name: str, help: str, read: Callable[[], float | None]) -> None:
        """Register a gauge whose value is read at scrape time."""
        self.gauges.append(Gauge(name, help, read))

    def collected(self, name: str, help: str, read: Callable[[], dict[Labels, float]]) -> None:
        """Register a counter kept elsewhere, read at scrape time."""
        self.gauges.append(Collected(name, help, read))

    def render(self) -> str:
        """The whole registry in the Prometheus text exposition format."""
        lines: list[str] = []
        for metric in (self.events, self.pushes, self.webhooks, self.reloads,
                       self.clicks, self.tick_seconds, *self.gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
