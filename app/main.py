"""The composition root: `create_app(settings)` builds every pool, client and background task
in its lifespan, keeps hard references to the tasks, and tears them down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import asyncpg
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.middleware import Middleware

from app.commands import idempotency
from app.commands.routes import CommandContext
from app.commands.routes import routes as command_routes
from app.contracts.generations import ReadModel
from app.contracts.readmodel import Db
from app.contracts.topology import Topology
from app.operations import asyncapi, dashboard, health, metrics, openapi
from app.operations import rebuild as rebuild_command
from app.plumbing import access, collector, problems, sse, tracing
from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import (
    Resources,
    connect_broker,
    connect_postgres,
    open_pool,
    open_resources,
)
from app.plumbing.settings import Settings
from app.projector import generations
from app.projector.applied import AppliedPosition
from app.projector.consumer import OnStored, Projector, ProjectorConfig
from app.queries.cache import open_read_cache
from app.queries.routes import QueryContext
from app.queries.routes import routes as query_routes
from app.queries.streams import routes as stream_routes
from app.queries.waiting import LocalFirstWaiter, MongoPositionWaiter, Waiter
from app.relay.runner import Relay, RelayConfig

log = logging.getLogger(__name__)


async def _purge_idempotency_keys(pool: asyncpg.Pool, ttl_s: int) -> None:
    """Forget keys older than their time to live, a batch at a time, forever."""
    while True:
        try:
            async with pool.acquire() as conn:
                while await idempotency.purge_expired(conn, ttl_s) > 0:
                    pass
        except POSTGRES_FAILURES as exc:
            log.warning("purging expired idempotency keys failed, will retry: %r", exc)
        await asyncio.sleep(min(ttl_s, 3600) / 4)


async def _retire_generations(settings: Settings, base: Db, interval_s: float = 300.0) -> None:
    """Drop the read model generation a rebuild switched away from once its grace period
    (READ_MODEL_KEEP_PREVIOUS_S) is over; every replica looks, under the rebuild lock, so never
    while a rebuild or a rollback runs (the pointer lets one replica win)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            lock = await rebuild_command.generations_lock(settings)
            try:
                if await lock.take() is None:
                    await generations.retire_expired(base)
            finally:
                await lock.release()
        except (PyMongoError, *POSTGRES_FAILURES) as exc:
            log.warning("retiring an old read model generation failed, will retry: %r", exc)


