"""The read cache (app/queries/cache.py) against a real Redis: hits after misses, `after`
bypassing older entries, the projector's batches invalidating what they changed, and reads
from MongoDB, without a 5xx, when Redis is unreachable or hangs.

Every test keys its entries under a prefix of its own and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from starlette.applications import Starlette

from app.contracts.generations import ReadModel
from app.contracts.readmodel import META, META_ID, PRODUCTS, ensure_indexes
from app.plumbing import problems
from app.plumbing.settings import Settings
from app.queries.cache import ReadCache, open_read_cache, product_key
from app.queries.routes import QueryContext, routes
from app.queries.waiting import MongoPositionWaiter
from tests.support.servers import Server, free_port, http_client
from tests.support.waiting import eventually

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PRODUCT = "/products/{product_id}"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

Db = AsyncDatabase[dict[str, Any]]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"test-cache-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def keys_under(prefix: str) -> list[bytes]:
    client = Redis.from_url(REDIS_URL)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        await client.aclose()


def count(counter: Counter, **labels: str) -> float:
    """The value of `counter` with `labels` (0 before it was first counted)."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == labels:
                return sample.value
    return 0.0


# ---- the query endpoints over documents written straight into Mongo --------------------------


@pytest.fixture
async def db(mongo_url: str) -> AsyncIterator[Db]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    database = client[f"cache_test_{uuid.uuid4().hex[:12]}"]
    await ensure_indexes(database)
    await set_position(database, 5)
    yield database
    await client.drop_database(database.name)
    await client.close()


async def set_position(db: Db, position: int) -> None:
    await db[META].update_one({"_id": META_ID}, {"$set": {"position": position}}, True)


async def add_product(db: Db, sku: str, units_sold: int = 0) -> str:
    product_id = str(uuid.uuid4())
    await db[PRODUCTS].insert_one({
        "_id": product_id, "product_id": product_id, "sku": sku, "name": f"Product {sku}",
        "price_cents": 1250, "stock": 10, "units_sold": units_sold,
        "revenue_cents": units_sold * 1250, "version": 1, "position": 2, "created_at": T0,
        "updated_at": T0,
    })  # fmt: skip
    return product_id


async def set_stock(db: Db, product_id: str, stock: int) -> None:
    """A change the projector did not report: only `after` (or the entry's end) shows it."""
    await db[PRODUCTS].update_one({"_id": product_id}, {"$set": {"stock": stock}})


@contextlib.asynccontextmanager
async def query_server(
    db: Db, **cache_settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ReadCache]]:
    """The query routes over `db` with a read cache made from `cache_settings`."""
    settings = Settings(redis_url=REDIS_URL, **cache_settings)
    async with open_read_cache(settings) as cache:
        assert cache is not None
        model = ReadModel.fixed(db)
        app = Starlette(routes=routes())
        problems.install(app)
        app.state.queries = QueryContext(
            model=model,
            waiter=MongoPositionWaiter(model, poll_interval=0.02),
            read_wait_max_s=2.0,
            cache=cache,
        )
        server = Server(Settings(), app)
        await server.start()
        try:
            async with http_client(server.url, timeout=30) as http:
                yield http, cache
        finally:
            await server.stop()


async def test_a_product_is_served_from_the_cache_after_a_miss(db: Db, prefix: str) -> None:
    product_id = await add_product(db, "MUG-1")
    async with query_server(db, cache_key_prefix=prefix) as (http, cache):
        first = await http.get(f"/products/{product_id}")
        assert first.status_code == 200
        assert first.headers["x-read-position"] == "5"
        assert (count(cache.misses, route=PRODUCT), count(cache.hits, route=PRODUCT)) == (1, 0)
        assert any(key.endswith(product_id.encode()) for key in await keys_under(prefix))

        await set_position(db, 9)  # the read model moved on; this product did not change
        await set_stock(db, product_id, 3)  # ...as far as the cache was told
        again = await http.get(f"/products/{product_id}")
        assert again.status_code == 200
        assert again.content == first.content  # from the cache, not from Mongo
        # the position the entry reflects, never a later one than its content
        assert again.headers["x-read-position"] == "5"
        assert (count(cache.misses, route=PRODUCT), count(cache.hits, route=PRODUCT)) == (1, 1)


