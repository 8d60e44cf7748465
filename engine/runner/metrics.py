"""The runner's metrics, exposed at ``GET /metrics`` with prometheus_client.

Each runner has its own :class:`~prometheus_client.CollectorRegistry` (never the global one),
so several runners in one process (tests) never share or collide. Besides the ``linerules_*``
metrics (docs/operations.md) the registry carries prometheus_client's process and Python
collectors (``process_*``, ``python_info``, ``python_gc_*``).

Counters and histograms are updated where things happen; gauges (and the counters the
dispatcher keeps) are read when Prometheus scrapes, through :class:`ScrapeCollector`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Seconds: from a few milliseconds (a quiet tick, a webhook) to a minute (a tick that walks a
#: million friends, a send that waits for LINE's rate limit and retries).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = dict[str, str]


class ScrapeCollector(Collector):
    """Gauges and counters whose values live elsewhere (the store, the dispatcher, the runner)
    and are read at scrape time. A gauge whose reader returns ``None`` (unknown) is not
    exported; a counter's reader returns ``[(labels, value), ...]``."""

    def __init__(self) -> None:
        self._gauges: list[tuple[str, str, Callable[[], float | None]]] = []
        self._counters: list[tuple[str, str, tuple[str, ...], Callable[[], Iterable[tuple[Labels, float]]]]] = []

    def gauge(self, name: str, help: str, read: Callable[[], float | None]) -> None:
        self._gauges.append((name, help, read))

    def counter(
        self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], Iterable[tuple[Labels, float]]]
    ) -> None:
        self._counters.append((name, help, labels, read))

    def describe(self) -> Iterator[Metric]:
        """The names without reading anything (the registry checks them at registration)."""
        for name, help, _read in self._gauges:
            yield GaugeMetricFamily(name, help)
        for name, help, labels, _read in self._counters:
            yield CounterMetricFamily(name, help, labels=labels)

    def collect(self) -> Iterator[Metric]:
        for name, help, read in self._gauges:
            family = GaugeMetricFamily(name, help)
            value = read()
            if value is not None:
                family.add_metric([], float(value))
            yield family
        for name, help, labels, read in self._counters:
            family = CounterMetricFamily(name, help, labels=labels)
            for values, number in read():
                family.add_metric([values[label] for label in labels], float(number))
            yield family


class Metrics:
    """Every metric one runner exports, in its own registry. Gauges read at scrape time are
    bound to the runner with :meth:`gauge` and :meth:`counter`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        reg = self.registry
        self.events = Counter(
            "linerules_events_total",
            "Events received, by type and origin (webhook, api, shopify).",
            ("type", "origin"),
            registry=reg,
        )
        self.pushes = Counter(
            "linerules_pushes_total",
            "Outbox rows handled, by outcome (sent, duplicate, rejected, "
            "unconfirmed, held, auth, retry, fenced, dry_run).",
            ("outcome",),
            registry=reg,
        )
        self.webhooks = Counter(
            "linerules_webhook_requests_total", "POST /callback requests, by HTTP status.", ("status",), registry=reg
        )
        self.reloads = Counter(
            "linerules_rule_reloads_total", "Rule folder reloads, by result (ok, invalid).", ("result",), registry=reg
        )
        self.clicks = Counter("linerules_clicks_total", "Tracked link clicks redirected.", registry=reg)
        self.tick_seconds = Histogram(
            "linerules_tick_duration_seconds", "Time spent in engine ticks.", buckets=BUCKETS, registry=reg
        )
        self.send_seconds = Histogram(
            "linerules_send_duration_seconds",
            "Time from claiming an outbox row to LINE's answer "
            "(rate-limit waits and retries within the attempt "
            "included), by kind (push, multicast, reply, menu_link).",
            ("kind",),
            buckets=BUCKETS,
            registry=reg,
        )
        self.request_seconds = Histogram(
            "linerules_http_request_duration_seconds",
            "Time to answer an HTTP request, by route (/callback, /events, ...; other: no route).",
            ("route",),
            buckets=BUCKETS,
            registry=reg,
        )
        self._scraped = ScrapeCollector()
        reg.register(self._scraped)

    def gauge(self, name: str, help: str, read: Callable[[], float | None]) -> None:
        """Register a gauge whose value is read at scrape time (``None``: not exported)."""
        self._scraped.gauge(name, help, read)

    def counter(
        self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], Iterable[tuple[Labels, float]]]
    ) -> None:
        """Register a counter kept elsewhere, read at scrape time as ``[(labels, value)]``."""
        self._scraped.counter(name, help, labels, read)

    def sent(self) -> int:
        """Outbox rows this process sent (outcome ``sent``), read without a scrape (the
        scraped gauges read the database, which ``/healthz`` must not need)."""
        return int(
            sum(
                s.value
                for m in self.pushes.collect()
                for s in m.samples
                if s.name == "linerules_pushes_total" and s.labels.get("outcome") == "sent"
            )
        )

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (0 when it has none yet), e.g.
        ``value("linerules_pushes_total", outcome="sent")``."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The whole registry as (body, Content-Type), in the format the scraper asks for with
        its ``Accept`` header (OpenMetrics or the Prometheus text format 0.0.4)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
