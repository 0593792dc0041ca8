"""`python -m app rebuild` while the service serves: a new generation, compared, switched without
a failed read; crashes in each phase resumed or aborted; rollback; one rebuild at a time."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from app.contracts.generations import GENERATIONS, REBUILD_ID, read_pointer
from app.contracts.readmodel import META, META_ID
from app.operations import compare as compare_module
from app.operations import rebuild as command
from app.operations.verify import verify
from app.plumbing.settings import Settings
from app.projector import documents, generations
from tests.support.histories import make_history
from tests.support.servers import Server, http_client
from tests.support.waiting import eventually

Document = dict[str, Any]


@pytest.fixture
async def served(pipeline_stack: Settings) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:
    """The whole service in this process (relay and projector on), and a client of it."""
    server = Server(pipeline_stack)
    await server.start()
    client = http_client(server.url, timeout=30)
    try:
        yield pipeline_stack, client
    finally:
        await client.aclose()
        await server.stop()


@pytest.fixture
async def mongo(pipeline_stack: Settings) -> AsyncIterator[AsyncMongoClient[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(pipeline_stack.mongo_url, tz_aware=True)
    try:
        yield client
    finally:
        await client.close()


async def rebuild(settings: Settings, *argv: str) -> int:
    """The CLI, in a thread of its own (its own event loop), as an operator runs it."""
    return await asyncio.to_thread(command.main, settings, command.parse(list(argv)))


async def caught_up(settings: Settings, client: httpx.AsyncClient) -> None:
    async def done() -> bool:
        report = await verify(settings, wait_s=0.1)
        return report.ok

    await eventually(done, within_s=30, what="the read model to catch up")


async def create_product(client: httpx.AsyncClient) -> tuple[str, int]:
    response = await client.post(
        "/products",
        json={"sku": f"R-{uuid.uuid4().hex[:8]}", "name": "Lamp", "price_cents": 500, "stock": 9},
    )
    assert response.status_code == 201, response.text
    return response.json()["product_id"], int(response.headers["X-Event-Position"])


class Traffic:
    """Commands (write side) and reads (over HTTP, each reader with `after=` its last position)
    until stopped; records every failed read and every position that went backward."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient, rng: random.Random) -> None:
        self.settings, self.client, self.rng = settings, client, rng
        self.failures: list[str] = []
        self.reads = 0
        self.writes = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write()),
            *(asyncio.create_task(self._read()) for _ in range(3)),
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _write(self) -> None:
        while not self._stop.is_set():
            await make_history(self.settings.database_url, self.rng, steps=3)
            product, position = await create_product(self.client)
            # read-your-writes across the switch: the product is there at `after=position`
            response = await self.client.get(f"/products/{product}", params={"after": position})
            if response.status_code != 200:
                self.failures.append(f"read own write: {response.status_code} {response.text}")
            self.writes += 1
            await asyncio.sleep(0.02)

    async def _read(self) -> None:
        seen = 0
        while not self._stop.is_set():
            response = await self.client.get("/products", params={"limit": 5, "after": seen})
            self.reads += 1
            if response.status_code != 200:
                self.failures.append(f"GET /products: {response.status_code} {response.text}")
            position = int(response.headers["X-Read-Position"])
            if position < seen:
                self.failures.append(f"X-Read-Position went back from {seen} to {position}")
            seen = max(seen, position)
            await asyncio.sleep(0.005)


