"""Contract of every projection: applying any prefix of a real log twice equals applying it once.

The history comes from the real command handlers against a fresh database, including
rolled-back transactions (positions that never commit), so the log has real gaps.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.commands import order_rules, orders, products
from app.commands.errors import InsufficientStock, InvalidTransition
from app.commands.outbox import EventMetadata
from app.contracts.eventlog import LoggedEvent, fetch_after
from app.contracts.events import Envelope
from app.plumbing.settings import Settings
from app.projector import readmodel
from app.projector import rebuild as rebuild_module
from app.projector.deliveries import Decoded, Gap, repaired
from app.projector.documents import COLLECTIONS
from app.projector.rebuild import rebuild

Document = dict[str, Any]
CUSTOMERS = ("alice", "bob", "carol", "dave")


class _Rollback(Exception):
    """Raised inside a transaction to roll it back after it drew positions."""


def _meta() -> EventMetadata:
    return EventMetadata(correlation_id=str(uuid.uuid4()))


async def _create_product(conn: asyncpg.Connection, rng: random.Random) -> uuid.UUID:
    cmd = products.CreateProduct(
        sku=f"SKU-{uuid.uuid4().hex[:10]}",
        name=f"Product {rng.randint(1, 999)}",
        price_cents=rng.randint(1, 5000),
        stock=rng.randint(0, 30),
    )
    async with conn.transaction():
        return (await products.create_product(conn, cmd, _meta())).product_id


async def _place(conn: asyncpg.Connection, rng: random.Random, ids: list[uuid.UUID]) -> uuid.UUID:
    lines = tuple(
        order_rules.LineRequest(product_id=p, quantity=rng.randint(1, 6))
        for p in rng.sample(ids, rng.randint(1, min(3, len(ids))))
    )
    cmd = order_rules.PlaceOrder(customer_id=rng.choice(CUSTOMERS), lines=lines)
    async with conn.transaction():
        return (await orders.place_order(conn, cmd, _meta())).order_id


async def _step(
    conn: asyncpg.Connection, rng: random.Random, ids: list[uuid.UUID], placed: list[uuid.UUID]
) -> None:
    roll = rng.random()
    if roll < 0.45:
        placed.append(await _place(conn, rng, ids))
    elif roll < 0.8 and placed:
        action: orders.Action = rng.choice(("pay", "pay", "ship", "cancel"))
        async with conn.transaction():
            await orders.transition_order(conn, rng.choice(placed), action, None, _meta())
    elif roll < 0.9:
        async with conn.transaction():
            cmd = products.RestockProduct(quantity=rng.randint(1, 20))
            await products.restock_product(conn, rng.choice(ids), cmd, _meta())
    else:
        async with conn.transaction():
            await _place(conn, rng, ids)
            raise _Rollback


async def _every_transition(
    conn: asyncpg.Connection, rng: random.Random, ids: list[uuid.UUID]
) -> None:
    """Make sure every event type occurs: restock, then cancel a paid and a placed order."""
    for product_id in ids:
        async with conn.transaction():
            cmd = products.RestockProduct(quantity=50)
            await products.restock_product(conn, product_id, cmd, _meta())
    for actions in (("pay", "cancel"), ("cancel",), ("pay", "ship")):
        order_id = await _place(conn, rng, ids)
        for action in actions:
            async with conn.transaction():
                await orders.transition_order(conn, order_id, action, None, _meta())


async def make_history(dsn: str, rng: random.Random, steps: int = 80) -> list[LoggedEvent]:
    """Run random commands through the real handlers; return the committed log."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = [await _create_product(conn, rng) for _ in range(5)]
        placed: list[uuid.UUID] = []
        for _ in range(steps):
            with contextlib.suppress(InsufficientStock, InvalidTransition, _Rollback):
                await _step(conn, rng, ids, placed)
        await _every_transition(conn, rng, ids)
        return await fetch_after(conn, 0, 1_000_000)
    finally:
        await conn.close()


def decoded(logged: list[LoggedEvent]) -> list[Decoded]:
    return repaired(Gap(after=0, through=logged[-1].position), logged)


def envelopes(logged: list[LoggedEvent]) -> list[Envelope]:
    return [d.envelope for d in decoded(logged)]


async def snapshot(db: AsyncDatabase[Document]) -> dict[str, list[Document]]:
    return {
        name: [doc async for doc in db[name].find().sort("_id", 1)]
        for name in (*COLLECTIONS, readmodel.META)
    }


