"""Read-model rebuild from the log, beside a raw bulk insert of the same final documents.

The first `limit` events of the run's log (all of it when it is shorter) are copied, in
position order, into a scratch PostgreSQL database, so the rebuild's length is bounded
whatever the earlier scenarios wrote. `app.projector.rebuild.rebuild` then runs from
position 0 of that log into a scratch Mongo database. The ceiling reads the rebuilt
collections back and inserts them, with the same indexes in place, into a second scratch
database with unordered `insert_many` batches. Both are expressed as events per second.
The two run in turn `rounds` times (each round on fresh databases), and the figures are
their sums: a machine getting busier or quieter meanwhile weighs on both alike, as the GET
scenario does. Each round's ratio is kept too, to show the spread.

The rebuild runs with the garbage collector set as `python -m app rebuild` sets it
(app/operations/rebuild.py, `YOUNG_EVERY`), the bench's own settings back before the ceiling.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.contracts.readmodel import COLLECTIONS, META, ensure_indexes
from app.operations import rebuild as rebuild_command
from app.plumbing import collector
from app.projector.rebuild import rebuild

_BATCH = 1000


@dataclass(frozen=True)
class RebuildFigures:
    events: int
    documents: int
    rebuild_s: tuple[float, ...]  # each round's
    raw_s: tuple[float, ...]

    @property
    def rebuild_rate(self) -> float:
        return self.events * len(self.rebuild_s) / sum(self.rebuild_s)

    @property
    def raw_rate(self) -> float:
        return self.events * len(self.raw_s) / sum(self.raw_s)

    @property
    def ratio(self) -> float:
        return sum(self.raw_s) / sum(self.rebuild_s)

    @property
    def round_ratios(self) -> tuple[float, ...]:
        return tuple(round(r / b, 3) for r, b in zip(self.raw_s, self.rebuild_s, strict=True))


_COLUMNS = ("event_id", "stream_type", "stream_id", "stream_version", "type", "schema_version",
            "data", "metadata", "occurred_at")  # fmt: skip


async def copy_log(source_dsn: str, target_dsn: str, limit: int) -> None:
    """The first `limit` events of the source log appended, in order, to the target log
    (whose trigger draws positions 1, 2, ... again)."""
    source, target = await asyncpg.connect(source_dsn), await asyncpg.connect(target_dsn)
    try:
        records = await source.fetch(
            f"SELECT {', '.join(_COLUMNS)} FROM events ORDER BY position LIMIT $1", limit
        )
        await target.copy_records_to_table("events", records=records, columns=_COLUMNS)
    finally:
        await source.close()
        await target.close()


@contextlib.contextmanager
def _collector_of_the_command() -> Iterator[None]:
    threshold = gc.get_threshold()
    collector.settle(rebuild_command.YOUNG_EVERY)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def run(
    dsn: str,
    mongo: AsyncMongoClient[dict[str, Any]],
    rebuilt_db: str,
    raw_db: str,
    rounds: int = 1,
) -> RebuildFigures:
    """Rebuild from the log at `dsn` into `rebuilt_db`, then the raw ceiling into `raw_db`,
    `rounds` times in turn."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    rebuilds: list[float] = []
    raws: list[float] = []
    target, raw = mongo[rebuilt_db], mongo[raw_db]
    try:
        async with pool.acquire() as conn:
            events: int = await conn.fetchval("SELECT count(*) FROM events")
        documents: dict[str, list[dict[str, Any]]] = {}
        for _ in range(rounds):
            with _collector_of_the_command():
                started = time.perf_counter()
                await rebuild(pool, target)  # drops what the round before built
                rebuilds.append(time.perf_counter() - started)
            if not documents:
                documents = {
                    name: await target[name].find({}).to_list() for name in (*COLLECTIONS, META)
                }
            await mongo.drop_database(raw_db)
            raws.append(await _insert_raw(raw, documents))
    finally:
        await pool.close()
    total = sum(len(docs) for docs in documents.values())
    return RebuildFigures(events, total, tuple(rebuilds), tuple(raws))


async def _insert_raw(
    raw: AsyncDatabase[dict[str, Any]], documents: dict[str, list[dict[str, Any]]]
) -> float:
    """Seconds to create the indexes and insert `documents` in unordered batches."""
    started = time.perf_counter()
    await ensure_indexes(raw)
    for name, docs in documents.items():
        for start in range(0, len(docs), _BATCH):
            await raw[name].insert_many(docs[start : start + _BATCH], ordered=False)
    return time.perf_counter() - started