@pytest.mark.slow
async def test_a_rebuild_under_traffic_switches_without_a_failed_read(
    served: tuple[Settings, httpx.AsyncClient],
    mongo: AsyncMongoClient[Document],
    rng: random.Random,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, client = served
    await make_history(settings.database_url, rng, steps=60)
    await caught_up(settings, client)
    traffic = Traffic(settings, client, rng)
    traffic.start()
    try:
        await asyncio.sleep(0.5)
        assert await rebuild(settings, "--json") == 0
        await asyncio.sleep(0.5)  # traffic goes on after the switch
    finally:
        await traffic.stop()
    assert traffic.failures == []
    assert traffic.writes > 0
    assert traffic.reads > 20
    out = capsys.readouterr().out
    assert "switched the read model to generation 1" in out
    assert '"exit_code":0' in out
    base = mongo[settings.mongo_db]
    pointer = await read_pointer(base)
    assert (pointer.generation, pointer.database) == (1, f"{settings.mongo_db}_g1")
    old = await base[META].find_one({"_id": META_ID})
    assert old is not None
    assert old["superseded_by"] == pointer.database
    await caught_up(settings, client)  # verify reads the new generation, and it is exact
    assert await base[GENERATIONS].find_one({"_id": REBUILD_ID}) is None


async def test_a_projection_change_is_listed_and_switches_only_when_expected(
    served: tuple[Settings, httpx.AsyncClient],
    mongo: AsyncMongoClient[Document],
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, client = served
    await make_history(settings.database_url, rng, steps=20)
    await caught_up(settings, client)
    original = documents.apply_product_created

    def with_a_new_field(envelope: Any, data: Any) -> list[documents.Write]:
        writes = original(envelope, data)
        writes[0].update["$set"]["display_name"] = data.name.upper()
        return writes

    monkeypatch.setitem(documents.PROJECTIONS, "ProductCreated", with_a_new_field)
    assert await rebuild(settings) == command.UNEXPECTED_CHANGES
    captured = capsys.readouterr()
    assert "products.display_name:" in captured.out
    assert "rebuild --expect-changes products.display_name" in captured.err
    base = mongo[settings.mongo_db]
    assert (await read_pointer(base)).generation == 0  # not switched: the old one serves
    assert (await base[GENERATIONS].find_one({"_id": REBUILD_ID}) or {})["phase"] == "compare"
    # resumed with the change admitted, it switches
    assert await rebuild(settings, "--expect-changes", "products.display_name") == 0
    assert "resuming the rebuild of generation 1 at its compare" in capsys.readouterr().out
    assert (await read_pointer(base)).generation == 1
    product = await mongo[f"{settings.mongo_db}_g1"].products.find_one()
    assert product is not None
    assert product["display_name"] == product["name"].upper()


@pytest.mark.parametrize("phase", ["build", "catch-up", "compare", "switch"])
async def test_a_rebuild_that_fails_in_any_phase_leaves_the_current_generation_serving(
    served: tuple[Settings, httpx.AsyncClient],
    mongo: AsyncMongoClient[Document],
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    phase: str,
) -> None:
    settings, client = served
    await make_history(settings.database_url, rng, steps=15)
    await caught_up(settings, client)

    async def fails(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("the store went away")

    targets = {
        "build": (command, "rebuild"),
        "catch-up": (generations, "catch_up"),
        "compare": (command, "compare"),
        "switch": (generations, "write_pointer"),
    }
    with monkeypatch.context() as patched:
        patched.setattr(*targets[phase], fails)
        assert await rebuild(settings) == 1
    base = mongo[settings.mongo_db]
    assert (await read_pointer(base)).generation == 0
    # the current generation still serves and still moves (a failed switch lifted its freeze)
    _, position = await create_product(client)
    response = await client.get("/products", params={"after": position})
    assert response.status_code == 200
    meta = await base[META].find_one({"_id": META_ID})
    assert meta is not None
    assert "frozen_until" not in meta
    assert "superseded_by" not in meta
    if phase in ("build", "compare"):
        assert await rebuild(settings, "--abort") == 0
        assert await base[GENERATIONS].find_one({"_id": REBUILD_ID}) is None
        assert f"{settings.mongo_db}_g1" not in await mongo.list_database_names()
        assert await rebuild(settings, "--abort") == command.REFUSED  # nothing left to abort
    else:
        assert await rebuild(settings) == 0  # resumed
        assert (await read_pointer(base)).generation == 1
    await caught_up(settings, client)


@pytest.mark.slow
async def test_rollback_returns_to_the_previous_generation_caught_up(
    served: tuple[Settings, httpx.AsyncClient],
    mongo: AsyncMongoClient[Document],
    rng: random.Random,
) -> None:
    settings, client = served
    await make_history(settings.database_url, rng, steps=15)
    await caught_up(settings, client)
    assert await rebuild(settings, "--rollback") == command.REFUSED  # nothing to go back to
    assert await rebuild(settings) == 0
    _, position = await create_product(client)  # applied to generation 1 only
    assert (await client.get("/products", params={"after": position})).status_code == 200
    assert await rebuild(settings, "--rollback") == 0
    base = mongo[settings.mongo_db]
    pointer = await read_pointer(base)
    assert pointer.generation == 0
    assert pointer.previous is not None
    assert pointer.previous.generation == 1
    meta = await base[META].find_one({"_id": META_ID})
    assert meta is not None
    assert meta["position"] >= position
    assert "superseded_by" not in meta
    await caught_up(settings, client)
    # past its grace period, the generation rolled back from is dropped
    later = pointer.previous.retire_after
    assert await generations.retire_expired(base, later) == f"{settings.mongo_db}_g1"
    assert f"{settings.mongo_db}_g1" not in await mongo.list_database_names()
    assert (await read_pointer(base)).previous is None


async def test_a_second_rebuild_is_refused_and_told_who_holds_the_lock(
    pipeline_stack: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = await command.generations_lock(pipeline_stack)
    try:
        assert await lock.take() is None
        assert await rebuild(pipeline_stack) == command.REFUSED
    finally:
        await lock.release()
    err = capsys.readouterr().err
    assert "another rebuild is running: rebuild " in err
    assert "PostgreSQL backend" in err


def test_expected_changes_admit_fields_or_whole_collections() -> None:
    comparison = compare_module.Comparison(
        checked={}, changes={"orders.item_count": 3, "products.*": 1}, examples=[]
    )
    assert comparison.unexpected([]) == {"orders.item_count": 3, "products.*": 1}
    assert comparison.unexpected(["orders.item_count"]) == {"products.*": 1}
    assert comparison.unexpected(["orders.item_count", "products"]) == {}


async def test_a_rebuild_that_dies_after_the_pointer_moved_is_finished_by_the_next(
    served: tuple[Settings, httpx.AsyncClient],
    mongo: AsyncMongoClient[Document],
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, client = served
    await make_history(settings.database_url, rng, steps=15)
    await caught_up(settings, client)

    async def dies(*args: Any, **kwargs: Any) -> None:
        raise AutoReconnect("the store went away just after the pointer moved")

    with monkeypatch.context() as patched:
        patched.setattr(generations, "_switched", dies)
        assert await rebuild(settings) == 1
    base = mongo[settings.mongo_db]
    assert (await read_pointer(base)).generation == 1  # moved: the new generation serves
    assert await rebuild(settings) == 0  # the next run finishes the switch
    assert "resuming the rebuild of generation 1 at its switch" in capsys.readouterr().out
    old = await base[META].find_one({"_id": META_ID})
    assert old is not None
    assert old["superseded_by"] == f"{settings.mongo_db}_g1"
    assert await base[GENERATIONS].find_one({"_id": REBUILD_ID}) is None
    _, position = await create_product(client)
    assert (await client.get("/products", params={"after": position})).status_code == 200
    await caught_up(settings, client)


async def test_new_projection_code_that_fails_stops_the_rebuild_and_holds_nothing(
    served: tuple[Settings, httpx.AsyncClient],
    mongo: AsyncMongoClient[Document],
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, client = served
    await make_history(settings.database_url, rng, steps=10)
    await caught_up(settings, client)

    def broken(envelope: Any, data: Any) -> list[documents.Write]:
        raise KeyError("a bug in the new projection")

    with monkeypatch.context() as patched:
        patched.setitem(documents.PROJECTIONS, "ProductCreated", broken)
        # the rebuild runs in a thread of its own: the live projector (this thread) is
        # patched too, so only the rebuild's fold meets the bug before it is undone
        assert await rebuild(settings) == 1
    assert "The new projection code cannot apply this event" in capsys.readouterr().err
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM held_streams") == 0
    finally:
        await conn.close()
    assert (await read_pointer(mongo[settings.mongo_db])).generation == 0
    assert await rebuild(settings) == 0  # with the code fixed, it resumes and switches
    await caught_up(settings, client)
