"""Rebuilding the read model from the whole log (disaster recovery, benchmarks).

The log is read in chunks of `batch_size` events, straight from PostgreSQL, and folded in
memory (app.projector.folding) into documents. A document is stored once it stops changing:
when a chunk leaves it untouched it is written (inserted if new, replaced if stored before)
while the next chunk is read and folded; what the last chunk touched is written at the end.
So reading, decoding and folding (this process's CPU) overlap the writes (the store's), a
document that every chunk touches (a popular product) is written once rather than once per
chunk, and memory holds about two chunks' documents. `meta` is written last: until then the
read model claims no position, and a projector started after a failed rebuild applies the log
from position 0, which its fenced writes make exact.

The garbage collector's automatic runs are paused while the log is folded (see
`_COLLECT_EVERY`).
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import heapq
import logging
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from pymongo import InsertOne, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from app.contracts.eventlog import fetch_after
from app.contracts.readmodel import (
    COLLECTIONS,
    META,
    META_ID,
    CollectionName,
    Document,
    ensure_indexes,
)
from app.plumbing import collector
from app.projector import holds
from app.projector.deliveries import Decoded, decode_logged
from app.projector.documents import Write, project
from app.projector.folding import apply_owned, own
from app.projector.readmodel import InvalidEventData, ProjectionFailed, drop

log = logging.getLogger(__name__)

Key = tuple[CollectionName, Any]  # (collection, _id)
_MERGE_AT = 65_536  # written keys kept in a set before they join the sorted array
# Everything a chunk makes (rows, events, writes, documents) is freed by reference counting:
# a rebuild of 200,000 events left no cyclic garbage at all. But it stays in use for the whole
# chunk, so each automatic collection of the youngest generation scanned ~100,000 live objects
# in vain (~50 ms each, 15 % of a rebuild's CPU, docs/benchmarks.md). So the fold runs with the
# automatic collector paused, and collects whatever cycles there might be itself, once per this
# many chunks (500,000 events at the default chunk size).
_COLLECT_EVERY = 50


async def rebuild(
    pool: asyncpg.Pool,
    db: AsyncDatabase[Document],
    batch_size: int = 10_000,
    progress: Callable[[int], None] | None = None,
    through: int | None = None,
) -> int:
    """Drop the read model in `db` and project the log from position 0 into it (up to and
    including `through`, default: all of it), telling `progress` each position folded. Returns
    the applied position. No projector may write `db` meanwhile (the online rebuild fills a new
    generation, `through` a position below which every event has committed or never will: the
    relay's checkpoint). Held streams stay held: their parked events and every later one of
    theirs are parked, not applied; a log event whose data does not decode is parked and holds
    its stream, as the projector does. Raises ProjectionFailed when a projection raises."""
    await drop(db)
    await ensure_indexes(db)
    store = _Store(db)
    held: dict[Key, Document | None] = {}  # folded documents the latest chunk touched
    position = 0
    async with pool.acquire() as conn:
        held_from = await holds.held_from(conn)
    chunks = 0
    with collector.paused():
        try:
            while True:
                if through is not None and position >= through:
                    break
                async with pool.acquire() as conn:
                    logged = await fetch_after(conn, position, batch_size)
                if through is not None:
                    logged = [event for event in logged if event.position <= through]
                if not logged:
                    break
                chunks += 1
                if chunks % _COLLECT_EVERY == 0:
                    gc.collect()  # the automatic collector is paused: see _COLLECT_EVERY
                decoded = [decode_logged(event, position) for event in logged]
                position = logged[-1].position
                writes = await _writes_of(pool, decoded, held_from)
                touched = await store.fold(writes, held)
                settled = {key: held.pop(key) for key in list(held) if key not in touched}
                await store.write_soon(settled)
                log.debug("read model folded up to position %d", position)
                if progress is not None:
                    progress(position)
            await store.write_soon(held)
            await store.flush()
        finally:
            store.abandon()
    if through is not None:
        position = max(position, through)  # what is missing up to it was rolled back
    if position:
        await db[META].update_one({"_id": META_ID}, {"$max": {"position": position}}, upsert=True)
    return position


async def _writes_of(
    pool: asyncpg.Pool, events: list[Decoded], held_from: dict[holds.Stream, int]
) -> list[Write]:
    """The writes of `events`, parking (and not applying) those of held streams."""
    writes: list[Write] = []
    behind: list[Decoded] = []
    async with pool.acquire() as conn:
        for event in events:
            stream = holds.stream_of(event)
            if stream in held_from and event.position >= held_from[stream]:
                behind.append(event)
            elif event.skipped == "invalid-data":
                await holds.hold(
                    conn, event, InvalidEventData.at(event.position), 1, datetime.now(UTC)
                )
                held_from[stream] = event.position
            elif event.data is not None:
                try:
                    writes += project(event.envelope, event.data)
                except Exception as exc:
                    raise ProjectionFailed(event.position, exc) from exc
        await holds.park_behind(conn, behind)
    return writes


class _Written:
    """The keys of the documents written so far, in about 8 bytes each, so the memory of a
    rebuild does not grow with the read model: 64-bit hashes, the older ones in a sorted array,
    the latest in a set merged into it as it grows. A collision can only make a new document
    look written; it is then looked for (not found) and upserted, which is still right."""

    def __init__(self) -> None:
        self._sorted = array("q")
        self._recent: set[int] = set()

    def __contains__(self, key: Key) -> bool:
        digest = hash(key)
        if digest in self._recent:
            return True
        at = bisect.bisect_left(self._sorted, digest)
        return at < len(self._sorted) and self._sorted[at] == digest

    def add(self, key: Key) -> None:
        self._recent.add(hash(key))
        if len(self._recent) >= max(_MERGE_AT, len(self._sorted) // 4):  # amortised O(1)
            self._sorted = array("q", heapq.merge(self._sorted, sorted(self._recent)))
            self._recent = set()


class _Store:
    """The rebuilt documents on their way to MongoDB: one write in flight at a time, and the
    current state of any document a later chunk touches again."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._stored = _Written()  # written, or being written
        self._writing: dict[Key, Document | None] = {}  # the write in flight
        self._task: asyncio.Task[None] | None = None

    async def fold(self, writes: list[Write], held: dict[Key, Document | None]) -> set[Key]:
        """Apply `writes` in order to the documents in `held`, loading first the ones that an
        earlier write stored; returns the keys they touched."""
        keys = {(w.collection, w.filter["_id"]) for w in writes}
        await self._load([key for key in keys if key not in held], held)
        # A document is copied once per chunk, then changed in place: the one in flight
        # (shared with `_writing`) or kept from an earlier chunk is never changed.
        owned: set[Key] = set()
        for write in writes:
            key = (write.collection, write.filter["_id"])
            document = held.get(key)
            if key not in owned and document is not None:
                document = own(document)
            document = held[key] = apply_owned(document, write)
            if document is not None:
                owned.add(key)
        return keys

    async def _load(self, keys: list[Key], held: dict[Key, Document | None]) -> None:
        missing: dict[CollectionName, list[Any]] = {}
        for key in keys:
            if key in self._writing:
                held[key] = self._writing[key]
            elif key in self._stored:  # written by a write that has completed
                missing.setdefault(key[0], []).append(key[1])
        for name, ids in missing.items():
            async for document in self._db[name].find({"_id": {"$in": ids}}):
                held[(name, document["_id"])] = document

    async def write_soon(self, documents: dict[Key, Document | None]) -> None:
        """Start writing `documents` once the write in flight is done (raising its error)."""
        await self.flush()
        operations: dict[CollectionName, list[InsertOne[Document] | ReplaceOne[Document]]] = {}
        for key, document in documents.items():
            if document is None:  # a write to a document that never came to exist
                continue
            operation = (
                ReplaceOne({"_id": key[1]}, document, upsert=True)
                if key in self._stored
                else InsertOne(document)
            )
            operations.setdefault(key[0], []).append(operation)
            self._stored.add(key)
        self._writing = documents
        self._task = asyncio.create_task(self._write(operations))

    async def _write(
        self, operations: dict[CollectionName, list[InsertOne[Document] | ReplaceOne[Document]]]
    ) -> None:
        # In turn: a failed rebuild cancels the write in flight (`abandon`); with three bulk
        # writes cancelled at once, PyMongo 4.20 left a socket unclosed (a ResourceWarning in
        # test_a_failed_rebuild_claims_no_position), and at once was no faster here.
        for name in COLLECTIONS:
            if operations.get(name):
                await self._db[name].bulk_write(operations[name], ordered=False)

    async def flush(self) -> None:
        """Wait for the write in flight; raises what it raised."""
        if self._task is not None:
            task, self._task = self._task, None
            await task
        self._writing = {}

    def abandon(self) -> None:
        """Stop a write still in flight: the rebuild failed, and its own error is the one to
        report (a finished write's error is marked as seen)."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()