async def test_after_bypasses_an_entry_older_than_it(db: Db, prefix: str) -> None:
    product_id = await add_product(db, "MUG-1")
    async with query_server(db, cache_key_prefix=prefix) as (http, cache):
        assert (await http.get(f"/products/{product_id}")).json()["stock"] == 10  # kept at 5
        await set_stock(db, product_id, 3)
        await set_position(db, 7)
        stale = await http.get(f"/products/{product_id}")
        assert (stale.json()["stock"], stale.headers["x-read-position"]) == (10, "5")

        fresh = await http.get(f"/products/{product_id}", params={"after": 7})
        assert fresh.status_code == 200
        assert (fresh.json()["stock"], fresh.headers["x-read-position"]) == (3, "7")
        assert count(cache.misses, route=PRODUCT) == 2
        # the fresher answer replaced the entry: later reads get it, at its own position
        cached = await http.get(f"/products/{product_id}", params={"after": 6})
        assert (cached.json()["stock"], cached.headers["x-read-position"]) == (3, "7")
        assert count(cache.hits, route=PRODUCT) == 2


async def test_the_first_page_and_the_report_are_cached_later_pages_are_not(
    db: Db, prefix: str
) -> None:
    for i in range(3):
        await add_product(db, f"SKU-{i}", units_sold=i)
    async with query_server(db, cache_key_prefix=prefix) as (http, cache):
        for path, params in (("/products", {"limit": 2}), ("/reports/top-products", {})):
            first, again = [await http.get(path, params=params) for _ in range(2)]
            assert first.status_code == again.status_code == 200
            assert first.content == again.content
            assert (count(cache.misses, route=path), count(cache.hits, route=path)) == (1, 1)
        cursor = (await http.get("/products", params={"limit": 2})).json()["next_cursor"]
        assert cursor is not None
        for _ in range(2):
            second = await http.get("/products", params={"limit": 2, "cursor": cursor})
            assert [item["sku"] for item in second.json()["items"]] == ["SKU-2"]
        # a later page neither hits nor misses: it never goes through the cache
        hits, misses = count(cache.hits, route="/products"), count(cache.misses, route="/products")
        assert (hits, misses) == (2, 1)
        # another limit is another answer
        assert len((await http.get("/products", params={"limit": 3})).json()["items"]) == 3
        assert count(cache.misses, route="/products") == 2


async def test_an_answer_read_before_a_marked_change_is_not_kept(prefix: str) -> None:
    """The race of a read with a projector batch: the read got its answer at position 5, the
    batch stored position 7 and invalidated, then the read tries to keep its answer."""
    async with open_read_cache(Settings(redis_url=REDIS_URL, cache_key_prefix=prefix)) as cache:
        assert cache is not None
        product_id = str(uuid.uuid4())
        key = product_key(product_id)
        await cache.invalidate("shop", frozenset({product_id}), 7)
        await cache.put("shop", key, 5, b'{"stock": 10}')
        assert await cache.get("shop", key, after=0) is None
        await cache.put("shop", key, 7, b'{"stock": 3}')
        assert await cache.get("shop", key, after=0) == (7, b'{"stock": 3}')
        await cache.put("shop", key, 6, b'{"stock": 10}')  # a slower read: the newer one stays
        assert await cache.get("shop", key, after=0) == (7, b'{"stock": 3}')
        # the same product in another read-model database is another entry
        assert await cache.get("shop_g1", key, after=0) is None
        # a batch that changed another product leaves this entry alone
        await cache.invalidate("shop", frozenset({str(uuid.uuid4())}), 9)
        assert await cache.get("shop", key, after=0) == (7, b'{"stock": 3}')
        await cache.invalidate("shop", frozenset({product_id}), 9)
        assert await cache.get("shop", key, after=0) is None


async def test_a_missing_product_is_not_cached(db: Db, prefix: str) -> None:
    async with query_server(db, cache_key_prefix=prefix) as (http, cache):
        missing = str(uuid.uuid4())
        for _ in range(2):
            assert (await http.get(f"/products/{missing}")).status_code == 404
        assert count(cache.misses, route=PRODUCT) == 2
        assert await keys_under(prefix) == []


