"""`GET /dashboard`: the pipeline live in one page, fed by the server-sent event stream
`GET /ops/stream`.

Every DASHBOARD_INTERVAL_S the stream sends one `state` event: the pipeline as /metrics sees
it (`health.pipeline_state`: log head, relay checkpoint, applied position, lag in events and
seconds, held streams, parked events), the commands this replica handled per second (its
`shop_commands_total`), its open streams, and the last events of the log. The page is plain
HTML, CSS and JavaScript shipped in app/operations/static/ (no CDN, no build step); its chart
of the lag is inline SVG drawn from the states it has received.

Access: the page itself holds no data and is open to anyone. `/ops/stream` is admin-only with
AUTH_MODE=jwt. The page reads it with fetch() (not EventSource, which cannot send headers), so
the token travels in `Authorization: Bearer`, never in a URL a log could keep; the page asks
for the token when the stream answers 401 or 403 (or takes it from `#token=<jwt>`, a fragment
no server sees) and keeps it in the tab's sessionStorage. The stream takes a slot of the
replica's stream bound (STREAM_MAX_OPEN) like every stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.operations import health
from app.plumbing import sse
from app.plumbing.access import admin_only
from app.plumbing.failures import POSTGRES_FAILURES

STATE_EVENT: Final = "state"
RECENT_EVENTS: Final = 12
_PROBE_TIMEOUT_S: Final = 2.0
_RECENT = (
    "SELECT position, type, stream_type, stream_id, occurred_at FROM events"
    " ORDER BY position DESC LIMIT $1"
)


class RecentEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    type: str
    stream: str  # `order:<id>` or `product:<id>`
    occurred_at: datetime


class OpsState(msgspec.Struct, frozen=True, kw_only=True):
    """One `state` event of /ops/stream. The PostgreSQL figures are null while it fails."""

    at: datetime
    postgres: str  # "ok" or "unreachable: …"
    log_head: int | None
    relay_position: int | None
    applied_position: int
    lag_events: int | None
    lag_seconds: float | None
    held_streams: int | None
    parked_events: int | None
    commands_total: float
    commands_per_second: float
    open_streams: int
    stream_limit: int
    recent_events: list[RecentEvent]


class Rate:
    """Commands per second between two states of one stream."""

    def __init__(self, total: float) -> None:
        self._total, self._at = total, time.monotonic()

    def update(self, total: float) -> float:
        now = time.monotonic()
        elapsed = now - self._at
        rate = (total - self._total) / elapsed if elapsed > 0 else 0.0
        self._total, self._at = total, now
        return max(0.0, rate)


async def _recent(context: health.OperationsContext) -> list[RecentEvent]:
    async with context.resources.pool.acquire(timeout=_PROBE_TIMEOUT_S) as conn:
        rows = await conn.fetch(_RECENT, RECENT_EVENTS, timeout=_PROBE_TIMEOUT_S)
    return [
        RecentEvent(
            position=row["position"],
            type=row["type"],
            stream=f"{row['stream_type']}:{row['stream_id']}",
            occurred_at=row["occurred_at"],
        )
        for row in rows
    ]


async def ops_state(
    context: health.OperationsContext, slots: sse.StreamSlots, rate: Rate
) -> OpsState:
    """The state to send now; PostgreSQL failing gives a state that says so, never an error."""
    total = context.metrics.commands_total()
    common: dict[str, Any] = {
        "at": datetime.now(UTC),
        "commands_total": total,
        "commands_per_second": round(rate.update(total), 2),
        "open_streams": slots.open,
        "stream_limit": slots.limit,
    }
    try:
        state = await health.pipeline_state(context)
        recent = await _recent(context)
    except POSTGRES_FAILURES as exc:
        return OpsState(
            postgres=f"unreachable: {exc!r}",
            log_head=None,
            relay_position=None,
            applied_position=context.waiter.current,
            lag_events=None,
            lag_seconds=None,
            held_streams=None,
            parked_events=None,
            recent_events=[],
            **common,
        )
    return OpsState(
        postgres="ok",
        log_head=state.log_head,
        relay_position=state.relay_position,
        applied_position=state.applied,
        lag_events=state.lag_events,
        lag_seconds=round(state.lag_s, 3),
        held_streams=state.held,
        parked_events=state.parked,
        recent_events=recent,
        **common,
    )


async def _states(
    context: health.OperationsContext, slots: sse.StreamSlots, interval_s: float
) -> AsyncIterator[bytes]:
    rate = Rate(context.metrics.commands_total())
    yield sse.reconnect_after()
    while True:
        state = await ops_state(context, slots, rate)
        yield sse.event(msgspec.json.encode(state), name=STATE_EVENT)
        await asyncio.sleep(interval_s)


async def ops_stream(request: Request) -> Response:
    """`state` events every DASHBOARD_INTERVAL_S, until the client goes away; 503 when the
    replica's stream bound is reached."""
    context: health.OperationsContext = request.app.state.operations
    streams = sse.streams_of(request)
    interval_s: float = context.resources.settings.dashboard_interval_s
    slot = streams.slots.take()
    return sse.EventStream(_states(context, streams.slots, interval_s), slot)


def _static(name: str) -> bytes:
    return resources.files("app.operations").joinpath("static", name).read_bytes()


def routes() -> list[Route]:
    """The page, its script and the stream (the files are read once, here)."""
    page, script = _static("dashboard.html"), _static("dashboard.js")

    async def dashboard(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def dashboard_js(request: Request) -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8", headers=_PAGE_HEADERS)

    return [
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/dashboard/dashboard.js", dashboard_js, methods=["GET"]),
        Route("/ops/stream", admin_only(ops_stream), methods=["GET"]),
    ]


# the page's own script only; its one <style> is inline
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
}