class Tasks:
    """The background tasks of one app: hard references, cancelled in reverse order."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_report_end)
        self._tasks.append(task)

    async def stop(self) -> None:
        for task in reversed(self._tasks):
            task.cancel()
        # one task that already died (its error was logged by _report_end) must not keep the
        # others from being awaited
        await asyncio.gather(*reversed(self._tasks), return_exceptions=True)


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s ended", task.get_name(), exc_info=task.exception())


def relay_config(settings: Settings) -> RelayConfig:
    return RelayConfig(
        name=settings.relay_name,
        topology=Topology.of(settings),
        batch_size=settings.relay_batch_size,
        confirm_window=settings.relay_confirm_window,
        poll_interval_s=settings.relay_poll_interval_s,
        timeout_s=settings.command_timeout_s,
    )


def projector_config(settings: Settings) -> ProjectorConfig:
    return ProjectorConfig(
        topology=Topology.of(settings),
        relay_name=settings.relay_name,
        batch_size=settings.projector_batch_size,
        prefetch=settings.projector_prefetch,
        idle_check_s=settings.projector_idle_check_s,
        poison_attempts=settings.projector_poison_attempts,
    )


def relay_for(settings: Settings, wakeup: asyncio.Event) -> Relay:
    """The relay as `serve` runs it (tests and the bench build theirs here too)."""
    return Relay(
        relay_config(settings),
        functools.partial(connect_postgres, settings),
        functools.partial(connect_broker, settings),
        wakeup,
    )


def projector_for(
    settings: Settings,
    pool: asyncpg.Pool,
    model: ReadModel,
    applied: AppliedPosition,
    *,
    on_stored: OnStored | None = None,
    **backoff: float,
) -> Projector:
    """The projector as `serve` runs it; `backoff` overrides its retry delays (tests)."""
    connect = functools.partial(connect_broker, settings)
    config = projector_config(settings)
    return Projector(config, pool, model, connect, applied, on_stored=on_stored, **backoff)


def _start_pipeline(
    resources: Resources,
    model: ReadModel,
    projector_pool: asyncpg.Pool | None,
    commit_signal: asyncio.Event,
    tasks: Tasks,
    on_stored: OnStored | None = None,
) -> tuple[Relay | None, Projector | None, Waiter]:
    """Start the relay and the projector this replica runs, and pick how reads wait for
    `after`: in-process when the projector runs here (with the `meta` document as a fallback
    while another replica's projector is the active one), else by polling `meta`."""
    settings = resources.settings
    relay = projector = None
    remote = MongoPositionWaiter(model, settings.read_poll_interval_s)
    waiter: Waiter = remote
    if settings.relay_enabled:
        relay = relay_for(settings, commit_signal)
        tasks.start("relay", relay.run())
    if projector_pool is not None:
        applied = AppliedPosition()
        projector = projector_for(settings, projector_pool, model, applied, on_stored=on_stored)
        waiter = LocalFirstWaiter(applied, remote, grace_s=settings.read_poll_interval_s)
        tasks.start("projector", projector.run())
    return relay, projector, waiter


@contextlib.asynccontextmanager
async def _projector_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool | None]:
    """The projector's own small pool (held streams every batch, gap repairs): it never waits
    behind the commands' connections, which a loaded write side keeps busy."""
    if not settings.projector_enabled:
        yield None
        return
    pool = await open_pool(settings, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


def _settle_gc() -> None:
    """Once started, keep what start-up built (modules, pools, clients: ~60,000 objects) out
    of every later collection, and collect the youngest generation every 10,000 net
    allocations instead of 700. A request's objects die young, but with 700 the ones still
    in flight are promoted, die in the old generation and set off full collections: under
    GET load on this machine the collector took ~11 % of the process's CPU, with a full
    collection of ~50 ms about every second; after this, under 1 % and none (docs/benchmarks.md)."""
    collector.settle(young_every=10_000)


def create_app(settings: Settings, *, settle_gc: bool = False) -> Starlette:
    """The whole service as an ASGI app. Migrations are not run here (`python -m app` runs
    them before serving), so tests and extra replicas build the app the same way. Raises
    SettingsError when the access control settings are unusable. `settle_gc` (the server
    process, `python -m app serve`): see `_settle_gc`."""
    access_control = access.AccessControl.of(settings)
    telemetry = metrics.Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if access_control.verifier is None:
            log.warning("access control is off (AUTH_MODE=off): anyone may call any endpoint")
        async with (
            open_resources(settings) as resources,
            _projector_pool(settings) as projector_pool,
            open_read_cache(settings) as read_cache,
        ):
            commit_signal = asyncio.Event()
            tasks = Tasks()
            model = ReadModel(resources.db)
            try:
                await model.refresh()  # serve the generation in use from the first read
            except PyMongoError as exc:
                log.warning("cannot read the read model's generation pointer yet: %r", exc)
            tasks.start("read-model-generation", model.watch())
            tasks.start("retire-generations", _retire_generations(settings, resources.db))
            invalidate = None if read_cache is None else read_cache.invalidate
            relay, projector, waiter = _start_pipeline(
                resources, model, projector_pool, commit_signal, tasks, invalidate
            )
            pool = resources.pool
            tasks.start("purge-keys", _purge_idempotency_keys(pool, settings.idempotency_ttl_s))
            app.state.commands = CommandContext(
                pool=pool,
                idempotency_ttl_s=settings.idempotency_ttl_s,
                acquire_timeout_s=settings.command_timeout_s,
                on_commit=commit_signal.set,
                on_outcome=telemetry.command,
            )
            app.state.queries = QueryContext(
                model=model,
                waiter=waiter,
                read_wait_max_s=settings.read_wait_max_s,
                cache=read_cache,
            )
            telemetry.watch(relay, projector)
            if read_cache is not None:
                telemetry.watch_cache(read_cache)
            app.state.operations = health.OperationsContext(
                resources=resources,
                waiter=waiter,
                relay=relay,
                projector=projector,
                metrics=telemetry,
            )
            if settle_gc:
                _settle_gc()
            try:
                yield
            finally:
                await tasks.stop()

    app = Starlette(
        # Starlette tries routes in turn: the reads, the most frequent requests, go first
        # (no read and command share a method and path, so the order decides nothing else)
        routes=[
            *query_routes(),
            *command_routes(),
            *stream_routes(),
            *health.routes(),
            *dashboard.routes(),
            *openapi.routes(),
            *asyncapi.routes(settings.exchange),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(metrics.RequestTimer, metrics=telemetry),
            *([Middleware(tracing.TraceRequests)] if settings.tracing else []),
        ],
    )
    # a trailing slash is an unknown path (404), not a 307 to where the client did not ask
    app.router.redirect_slashes = False
    app.state.openapi = openapi.encoded()
    problems.install(app)
    access.install(app, access_control)
    slots = sse.StreamSlots(settings.stream_max_open)  # every stream of the app, ops too
    sse.install(app, sse.Streams(slots, settings.stream_heartbeat_s, settings.read_poll_interval_s))
    return app
