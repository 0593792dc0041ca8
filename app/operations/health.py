"""Operations endpoints: liveness, readiness (each dependency and the read model's lag) and
the Prometheus scrape. They observe the parts; they never change anything."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.contracts.eventlog import head_position, settled_position
from app.operations.metrics import Metrics, ProjectorStatus, RelayStatus
from app.plumbing.access import metrics_token_only
from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import Resources
from app.projector import holds

_PROBE_TIMEOUT_S = 2.0


class PositionSource(Protocol):
    @property
    def current(self) -> int: ...


@dataclass(frozen=True, slots=True)
class OperationsContext:
    resources: Resources
    waiter: PositionSource
    relay: RelayStatus | None
    projector: ProjectorStatus | None
    metrics: Metrics


def _context(request: Request) -> OperationsContext:
    context: OperationsContext = request.app.state.operations
    return context


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json")


async def live(request: Request) -> Response:
    return _json({"status": "live"})


async def _log_head(pool: asyncpg.Pool) -> int:
    async with pool.acquire(timeout=_PROBE_TIMEOUT_S) as conn:
        return await head_position(conn, _PROBE_TIMEOUT_S)


async def _held(pool: asyncpg.Pool) -> tuple[int, int]:
    """(held streams, parked events) across all replicas (app/projector/holds.py)."""
    async with pool.acquire(timeout=_PROBE_TIMEOUT_S) as conn:
        return await holds.counts(conn, _PROBE_TIMEOUT_S)


@dataclass(frozen=True, slots=True)
class PipelineState:
    """The pipeline as this replica sees it: the log head, the relay's checkpoint, the held
    streams and parked events (PostgreSQL, the same on every replica), the applied position
    known here, and how long the oldest event not applied here has waited."""

    log_head: int
    relay_position: int
    applied: int
    held: int
    parked: int
    lag_s: float

    @property
    def lag_events(self) -> int:
        return max(0, self.log_head - self.applied)


_OLDEST_WAITING = (
    "SELECT coalesce(extract(epoch FROM now() - min(occurred_at)), 0)::float8 FROM"
    " (SELECT occurred_at FROM events WHERE position > $1 ORDER BY position LIMIT 1) AS oldest"
)


async def pipeline_state(context: OperationsContext) -> PipelineState:
    """Read on one pooled connection (for /metrics and /ops/stream). Raises POSTGRES_FAILURES."""
    applied = context.waiter.current
    async with context.resources.pool.acquire(timeout=_PROBE_TIMEOUT_S) as conn:
        head = await head_position(conn, _PROBE_TIMEOUT_S)
        relay = await settled_position(
            conn, context.resources.settings.relay_name, _PROBE_TIMEOUT_S
        )
        held, parked = await holds.counts(conn, _PROBE_TIMEOUT_S)
        lag_s: float = await conn.fetchval(_OLDEST_WAITING, applied, timeout=_PROBE_TIMEOUT_S)
    return PipelineState(head, relay, applied, held, parked, max(0.0, lag_s))


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
    """Prometheus exposition (app/operations/metrics.py): the pipeline's positions, lag,
    holds and counters, request latencies, commands, the PostgreSQL pool."""
    context = _context(request)
    await _refresh(context)
    body = generate_latest(context.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _refresh(context: OperationsContext) -> None:
    """Set the gauges read from PostgreSQL and this process for the scrape under way."""
    m = context.metrics
    m.read_position.set(context.waiter.current)
    m.pool(context.resources.pool)
    try:
        state = await pipeline_state(context)
    except POSTGRES_FAILURES:
        m.postgres_up.set(0)
        return
    m.postgres_up.set(1)
    m.log_position.set(state.log_head)
    m.lag_events.set(state.lag_events)
    m.held.set(state.held)
    m.parked.set(state.parked)


def routes() -> list[Route]:
    return [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_token_only(metrics), methods=["GET"]),
    ]
