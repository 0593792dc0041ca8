"""`verify` against a read model rebuilt from a real log: exact, then tampered with; and the
`python -m app rebuild` command."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiormq.abc
import asyncpg
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.contracts import topology as broker
from app.operations import rebuild as rebuild_command
from app.operations.verify import main, verify
from app.plumbing.resources import connect_broker
from app.plumbing.settings import Settings
from app.projector.rebuild import rebuild
from tests.support.histories import make_history
from tests.support.stacks import fresh_stack

Document = dict[str, Any]
OFFLINE = rebuild_command.parse(["--offline"])


@pytest.fixture
async def env(settings: Settings, migrated_template: str) -> AsyncIterator[Settings]:
    """The test's settings on a fresh database; the whole stack removed afterwards."""
    async with fresh_stack(settings, migrated_template) as stack:
        yield stack


@pytest.fixture
async def rebuilt(env: Settings, rng: random.Random) -> AsyncIterator[AsyncDatabase[Document]]:
    """A read model rebuilt from a random history."""
    log = await make_history(env.database_url, rng, steps=40)
    client: AsyncMongoClient[Document] = AsyncMongoClient(env.mongo_url, tz_aware=True)
    pool = await asyncpg.create_pool(env.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        db = client[env.mongo_db]
        assert await rebuild(pool, db, batch_size=7) == log[-1].position
        yield db
    finally:
        await pool.close()
        await client.close()


async def test_a_rebuilt_read_model_verifies_exact(
    env: Settings, rebuilt: AsyncDatabase[Document]
) -> None:
    report = await verify(env, wait_s=1)
    assert report.differences == []
    assert report.ok
    assert report.checked["orders"] > 0
    assert await asyncio.to_thread(main, env) == 0


async def test_verify_reports_every_kind_of_difference(
    env: Settings, rebuilt: AsyncDatabase[Document]
) -> None:
    product = await rebuilt.products.find_one()
    order = await rebuilt.orders.find_one()
    assert product is not None
    assert order is not None
    await rebuilt.products.update_one({"_id": product["_id"]}, {"$inc": {"stock": 1}})
    await rebuilt.orders.delete_one({"_id": order["_id"]})
    await rebuilt.customers.insert_one({"_id": "ghost", "order_count": 1})
    report = await verify(env, wait_s=1)
    found = {(d.collection, d.id, d.field) for d in report.differences}
    assert found == {
        ("products", product["_id"], "stock"),
        ("orders", order["_id"], "*"),
        ("customers", "ghost", "*"),
    }
    assert await asyncio.to_thread(main, env) == 1


async def test_verify_notices_a_read_model_that_lags(
    env: Settings, rebuilt: AsyncDatabase[Document]
) -> None:
    await rebuilt.meta.update_one({"_id": "projection"}, {"$inc": {"position": -1}})
    report = await verify(env, wait_s=0.2)
    assert not report.caught_up
    assert not report.ok


async def test_the_rebuild_command_refills_the_read_model(
    env: Settings, rng: random.Random
) -> None:
    """`python -m app rebuild`: from the log into an empty or damaged read model, verified."""
    await make_history(env.database_url, rng, steps=30)
    client: AsyncMongoClient[Document] = AsyncMongoClient(env.mongo_url, tz_aware=True)
    try:
        await client[env.mongo_db].orders.insert_one({"_id": "stray", "status": "bogus"})
        assert await asyncio.to_thread(rebuild_command.main, env, OFFLINE) == 0
        assert await client[env.mongo_db].orders.find_one({"_id": "stray"}) is None
        report = await verify(env, wait_s=1)
        assert report.ok, report.differences
    finally:
        await client.close()


async def test_the_rebuild_command_refuses_while_a_projector_consumes(env: Settings) -> None:
    connection = await connect_broker(env)
    client: AsyncMongoClient[Document] = AsyncMongoClient(env.mongo_url, tz_aware=True)
    try:
        channel = await connection.channel()
        await broker.declare_topology(channel, env)

        async def ignore(message: aiormq.abc.DeliveredMessage) -> None:
            pass

        await channel.basic_consume(env.projector_queue, ignore)
        await client[env.mongo_db].orders.insert_one({"_id": "kept"})
        assert await asyncio.to_thread(rebuild_command.main, env, OFFLINE) == 2
        assert await client[env.mongo_db].orders.find_one({"_id": "kept"}) is not None
    finally:
        await connection.close()
        await client.close()
