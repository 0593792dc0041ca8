"""Writing the read model: fenced batch writes, then the applied position (names and indexes:
app/contracts/readmodel.py; full rebuilds: app/projector/rebuild.py).

A batch goes to the store one of two ways, with the same result:

- **In one transaction** (`_apply_at_once`), when the server runs multi-document transactions
  and MongoDB 8.0's client-level `bulkWrite` (a replica set or mongos of MongoDB 8.0 or later,
  and both SecantusDB servers; asked once per client with `hello`): every document write of
  the batch and the move of the applied position in one command, committed only when every
  write applied. One commit per batch: SecantusDB with `--sync-on-commit` syncs its log once
  per commit, and a commit per document made the writes of a batch cost 4-6 times more
  (docs/benchmarks.md). A batch that does not apply cleanly (a fence that did not hold after
  a redelivery, a refused write, `meta` moved) is aborted, nothing written, and goes the
  second way, which sorts out which.
- **Per collection** (a standalone `mongod`, MongoDB 7, or after such an abort): the
  collections' writes at once, then the applied position. `meta` is written last, so it never
  claims a write the store does not hold.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)

from app.contracts.generations import FROZEN_UNTIL, SUPERSEDED_BY, meta_of, writable
from app.contracts.readmodel import COLLECTIONS, META, META_ID, CollectionName, Document
from app.projector import pipelines
from app.projector.coalescing import coalesce
from app.projector.deliveries import Decoded
from app.projector.documents import Write, project

log = logging.getLogger(__name__)

_BULK_WRITE_WIRE_VERSION: Final = 25  # MongoDB 8.0: the client-level bulkWrite command
# IllegalOperation, CommandNotFound, CommandNotSupported, OperationNotSupportedInTransaction:
# a server that said it runs transactions and bulkWrite, but does not
_UNSUPPORTED_CODES: Final = frozenset({20, 59, 115, 263})
# id(client) -> whether it writes a batch in one transaction, forgotten with the client. By
# identity: clients compare equal when their options do, and one's setting is not another's.
_AT_ONCE: dict[int, bool] = {}


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
    batches = _batches(events)
    now = datetime.now(UTC)
    if await in_one_transaction(db.client) and await _apply_at_once(
        db, batches, expected, through, now
    ):
        return
    await _write_batches(db, batches)
    advance = {"$max": {"position": through}}
    if not expected:
        try:
            await db[META].update_one(_meta_filter(expected, now), advance, upsert=True)
        except DuplicateKeyError:  # it exists, and does not match: frozen or superseded
            raise GenerationMoving.of(await meta_of(db)) from None
        return
    moved = await db[META].update_one(_meta_filter(expected, now), advance)
    if moved.matched_count == 0:
        meta = await meta_of(db)
        if SUPERSEDED_BY in meta or (FROZEN_UNTIL in meta and meta.get("position", 0) >= expected):
            raise GenerationMoving.of(meta)
        raise ReadModelLost(f"the read model no longer holds position {expected}")


def _meta_filter(expected: int | None, now: datetime) -> dict[str, Any]:
    """`meta` of a generation whose position may move and (with `expected`) holds it."""
    if not expected:
        return {"_id": META_ID, **writable(now)}
    return {"_id": META_ID, "position": {"$gte": expected}, **writable(now)}


async def write_documents(db: AsyncDatabase[Document], events: Sequence[Decoded]) -> None:
    """The document writes of `events`, without moving the applied position (`apply_events`;
    also a held stream's release, app/operations/parked.py). Raises as `apply_events` does."""
    await _write_batches(db, _batches(events))


def _batches(events: Sequence[Decoded]) -> dict[CollectionName, list[Write]]:
    """The writes of `events` per collection, in order. Raises InvalidEventData."""
    invalid = [e.position for e in events if e.skipped == "invalid-data"]
    if invalid:
        raise InvalidEventData.at(invalid[0])
    writes = [w for e in events if e.data is not None for w in project(e.envelope, e.data)]
    by_collection = {name: [w for w in writes if w.collection == name] for name in COLLECTIONS}
    return {name: batch for name, batch in by_collection.items() if batch}


async def _write_batches(
    db: AsyncDatabase[Document], batches: dict[CollectionName, list[Write]]
) -> None:
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


async def in_one_transaction(client: AsyncMongoClient[Any]) -> bool:
    """Whether `client`'s server takes a batch in one transaction (see the module docstring):
    asked once, with `hello`. Raises PyMongoError."""
    known = _AT_ONCE.get(id(client))
    if known is None:
        hello = await client.admin.command("hello")
        known = (
            ("setName" in hello or hello.get("msg") == "isdbgrid")
            and "logicalSessionTimeoutMinutes" in hello
            and hello.get("maxWireVersion", 0) >= _BULK_WRITE_WIRE_VERSION
        )
        use_one_transaction(client, known)
    return known


def use_one_transaction(client: AsyncMongoClient[Any], enabled: bool) -> None:
    """Write batches through `client` in one transaction or per collection from now on."""
    if id(client) not in _AT_ONCE:
        weakref.finalize(client, _AT_ONCE.pop, id(client), None)
    _AT_ONCE[id(client)] = enabled
    log.info(
        "read model batches are written %s",
        "in one transaction each" if enabled else "per collection, then the applied position",
    )


async def _apply_at_once(
    db: AsyncDatabase[Document],
    batches: dict[CollectionName, list[Write]],
    expected: int | None,
    through: int,
    now: datetime,
) -> bool:
    """The batch's document writes and the move of `meta` to `through`, in one transaction and
    one command; committed only when every write applied. True once committed; False, nothing
    written, when a write did not apply (a fence closed, a refusal, `meta` not matching), and
    the per-collection path must do it and tell why. Raises ConnectionFailure (retry it: a
    commit whose outcome is unknown applied all or nothing, and the fences make either exact)."""
    operations: list[InsertOne[Document] | UpdateOne] = []
    for name, writes in batches.items():
        merged = coalesce(writes)
        if len({w.filter["_id"] for w in merged}) < len(merged):
            return False  # one write per event: `_write_collection`
        operations += [fast_operation(w, f"{db.name}.{name}") for w in merged]
    operations.append(
        UpdateOne(
            _meta_filter(expected, now),
            {"$max": {"position": through}},
            upsert=not expected,
            namespace=f"{db.name}.{META}",
        )
    )
    client = db.client
    try:
        async with client.start_session() as session, await session.start_transaction():
            result = await client.bulk_write(operations, ordered=True, session=session)
            done = result.inserted_count + result.upserted_count + result.modified_count
            if done < len(operations):
                await session.abort_transaction()
                return False
    except ClientBulkWriteException as exc:
        if isinstance(exc.error, ConnectionFailure):
            raise exc.error from exc
        _refused_transactions(client, exc.error)
        return False
    except ConnectionFailure:
        raise
    except OperationFailure as exc:  # a transaction aborted or unsupported: per collection
        _refused_transactions(client, exc)
        return False
    return True


def _refused_transactions(client: AsyncMongoClient[Any], error: object) -> None:
    """When `error` says the server runs no transactions or client-level bulkWrite after all,
    `client` writes per collection from now on (one warning)."""
    if isinstance(error, OperationFailure) and error.code in _UNSUPPORTED_CODES:
        log.warning("the read store refused a batch in one transaction: %s", error)
        use_one_transaction(client, False)


async def _write_collection(collection: AsyncCollection[Document], writes: list[Write]) -> None:
    """One write per document (see app.projector.coalescing), each an update pipeline found by
    `_id` alone (app.projector.pipelines); if any document was already past the batch's start
    (its merged fence did not hold, so it changed nothing), fall back to one fenced write per
    event, which is always right. So does a batch with two merged writes for one document
    (app.projector.coalescing): the later one could apply where the earlier did not."""
    merged = coalesce(writes)
    if len({w.filter["_id"] for w in merged}) < len(merged):
        await write_ordered(collection, writes)
        return
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
    redelivery) sends the batch down the fenced path. `namespace` ("db.collection") for a
    client-level bulk write."""
    if write.upsert and write.filter.get("version") == {"$lt": 1} and set(write.update) == {"$set"}:
        return InsertOne({"_id": write.filter["_id"], **write.update["$set"]}, namespace)
    return pipelines.operation(write, namespace)


async def write_ordered(collection: AsyncCollection[Document], writes: Sequence[Write]) -> None:
    """One fenced update per event, in order: a write already applied changes nothing. Raises
    BulkWriteError for a real refusal (say, a second product with the same sku)."""
    await collection.bulk_write([pipelines.operation(w) for w in writes], ordered=True)


async def drop(db: AsyncDatabase[Document]) -> None:
    for name in (*COLLECTIONS, META):
        await db.drop_collection(name)