@pytest.fixture
async def mongo_db(settings: Settings) -> AsyncIterator[AsyncDatabase[Document]]:
    """This test's own Mongo database, dropped afterwards."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    yield client[settings.mongo_db]
    await client.drop_database(settings.mongo_db)
    await client.close()


async def _apply_in_batches(
    db: AsyncDatabase[Document], events: list[Decoded], rng: random.Random
) -> None:
    start = 0
    while start < len(events):
        size = rng.randint(1, 25)
        await readmodel.apply_events(db, events[start : start + size])
        start += size


async def test_applying_any_prefix_twice_equals_once(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document]
) -> None:
    rng = random.Random(uuid.uuid4().int)
    events = decoded(await make_history(fresh_database_url, rng))
    assert len({e.envelope.type for e in events}) == 8, "the history covers every event type"
    assert any(e.envelope.prev_position != e.position - 1 for e in events), "the log has gaps"
    prefixes = [*sorted(rng.sample(range(1, len(events)), 4)), len(events)]
    for k in prefixes:
        await readmodel.drop(mongo_db)
        await readmodel.ensure_indexes(mongo_db)
        await _apply_in_batches(mongo_db, events[:k], rng)
        once = await snapshot(mongo_db)
        assert once["meta"] == [{"_id": "projection", "position": events[k - 1].position}]
        await _apply_in_batches(mongo_db, events[:k], rng)
        assert await snapshot(mongo_db) == once, f"prefix of {k} events applied twice"
        await _apply_in_batches(mongo_db, events[: rng.randint(1, k)], rng)
        assert await snapshot(mongo_db) == once, f"a shorter prefix re-applied after {k}"


async def test_batches_equal_one_event_at_a_time_even_after_a_partial_batch(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document]
) -> None:
    """Batches fold each document's writes into one (app.projector.coalescing); a batch that
    finds documents already partly through it (a crash mid-batch, then redelivery) must still
    end exactly where applying one event at a time ends."""
    rng = random.Random(uuid.uuid4().int)
    events = decoded(await make_history(fresh_database_url, rng))
    await readmodel.ensure_indexes(mongo_db)
    for event in events:
        await readmodel.apply_events(mongo_db, [event])
    reference = await snapshot(mongo_db)
    for _ in range(3):
        await readmodel.drop(mongo_db)
        await readmodel.ensure_indexes(mongo_db)
        start = rng.randrange(len(events))
        end = rng.randint(start + 1, len(events))
        crashed_at = rng.randint(start, end)
        await _apply_in_batches(mongo_db, events[:start], rng)
        for event in events[start:crashed_at]:  # part of the batch landed before the crash
            await readmodel.apply_events(mongo_db, [event])
        await readmodel.apply_events(mongo_db, events[start:end])
        await _apply_in_batches(mongo_db, events[end:], rng)
        assert await snapshot(mongo_db) == reference, (start, crashed_at, end)


async def test_a_rebuild_in_chunks_equals_the_projector(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document]
) -> None:
    """The rebuild folds chunks of the log in memory (app.projector.folding): it must store
    exactly what the projector's fenced writes produce, also when documents span chunks."""
    rng = random.Random(uuid.uuid4().int)
    events = decoded(await make_history(fresh_database_url, rng))
    await readmodel.ensure_indexes(mongo_db)
    await _apply_in_batches(mongo_db, events, rng)
    projected = await snapshot(mongo_db)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    assert pool is not None
    async with pool:
        for chunk in (7, 10_000):
            assert await rebuild(pool, mongo_db, batch_size=chunk) == events[-1].position
            assert await snapshot(mongo_db) == projected, f"rebuilt in chunks of {chunk}"


async def test_a_failed_rebuild_claims_no_position(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`meta` is written last: a rebuild that fails halfway leaves a read model that claims
    nothing, so a projector started on it applies the log from position 0."""
    rng = random.Random(uuid.uuid4().int)
    events = await make_history(fresh_database_url, rng)
    reads = 0

    async def failing_fetch(conn: asyncpg.Connection, after: int, limit: int) -> list[LoggedEvent]:
        nonlocal reads
        reads += 1
        if reads > 2:
            raise asyncpg.PostgresConnectionError("the log went away")
        return await fetch_after(conn, after, limit)

    monkeypatch.setattr(rebuild_module, "fetch_after", failing_fetch)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    assert pool is not None
    async with pool:
        with pytest.raises(asyncpg.PostgresConnectionError):
            await rebuild(pool, mongo_db, batch_size=len(events) // 4)
    assert reads == 3, "it failed on its third read, after two chunks"
    assert await readmodel.load_position(mongo_db) == 0
