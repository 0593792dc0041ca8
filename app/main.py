"""The composition root: `create_app(settings)` builds every pool, client and background task
in its lifespan, keeps hard references to the tasks, and tears them down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import problems
from app.commands import idempotency
from app.commands import routes as command_routes
from app.commands.routes import CommandContext
from app.settings import Settings

log = logging.getLogger(__name__)


async def _purge_idempotency_keys(pool: asyncpg.Pool, ttl_s: int) -> None:
    """Forget keys older than their time to live, a batch at a time, forever."""
    while True:
        try:
            async with pool.acquire() as conn:
                while await idempotency.purge_expired(conn, ttl_s) > 0:
                    pass
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("purging expired idempotency keys failed, will retry: %r", exc)
        await asyncio.sleep(min(ttl_s, 3600) / 4)


async def live(request: Request) -> Response:
    return JSONResponse({"status": "live"})


async def ready(request: Request) -> Response:
    pool: asyncpg.Pool = request.app.state.pool
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return JSONResponse({"status": "unavailable", "postgres": repr(exc)}, status_code=503)
    return JSONResponse({"status": "ready", "postgres": "ok"})


def create_app(settings: Settings) -> Starlette:
    """The whole service as an ASGI app. Migrations are not run here (`python -m app` runs
    them before serving), so tests and extra replicas build the app the same way."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
        )
        assert pool is not None
        commit_signal = asyncio.Event()
        app.state.pool = pool
        app.state.commit_signal = commit_signal
        app.state.commands = CommandContext(
            pool=pool,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            acquire_timeout_s=settings.command_timeout_s,
            on_commit=commit_signal.set,
        )
        tasks = [
            asyncio.create_task(
                _purge_idempotency_keys(pool, settings.idempotency_ttl_s), name="purge-keys"
            ),
        ]
        try:
            yield
        finally:
            for task in reversed(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pool.close()

    app = Starlette(
        routes=[
            *command_routes.routes(),
            Route("/health/live", live, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)
    return app
