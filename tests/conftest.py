"""Shared fixtures: real PostgreSQL, RabbitMQ and a MongoDB-protocol server, each test run
isolated by its own database, broker names and Mongo database, all removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp as ASGIApplication

from app.main import create_app
from app.plumbing.migrate import migrate
from app.plumbing.settings import Settings

ADMIN_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _dsn_for(database: str) -> str:
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _create_empty_database() -> tuple[str, str]:
    name = f"shop_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, _dsn_for(name)


async def _create_database() -> tuple[str, str]:
    name, dsn = await _create_empty_database()
    await migrate(dsn)
    return name, dsn


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """One migrated database for the whole run; tests keep apart by random ids."""
    name, dsn = await _create_database()
    yield dsn
    await _drop_database(name)


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    """A migrated database of this test's own, for tests that need an empty event log."""
    name, dsn = await _create_database()
    yield dsn
    await _drop_database(name)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=20)
    assert pool is not None
    yield pool
    await pool.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """MONGO_URL when set; otherwise a SecantusDB server of this run's own."""
    if os.environ.get("MONGO_URL"):
        yield os.environ["MONGO_URL"]
        return
    storage = tempfile.mkdtemp(prefix="secantus-test-")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "secantus", "--port", str(port), "--storage-path", storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(storage, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SecantusDB exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"SecantusDB did not listen on {port} within {timeout}s")


@pytest.fixture
def settings(database_url: str, mongo_url: str) -> Settings:
    """Settings of this test: its own broker names and Mongo database."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        mongo_url=mongo_url,
        mongo_db=f"shop_test_{tag}",
        exchange=f"test.{tag}.events",
        projector_queue=f"test.{tag}.projector",
        parked_queue=f"test.{tag}.projector.parked",
        relay_name=f"test-{tag}",
        relay_enabled=False,
        projector_enabled=False,
    )


class Server:
    """A real uvicorn server for one ASGI app (by default the whole service built from
    `settings`), on a free port, in this event loop."""

    def __init__(self, settings: Settings, app: ASGIApplication | None = None) -> None:
        self.settings = settings
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app or create_app(settings),
                host="127.0.0.1",
                port=self.port,
                lifespan="on",
                log_level="warning",
                loop="asyncio",
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 20
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("the app did not start")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(settings: Settings) -> AsyncIterator[ServerFactory]:
    """Start the app over real HTTP; keyword arguments override the test's settings."""
    servers: list[Server] = []

    async def start(**overrides: object) -> Server:
        server = Server(replace(settings, **overrides))  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def client(start_server: ServerFactory) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the write side served by a real server (relay and projector off)."""
    server = await start_server()
    async with httpx.AsyncClient(
        base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=200)
    ) as http:
        yield http


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Garbage left by a test (an unclosed socket, say) is collected in that test, so its
    ResourceWarning names the test that leaked instead of whichever one runs next."""
    yield
    gc.collect()
