"""Writing the read model: fenced batch writes, then the applied position (names and indexes:
app/contracts/readmodel.py; full rebuilds: app/projector/rebuild.py)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime

from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    DuplicateKeyError,
    InvalidOperation,
    OperationFailure,
)

from app.contracts.generations import FROZEN_UNTIL, SUPERSEDED_BY, meta_of, writable
from app.contracts.readmodel import COLLECTIONS, META, META_ID, CollectionName, Document
from app.projector import pipelines
from app.projector.coalescing import coalesce
from app.projector.deliveries import Decoded
from app.projector.documents import Write, project


class ReadModelLost(RuntimeError):
    """`meta` is missing or behind what the writer applied: the read model was dropped or the
    store lost writes. Reload the position from `meta` and re-apply from there."""


class GenerationMoving(ReadModelLost):
    """This generation is being switched away from (frozen) or was (superseded): refresh the
    `ReadModel` and reload the position (app/contracts/generations.py)."""

    @classmethod
    def of(cls, meta: Document) -> GenerationMoving:
        if SUPERSEDED_BY in meta:
            return cls(f"this read model generation was superseded by {meta[SUPERSEDED_BY]}")
        return cls(f"this read model generation is frozen until {meta.get(FROZEN_UNTIL)}")


class ProjectionFailed(RuntimeError):
    """A rebuild's projection of one log event failed for good (the new code's bug, or a store
    that refuses the result): the rebuild stops; a live projector would hold the stream."""

    def __init__(self, position: int, error: BaseException) -> None:
        super().__init__(f"projecting log event {position} failed: {error!r}")
        self.position, self.error = position, error


class InvalidEventData(ValueError):
    """A log event of a known type whose data does not match its type: it cannot be applied."""

    @classmethod
    def at(cls, position: int) -> InvalidEventData:
        return cls(f"the data of log event {position} does not match its type")


async def apply_events(
    db: AsyncDatabase[Document],
    events: Sequence[Decoded],
    expected: int | None = None,
    through: int | None = None,
) -> None:
    """Write `events` (in position order) to the documents, then store `through` (default: the
    last event's position) as applied. Idempotent: re-applying any prefix of the log changes
    nothing. With `expected` (the position the caller applied before), raises ReadModelLost
    when `meta` no longer holds at least that. Raises PyMongoError (connection, timeout) with
    some writes possibly done: retry it. Raises InvalidEventData, or whatever a projection or
    the store raises, for an event that cannot be applied (app/projector/poison.py); what was
    written before is fenced, so applying it all again later stays exact."""
    if through is None:
        if not events:
            return
        through = events[-1].position
    await write_documents(db, events)
    advance = {"$max": {"position": through}}
    now = datetime.now(UTC)
    if not expected:
        try:
            await db[META].update_one({"_id": META_ID, **writable(now)}, advance, upsert=True)
        except DuplicateKeyError:  # it exists, and does not match: frozen or superseded
            raise GenerationMoving.of(await meta_of(db)) from None
        return
    moved = await db[META].update_one(
        {"_id": META_ID, "position": {"$gte": expected}, **writable(now)}, advance
    )
    if moved.matched_count == 0:
        meta = await meta_of(db)
        if SUPERSEDED_BY in meta or (FROZEN_UNTIL in meta and meta.get("position", 0) >= expected):
            raise GenerationMoving.of(meta)
        raise ReadModelLost(f"the read model no longer holds position {expected}")


async def write_documents(db: AsyncDatabase[Document], events: Sequence[Decoded]) -> None:
    """The document writes of `events`, without moving the applied position (`apply_events`;
    also a held stream's release, app/operations/parked.py). Raises as `apply_events` does."""
    invalid = [e.position for e in events if e.skipped == "invalid-data"]
    if invalid:
        raise InvalidEventData.at(invalid[0])
    writes = [w for e in events if e.data is not None for w in project(e.envelope, e.data)]
    by_collection = {name: [w for w in writes if w.collection == name] for name in COLLECTIONS}
    batches = {name: batch for name, batch in by_collection.items() if batch}
    if not batches or await _write_in_one(db, batches):
        return
    # The collections at once: each write is fenced on its own, so their order does not
    # matter. On the Rust SecantusDB server this absorbs 30-40 % more events per second than
    # the same writes in turn, for batches of 16 to 256 events (docs/benchmarks.md; on its
    # Python server it was ~30 % fewer). The first failure is raised once all have ended.
    outcomes = await asyncio.gather(
        *(_write_collection(db[name], batch) for name, batch in batches.items()),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


# Clients whose server has no client-level bulkWrite (MongoDB before 8.0): one bulk write
# per collection for them.
_PER_COLLECTION: weakref.WeakSet[AsyncMongoClient[Document]] = weakref.WeakSet()


async def _write_in_one(
    db: AsyncDatabase[Document], batches: dict[CollectionName, list[Write]]
) -> bool:
    """Every collection's merged writes in one client-level bulkWrite (MongoDB 8.0+; the
    Rust SecantusDB server has it): one round trip and one pass through the driver instead
    of three, about half the driver's CPU. True when every merged write took effect; False
    when the batch must go per collection: the server lacks the command, or a merged fence
    did not hold or a write was refused (a redelivery), which the fenced path sorts out.
    Raises what the connection raises (transient: the batch is retried)."""
    client = db.client
    if client in _PER_COLLECTION:
        return False
    operations = [
        fast_operation(write, f"{db.name}.{name}")
        for name, batch in batches.items()
        for write in coalesce(batch)
    ]
    try:
        result = await client.bulk_write(operations, ordered=True)
    except InvalidOperation:
        _PER_COLLECTION.add(client)  # "requires MongoDB server version 8.0+"
        return False
    except ClientBulkWriteException:
        return False
    except OperationFailure as exc:
        if exc.code not in _NO_SUCH_COMMAND:
            raise
        _PER_COLLECTION.add(client)
        return False
    done = result.inserted_count + result.modified_count + result.upserted_count
    return done == len(operations)


_NO_SUCH_COMMAND = frozenset({59, 115})  # CommandNotFound, CommandNotSupported


async def _write_collection(collection: AsyncCollection[Document], writes: list[Write]) -> None:
    """One write per document (see app.projector.coalescing), each an update pipeline found by
    `_id` alone (app.projector.pipelines); if any document was already past the batch's start
    (its merged fence did not hold, so it changed nothing), fall back to one fenced write per
    event, which is always right."""
    merged = coalesce(writes)
    try:
        result = await collection.bulk_write([fast_operation(w) for w in merged], ordered=True)
        done = result.inserted_count + result.modified_count + result.upserted_count
        if done == len(merged):
            return
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise
    await write_ordered(collection, writes)


def fast_operation(write: Write, namespace: str | None = None) -> InsertOne[Document] | UpdateOne:
    """A write that creates its document (fenced before version 1) and only sets fields is an
    insert: much cheaper than a fenced upsert, and a duplicate key (the document exists, a
    redelivery) sends the batch down the fenced path."""
    if write.upsert and write.filter.get("version") == {"$lt": 1} and set(write.update) == {"$set"}:
        return InsertOne({"_id": write.filter["_id"], **write.update["$set"]}, namespace=namespace)
    return pipelines.operation(write, namespace)


async def write_ordered(collection: AsyncCollection[Document], writes: Sequence[Write]) -> None:
    """One fenced update per event, in order: a write already applied changes nothing. Raises
    BulkWriteError for a real refusal (say, a second product with the same sku)."""
    await collection.bulk_write([pipelines.operation(w) for w in writes], ordered=True)


async def drop(db: AsyncDatabase[Document]) -> None:
    for name in (*COLLECTIONS, META):
        await db.drop_collection(name)
