"""The read store's own capacity for the projector's writes: the ceiling of the lag scenario.

Every order costs the read model a few document writes (the order inserted, each product line
and the customer updated, fenced). How many of those the Mongo server absorbs per second bounds
the rate at which any projector can keep the commit-to-visible lag flat, whatever the rest of
the pipeline does. This measures it with nothing else in the way: the events of the copied log
are projected and folded per batch (`project`, `coalesce`: the very writes the projector sends
for a batch of that size, as the same statements: `readmodel.statements`) before the clock
starts; then only the store's calls run, per collection and batch the read of which upserts'
documents exist (when there are any), then the batch's statements as the projector sends them
(`readmodel.as_one_command`): one client-level `bulkWrite` where the server takes it and they
are few enough, else one ordered `bulk_write` per collection, the collections at once; into a
scratch database with the read model's indexes. No broker, no decoding, no applied position,
no acks.

Expressed as events/s and orders/s (OrderPlaced events in the replayed log / seconds).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from pymongo import AsyncMongoClient

from app.contracts.eventlog import fetch_after
from app.contracts.readmodel import COLLECTIONS, ensure_indexes
from app.projector import readmodel
from app.projector.coalescing import coalesce
from app.projector.deliveries import decode_logged
from app.projector.documents import Write, project

# per collection: the `_id`s whose existence the projector reads first, and the statements
Operations = list[tuple[str, list[Any], list[readmodel.Statement]]]


@dataclass(frozen=True)
class ReadStoreFigures:
    events: int
    orders: int
    batch_size: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def orders_per_s(self) -> float:
        return self.orders / self.seconds


async def _batches(
    dsn: str, limit: int, batch_size: int, database: str
) -> tuple[list[Operations], int, int]:
    """The log's first `limit` events as the projector's bulk writes, batch by batch, each
    statement naming its collection of `database` (for a client-level bulk write)."""
    conn = await asyncpg.connect(dsn)
    try:
        logged = await fetch_after(conn, 0, limit)
    finally:
        await conn.close()
    batches: list[Operations] = []
    written: dict[str, set[Any]] = {name: set() for name in COLLECTIONS}  # what the replay made
    orders = 0
    for start in range(0, len(logged), batch_size):
        writes: list[Write] = []
        for event in logged[start : start + batch_size]:
            decoded = decode_logged(event, event.position - 1)
            orders += decoded.envelope.type == "OrderPlaced"
            if decoded.data is not None:
                writes += project(decoded.envelope, decoded.data)
        batch: Operations = []
        for name in COLLECTIONS:
            merged = coalesce([w for w in writes if w.collection == name])
            if merged:
                wanted = readmodel.lookups(merged)
                statements = readmodel.statements(merged, written[name], f"{database}.{name}")
                batch.append((name, wanted, statements))
                written[name].update(w.filter["_id"] for w in merged if w.upsert)
        batches.append(batch)
    return batches, len(logged), orders


async def run(
    dsn: str, mongo: AsyncMongoClient[dict[str, Any]], scratch_db: str, limit: int,
    batch_size: int,
) -> ReadStoreFigures:  # fmt: skip
    """Replay the first `limit` events of the log at `dsn` into `scratch_db` as raw writes."""
    batches, events, orders = await _batches(dsn, limit, batch_size, scratch_db)
    db = mongo[scratch_db]
    await ensure_indexes(db)
    started = time.perf_counter()
    for batch in batches:
        await asyncio.gather(*(readmodel.existing(db[name], wanted) for name, wanted, _ in batch))
        models = [s for *_, statements in batch for s in statements]
        if readmodel.as_one_command(db, len(batch), len(models)):
            await mongo.bulk_write(models, ordered=True)
            continue
        await asyncio.gather(*(db[name].bulk_write(s, ordered=True) for name, _, s in batch))
    seconds = time.perf_counter() - started
    return ReadStoreFigures(events=events, orders=orders, batch_size=batch_size, seconds=seconds)
