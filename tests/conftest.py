"""Shared fixtures: real PostgreSQL, RabbitMQ and a MongoDB-protocol server, each test run
isolated by its own database, broker names and Mongo database, all removed afterwards."""

from __future__ import annotations

import gc
import os
import random
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import replace

import asyncpg
import httpx
import pytest

from app.plumbing.localstore import LocalStore
from app.plumbing.settings import Settings
from tests.support.databases import AMQP_URL, create_database, drop_database
from tests.support.seeds import add_seed_option, seed_for, seed_report
from tests.support.servers import Server, ServerFactory, http_client


def pytest_addoption(parser: pytest.Parser) -> None:
    add_seed_option(parser)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that drew from `rng` says its seed and how to rerun with it."""
    report = yield
    line = seed_report(item)
    if report.failed and line is not None:
        report.sections.append(("random seed", line))
    return report


@pytest.fixture
def test_seed(request: pytest.FixtureRequest) -> int:
    """This test's seed: --seed, else TEST_SEED, else random; shown when the test fails."""
    return seed_for(request)


@pytest.fixture
def rng(test_seed: int) -> random.Random:
    return random.Random(test_seed)


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """One migrated database for the whole run; tests keep apart by random ids."""
    name, dsn = await create_database()
    yield dsn
    await drop_database(name)


@pytest.fixture(scope="session")
async def migrated_template() -> AsyncIterator[str]:
    """A migrated database that nobody connects to: the fresh databases are copies of it."""
    name, _ = await create_database()
    yield name
    await drop_database(name)


@pytest.fixture
async def fresh_database_url(migrated_template: str) -> AsyncIterator[str]:
    """A migrated database of this test's own, for tests that need an empty event log."""
    name, dsn = await create_database(migrated_template)
    yield dsn
    await drop_database(name)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=20)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """MONGO_URL when set; otherwise a SecantusDB server of this run's own."""
    if os.environ.get("MONGO_URL"):
        yield os.environ["MONGO_URL"]
        return
    with LocalStore() as store:
        yield store.url


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
    async with http_client(
        server.url, timeout=30, limits=httpx.Limits(max_connections=200)
    ) as http:
        yield http


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported lives for the whole run: frozen out of the collections after
    every test, which then scan only what tests made (a quarter of the fast run otherwise)."""
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Garbage left by a test (an unclosed socket, say) is collected in that test, so its
    ResourceWarning names the test that leaked instead of whichever one runs next."""
    yield
    gc.collect()
