"""Prometheus metrics with prometheus_client: one registry per app (so tests and replicas in one
process never collide), a request timer labelled by route template, and a collector that reads
the relay's and the projector's status at scrape time.

Names (README "Operating it"): `http_request_duration_seconds{method,route,status}`,
`shop_commands_total{command,outcome}`, `shop_event_log_position`, `shop_read_model_position`,
`shop_read_model_lag_events`, `shop_read_model_lag_seconds` (histogram: an event's transaction
time to the projector storing it), `shop_held_streams`, `shop_parked_events`, `shop_postgres_up`,
`shop_db_pool_{size,idle,max}`, `shop_relay_*`, `shop_projector_*`, and with the read cache on
`shop_read_cache_{hits,misses,fallbacks}_total{route}`, `shop_read_cache_errors_total{operation}`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final, Protocol

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.projector.counters import ProjectorCounters

# request latencies: 1 ms to 10 s
_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_UNMATCHED: Final = "unmatched"  # the route label of a request no route matched (a 404)


class RelayStatus(Protocol):
    is_leader: bool
    connected: bool
    published_position: int
    waiting_on_gap: int | None

    @property
    def published(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


class CacheStatus(Protocol):
    hits: Counter
    misses: Counter
    fallbacks: Counter
    errors: Counter


class ProjectorStatus(Protocol):
    connected: bool
    counters: ProjectorCounters
    lag_seconds: Histogram


class Metrics:
    """The registry and the metrics the app sets itself; the rest is read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ["method", "route", "status"],
            buckets=_BUCKETS,
            registry=reg,
        )
        self.commands = Counter(
            "shop_commands", "Commands by name and outcome.", ["command", "outcome"], registry=reg
        )
        self.log_position = Gauge(
            "shop_event_log_position", "Last committed position.", registry=reg
        )
        self.read_position = Gauge(
            "shop_read_model_position", "Applied position known here.", registry=reg
        )
        self.lag_events = Gauge(
            "shop_read_model_lag_events",
            "Events committed but not yet applied to the read model.",
            registry=reg,
        )
        self.held = Gauge(
            "shop_held_streams",
            "Streams held behind an event that cannot be applied.",
            registry=reg,
        )
        self.parked = Gauge(
            "shop_parked_events", "Events parked, waiting for retry or skip.", registry=reg
        )
        self.postgres_up = Gauge("shop_postgres_up", "PostgreSQL answered.", registry=reg)
        self.pool_size = Gauge("shop_db_pool_size", "PostgreSQL pool connections.", registry=reg)
        self.pool_idle = Gauge(
            "shop_db_pool_idle", "Idle PostgreSQL pool connections.", registry=reg
        )
        self.pool_max = Gauge("shop_db_pool_max", "PostgreSQL pool size limit.", registry=reg)

    def watch_cache(self, cache: CacheStatus) -> None:
        """Export the read cache's counters (app/queries/cache.py), kept by the cache itself."""
        self.registry.register(_CacheCollector(cache))

    def watch(self, relay: RelayStatus | None, projector: ProjectorStatus | None) -> None:
        """Export the relay's and the projector's status (read at every scrape)."""
        self.registry.register(_PipelineCollector(relay, projector))

    def command(self, name: str, outcome: str) -> None:
        self.commands.labels(name, outcome).inc()

    def commands_total(self) -> float:
        """Commands this replica handled since it started, every name and outcome."""
        return sum(
            sample.value
            for metric in self.commands.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    def pool(self, pool: asyncpg.Pool) -> None:
        self.pool_size.set(pool.get_size())
        self.pool_idle.set(pool.get_idle_size())
        self.pool_max.set(pool.get_max_size())


class _CacheCollector(Collector):
    def __init__(self, cache: CacheStatus) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self._cache
        for counter in (cache.hits, cache.misses, cache.fallbacks, cache.errors):
            yield from counter.collect()


class _PipelineCollector(Collector):
    def __init__(self, relay: RelayStatus | None, projector: ProjectorStatus | None) -> None:
        self._relay, self._projector = relay, projector

    def collect(self) -> Iterator[Metric]:
        if self._relay is not None:
            yield from _relay_metrics(self._relay)
        if self._projector is not None:
            yield from _projector_metrics(self._projector)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _relay_metrics(relay: RelayStatus) -> Iterator[Metric]:
    yield _gauge("shop_relay_leader", "1 when this replica's relay publishes.", relay.is_leader)
    yield _gauge("shop_relay_connected", "Relay connected to the broker.", relay.connected)
    yield _gauge(
        "shop_relay_published_position",
        "Highest position confirmed by the broker with all its predecessors.",
        relay.published_position,
    )
    yield CounterMetricFamily(
        "shop_relay_published", "Messages the broker confirmed.", value=relay.published
    )
    yield _gauge(
        "shop_relay_confirm_window_in_flight",
        "Messages published and not yet confirmed (RELAY_CONFIRM_WINDOW at most).",
        relay.in_flight,
    )
    yield _gauge(
        "shop_relay_waiting_on_gap",
        "Missing position the relay waits on (0: none): a transaction still open drew it.",
        relay.waiting_on_gap or 0,
    )


def _projector_metrics(projector: ProjectorStatus) -> Iterator[Metric]:
    yield _gauge("shop_projector_connected", "Projector consuming.", projector.connected)
    for name, value, help_text in projector.counters.items():
        yield CounterMetricFamily(f"shop_projector_{name}", help_text, value=value)
    yield from projector.lag_seconds.collect()


def route_of(scope: Scope) -> str:
    """The route template that served `scope` (`/orders/{order_id}`), never the raw path."""
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    return path if path is not None else _UNMATCHED


class RequestTimer:
    """ASGI middleware observing every HTTP request's duration under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app, self._metrics = app, metrics
        # the labelled child of each (method, route, status): `labels()` costs more than the
        # observation itself; bounded, since the parser knows a fixed set of methods and
        # `route_of` gives templates only
        self._timers: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            key = (scope["method"], route_of(scope), status)
            timer = self._timers.get(key)
            if timer is None:
                timer = self._timers[key] = self._metrics.requests.labels(*key[:2], str(status))
            timer.observe(elapsed)
