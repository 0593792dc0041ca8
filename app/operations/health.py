"""Operations endpoints: liveness, readiness (each dependency and the read model's lag) and
Prometheus metrics. They observe the parts; they never change anything."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import msgspec
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import Resources
from app.projector import holds
from app.projector.counters import ProjectorCounters

_PROBE_TIMEOUT_S = 2.0


class RelayStatus(Protocol):
    is_leader: bool
    connected: bool
    published_position: int
    waiting_on_gap: int | None


class ProjectorStatus(Protocol):
    connected: bool
    counters: ProjectorCounters

    @property
    def position(self) -> int: ...


class PositionSource(Protocol):
    @property
    def current(self) -> int: ...


@dataclass(frozen=True, slots=True)
class OperationsContext:
    resources: Resources
    waiter: PositionSource
    relay: RelayStatus | None
    projector: ProjectorStatus | None


def _context(request: Request) -> OperationsContext:
    context: OperationsContext = request.app.state.operations
    return context


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json")


async def live(request: Request) -> Response:
    return _json({"status": "live"})


async def _log_head(pool: asyncpg.Pool) -> int:
    async with pool.acquire(timeout=_PROBE_TIMEOUT_S) as conn:
        head: int = await conn.fetchval(
            "SELECT coalesce(max(position), 0) FROM events", timeout=_PROBE_TIMEOUT_S
        )
    return head


async def _held(pool: asyncpg.Pool) -> tuple[int, int]:
    """(held streams, parked events) across all replicas (app/projector/holds.py)."""
    async with pool.acquire(timeout=_PROBE_TIMEOUT_S) as conn:
        return await holds.counts(conn, _PROBE_TIMEOUT_S)


async def _check_postgres(context: OperationsContext) -> str | None:
    try:
        await _log_head(context.resources.pool)
    except POSTGRES_FAILURES as exc:
        return f"unreachable: {exc!r}"
    return None


async def _check_mongo(context: OperationsContext) -> str | None:
    try:
        await asyncio.wait_for(context.resources.db.command("ping"), _PROBE_TIMEOUT_S)
    except (PyMongoError, TimeoutError) as exc:
        return f"unreachable: {exc!r}"
    return None


async def _check_rabbitmq(context: OperationsContext) -> str | None:
    """Connected parts prove the broker is up; otherwise open (and close) a connection."""
    if (context.projector and context.projector.connected) or (
        context.relay and context.relay.connected
    ):
        return None
    try:
        connection = await asyncio.wait_for(context.resources.connect_broker(), _PROBE_TIMEOUT_S)
        await connection.close()
    except Exception as exc:  # any failure to connect means "not ready"
        return f"unreachable: {exc!r}"
    return None


async def ready(request: Request) -> Response:
    """200 when PostgreSQL, RabbitMQ and MongoDB answer and the read model's lag is within
    READY_MAX_LAG events; else 503 naming each failing part. Held streams leave it 200 (the
    replica still serves) with status "degraded" and the count under the projector check."""
    context = _context(request)
    postgres, rabbitmq, mongo = await asyncio.gather(
        _check_postgres(context), _check_rabbitmq(context), _check_mongo(context)
    )
    checks: dict[str, str | None] = {"postgres": postgres, "rabbitmq": rabbitmq, "mongo": mongo}
    held = 0
    if postgres is None:
        try:
            lag = await _log_head(context.resources.pool) - context.waiter.current
            held, parked = await _held(context.resources.pool)
        except POSTGRES_FAILURES as exc:
            checks["postgres"] = f"unreachable: {exc!r}"
        else:
            if lag > context.resources.settings.ready_max_lag:
                checks["lag"] = f"the read model is {lag} events behind"
    failing = {part: reason for part, reason in checks.items() if reason is not None}
    body: dict[str, Any] = {
        "status": "unavailable" if failing else "degraded" if held else "ready",
        "checks": {part: reason or "ok" for part, reason in checks.items()},
    }
    if held:
        body["checks"]["projector"] = (
            f"degraded: {held} held stream(s), {parked} parked event(s);"
            " see python -m app parked list"
        )
        body["held_streams"] = held
    return _json(body, 503 if failing else 200)


# One Prometheus sample: name, type, help text, value.
Sample = tuple[str, str, str, int]


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the pipeline's positions, lag and counters."""
    context = _context(request)
    applied = context.waiter.current
    samples = await _log_samples(context.resources.pool, applied)
    samples.append(("shop_read_model_position", "gauge", "Applied position known here.", applied))
    if context.relay is not None:
        samples += _relay_samples(context.relay)
    if context.projector is not None:
        samples += _projector_samples(context.projector)
    lines = [
        line
        for name, kind, help_text, value in samples
        for line in (f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}")
    ]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def _log_samples(pool: asyncpg.Pool, applied: int) -> list[Sample]:
    try:
        head = await _log_head(pool)
    except POSTGRES_FAILURES:
        return [("shop_postgres_up", "gauge", "PostgreSQL answered.", 0)]
    lag = "Events committed but not yet applied to the read model."
    samples: list[Sample] = [
        ("shop_event_log_position", "gauge", "Last committed event position.", head),
        ("shop_read_model_lag_events", "gauge", lag, max(0, head - applied)),
    ]
    try:
        held, parked = await _held(pool)
    except POSTGRES_FAILURES:
        return samples
    return [
        *samples,
        ("shop_held_streams", "gauge", "Streams held behind an event that cannot be applied.",
         held),
        ("shop_parked_events", "gauge", "Events parked, waiting for retry or skip.", parked),
    ]  # fmt: skip


def _relay_samples(relay: RelayStatus) -> list[Sample]:
    gap = "Missing position the relay waits on (0: none): a transaction still open drew it."
    return [
        ("shop_relay_leader", "gauge", "1 when this replica's relay publishes.",
         int(relay.is_leader)),
        ("shop_relay_connected", "gauge", "Relay connected to the broker.", int(relay.connected)),
        ("shop_relay_published_position", "gauge", "Highest position confirmed by the broker.",
         relay.published_position),
        ("shop_relay_waiting_on_gap", "gauge", gap, relay.waiting_on_gap or 0),
    ]  # fmt: skip


def _projector_samples(projector: ProjectorStatus) -> list[Sample]:
    connected = ("shop_projector_connected", "gauge", "Projector consuming.")
    return [(*connected, int(projector.connected))] + [
        (f"shop_projector_{name}_total", "counter", help_text, value)
        for name, value, help_text in projector.counters.items()
    ]


def routes() -> list[Route]:
    return [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