async def test_a_hung_redis_costs_a_read_its_timeout_and_no_more(db: Db, prefix: str) -> None:
    """A server that accepts connections and never answers: the first read waits for
    CACHE_TIMEOUT_S, then Redis rests and reads go straight to Mongo."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    hung = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    product_id = await add_product(db, "MUG-1")
    try:
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{port}/0",
            cache_key_prefix=prefix,
            cache_timeout_s=0.1,
            cache_retry_after_s=60,
        )
        async with open_read_cache(settings) as cache:
            assert cache is not None
            model = ReadModel.fixed(db)
            app = Starlette(routes=routes())
            problems.install(app)
            app.state.queries = QueryContext(
                model=model, waiter=MongoPositionWaiter(model, 0.02), read_wait_max_s=2.0,
                cache=cache,
            )  # fmt: skip
            server = Server(Settings(), app)
            await server.start()
            try:
                async with http_client(server.url, timeout=30) as http:
                    for _ in range(5):
                        started = time.monotonic()
                        response = await http.get(f"/products/{product_id}")
                        assert response.status_code == 200
                        assert response.json()["stock"] == 10
                        assert time.monotonic() - started < 1.0
            finally:
                await server.stop()
            assert count(cache.fallbacks, route=PRODUCT) == 5
            assert count(cache.errors, operation="get") == 1  # then it rested
            assert count(cache.hits, route=PRODUCT) == 0
    finally:
        for writer in held:
            writer.close()
        hung.close()
        await hung.wait_closed()


# ---- the whole app: commands, relay, projector, queries --------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    found = samples((await http.get("/metrics")).text)
    return found.get((name, frozenset(labels.items())), 0.0)


async def create_product(http: httpx.AsyncClient, sku: str, stock: int) -> tuple[str, int]:
    created = await http.post(
        "/products", json={"sku": sku, "name": sku, "price_cents": 100, "stock": stock}
    )
    assert created.status_code == 201, created.text
    return created.json()["product_id"], created.json()["position"]


@pytest.mark.slow
async def test_a_projector_batch_invalidates_what_it_changed(
    pipeline_stack: Settings, prefix: str
) -> None:
    # entries live an hour: only the projector's invalidation can make a read show a change
    settings = replace(pipeline_stack, redis_url=REDIS_URL, cache_key_prefix=prefix)
    server = Server(replace(settings, cache_ttl_s=3600))
    await server.start()
    try:
        async with http_client(server.url, timeout=30) as http:
            mug, _ = await create_product(http, "MUG-1", stock=5)
            cup, position = await create_product(http, "CUP-1", stock=5)
            paths = (f"/products/{mug}", f"/products/{cup}", "/products", "/reports/top-products")
            for path in paths:
                assert (await http.get(path, params={"after": position})).status_code == 200
                assert (await http.get(path)).status_code == 200
            assert await metric(http, "shop_read_cache_hits_total", route=PRODUCT) == 2
            assert await metric(http, "shop_read_cache_hits_total", route="/products") == 1

            restocked = await http.post(f"/products/{mug}/restock", json={"quantity": 3})
            restocked_at = restocked.json()["position"]
            lines = [{"product_id": cup, "quantity": 2}]
            placed = await http.post("/orders", json={"customer_id": "c1", "lines": lines})
            assert placed.status_code == 201

            async def shows(path: str, check: Any) -> bool:
                response = await http.get(path)  # no `after`: the cache answers when it can
                assert response.status_code == 200
                return bool(check(response.json()))

            def stock_of(product_id: str, stock: int) -> Any:
                return lambda page: (
                    {p["product_id"]: p["stock"] for p in page["items"]}.get(product_id) == stock
                )

            await eventually(lambda: shows(f"/products/{mug}", lambda p: p["stock"] == 8))
            await eventually(lambda: shows(f"/products/{cup}", lambda p: p["units_sold"] == 2))
            await eventually(lambda: shows("/products", stock_of(mug, 8)))
            await eventually(
                lambda: shows("/reports/top-products", lambda r: r["items"][0]["product_id"] == cup)
            )
            again = await http.get(f"/products/{mug}")
            assert int(again.headers["x-read-position"]) >= restocked_at
            assert await metric(http, "shop_read_cache_errors_total", operation="invalidate") == 0
    finally:
        await server.stop()


@pytest.mark.slow
async def test_an_unreachable_redis_means_reads_from_mongo_and_no_5xx(
    pipeline_stack: Settings, prefix: str
) -> None:
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    settings = replace(
        pipeline_stack, redis_url=nothing_there, cache_key_prefix=prefix, cache_retry_after_s=0.1
    )
    server = Server(settings)
    await server.start()
    try:
        async with http_client(server.url, timeout=30) as http:
            mug, position = await create_product(http, "MUG-1", stock=5)
            for path in (f"/products/{mug}", "/products", "/reports/top-products"):
                answer = await http.get(path, params={"after": position})
                assert answer.status_code == 200, answer.text
            restocked = await http.post(f"/products/{mug}/restock", json={"quantity": 3})
            read = await http.get(
                f"/products/{mug}", params={"after": restocked.json()["position"]}
            )
            assert (read.status_code, read.json()["stock"]) == (200, 8)
            statuses = {(await http.get(f"/products/{mug}")).status_code for _ in range(5)}
            assert statuses == {200}
            assert await metric(http, "shop_read_cache_fallbacks_total", route=PRODUCT) >= 7
            assert await metric(http, "shop_read_cache_errors_total", operation="get") >= 1
            assert await metric(http, "shop_read_cache_hits_total", route=PRODUCT) == 0
    finally:
        await server.stop()
