"""Writing the read model: fenced batch writes, then the applied position (names and indexes:
app/contracts/readmodel.py; full rebuilds: app/projector/rebuild.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Container, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, TypeVar, cast

from pymongo import InsertOne, UpdateMany, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    DuplicateKeyError,
    OperationFailure,
)
from pymongo.results import BulkWriteResult, ClientBulkWriteResult

from app.contracts.generations import FROZEN_UNTIL, SUPERSEDED_BY, meta_of, writable
from app.contracts.readmodel import COLLECTIONS, META, META_ID, Document
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
    known: KnownDocuments | None = None,
) -> None:
    """Write `events` (in position order) to the documents, then store `through` (default: the
    last event's position) as applied. Idempotent: re-applying any prefix of the log changes
    nothing. With `expected` (the position the caller applied before), raises ReadModelLost
    when `meta` no longer holds at least that. Raises PyMongoError (connection, timeout) with
    some writes possibly done: retry it. Raises InvalidEventData, or whatever a projection or
    the store raises, for an event that cannot be applied (app/projector/poison.py); what was
    written before is fenced, so applying it all again later stays exact. `known` spares the
    reads of documents a writer already knows exist (`KnownDocuments`)."""
    if through is None:
        if not events:
            return
        through = events[-1].position
    await write_documents(db, events, known)
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


async def write_documents(
    db: AsyncDatabase[Document], events: Sequence[Decoded], known: KnownDocuments | None = None
) -> None:
    """The document writes of `events`, without moving the applied position (`apply_events`;
    also a held stream's release, app/operations/parked.py). Raises as `apply_events` does.

    Each collection's writes are planned as few statements (`_planned`, `statements`). Where
    the server takes it (`writes_at_once`), a batch of several collections and at most
    `ONE_COMMAND_STATEMENTS` statements goes as one client-level `bulkWrite` (`_write_at_once`);
    otherwise each collection's as one `bulk_write`, the collections at once: each write is
    fenced on its own, so their order does not matter. The first failure is raised once all
    have ended."""
    invalid = [e.position for e in events if e.skipped == "invalid-data"]
    if invalid:
        raise InvalidEventData.at(invalid[0])
    writes = [w for e in events if e.data is not None for w in project(e.envelope, e.data)]
    by_collection = {name: [w for w in writes if w.collection == name] for name in COLLECTIONS}
    batches = [(db[name], batch) for name, batch in by_collection.items() if batch]
    planned = await _all(_planned(collection, batch, known) for collection, batch in batches)
    plans = [plan for plan in planned if plan is not None]
    if not as_one_command(db, len(plans), sum(len(plan.statements) for plan in plans)):
        await _all(
            _write_plan(*batch, plan, known) for batch, plan in zip(batches, planned, strict=True)
        )
        return
    await _write_at_once(db, plans, known)
    await _all(
        write_ordered(*batch) for batch, plan in zip(batches, planned, strict=True) if plan is None
    )


# A batch's statements in one command cost the client one command's CPU instead of one per
# collection, but the store then commits (and syncs) them one after the other, where separate
# commands let it group their syncs. So one command wins for small batches, the low rates where
# every order is a batch of its own, and loses for large ones (the Rust server, statements
# replayed from a bench log, orders/s one command vs one per collection at once: 9 statements
# 642-898 vs 344-371, 17: 888-933 vs 551-630, 25: 909-1,172 vs 902-983, 33: 895-1,049 vs
# 1,151-1,420, 127: 1,235-1,255 vs 2,392-2,427; docs/benchmarks.md).
ONE_COMMAND_STATEMENTS: Final = 24


def as_one_command(db: AsyncDatabase[Document], collections: int, statements: int) -> bool:
    """Whether a batch writing `statements` to `collections` collections goes as one
    client-level `bulkWrite` (`_write_at_once`) rather than one command per collection."""
    return collections > 1 and statements <= ONE_COMMAND_STATEMENTS and writes_at_once(db)


def writes_at_once(db: AsyncDatabase[Document]) -> bool:
    """Whether the servers `db` is connected to take a client-level `bulkWrite`, the writes to
    several collections in one command (MongoDB 8.0 and later: wire version 25; SecantusDB's
    servers too). Until the client has seen a server, the answer is no: the batch goes one
    command per collection, which is always right."""
    servers = db.client.topology_description.known_servers
    return bool(servers) and all(s.max_wire_version >= _CLIENT_BULK_WRITE for s in servers)


_CLIENT_BULK_WRITE: Final = 25  # the wire version of MongoDB 8.0, which added `bulkWrite`

T = TypeVar("T")


async def _all(work: Iterable[Awaitable[T]]) -> list[T]:
    """Run `work` at once; the first failure is raised once all have ended."""
    outcomes = await asyncio.gather(*work, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return cast(list[T], outcomes)


class _Plan(NamedTuple):
    """One collection's part of a batch, as few statements."""

    collection: AsyncCollection[Document]
    writes: list[Write]  # one per event, in order: the fenced path (`write_ordered`)
    merged: list[Write]  # one per document (app.projector.coalescing)
    ids: list[Any]  # the upserts' `_id`s (`lookups`)
    statements: list[Statement]  # `merged`, naming the collection (a collection's
    # `bulk_write` ignores the name; a client-level one needs it)


async def _planned(
    collection: AsyncCollection[Document], writes: list[Write], known: KnownDocuments | None
) -> _Plan | None:
    """`writes` merged per document, as statements that depend on which of its upserts'
    documents exist: those `known` to, and those read (`existing`) when there are two or more
    others: the read is a command of its own, and it saves at most the one statement a single
    upsert takes (say, an order's new customer: the read would find nothing). None when two
    merged writes are for one document (app.projector.coalescing): the later one could apply
    where the earlier did not, so the batch must go one fenced write per event."""
    merged = coalesce(writes)
    if len({w.filter["_id"] for w in merged}) < len(merged):
        return None
    ids = lookups(merged)
    found = known.of(collection.full_name, ids) if known is not None else set()
    unknown = [i for i in ids if i not in found]
    if len(unknown) > 1:  # one goes as an upsert of its own, whether it exists or not
        found |= await existing(collection, unknown)
    return _Plan(collection, writes, merged, ids, statements(merged, found, collection.full_name))


def _done(result: BulkWriteResult | ClientBulkWriteResult) -> int:
    """How many documents the statements inserted, changed or created."""
    return result.inserted_count + result.modified_count + result.upserted_count


def _remember(known: KnownDocuments | None, plans: Iterable[_Plan]) -> None:
    if known is not None:
        for plan in plans:
            known.add(plan.collection.full_name, plan.ids)


async def _fall_back(known: KnownDocuments | None, plans: Iterable[_Plan]) -> None:
    """A shortfall: one fenced write per event, and what was known of those collections
    forgotten (a document believed to exist may have been dropped)."""
    for plan in plans:
        if known is not None:
            known.forget(plan.collection.full_name)
        await write_ordered(plan.collection, plan.writes)


async def _write_collection(
    collection: AsyncCollection[Document],
    writes: list[Write],
    known: KnownDocuments | None = None,
) -> None:
    """One collection's writes as `write_documents` sends them one command per collection."""
    await _write_plan(collection, writes, await _planned(collection, writes, known), known)


async def _write_plan(
    collection: AsyncCollection[Document],
    writes: list[Write],
    plan: _Plan | None,
    known: KnownDocuments | None,
) -> None:
    """`writes` one fenced write per event when there is no plan (`_planned`); else the plan's
    statements, each write an update pipeline found by `_id` alone (app.projector.pipelines) or
    an insert. If any document was already past the batch's start (its merged fence did not
    hold, so it changed nothing), fall back to one fenced write per event, which is always
    right. A document `known` to exist that does not (the read model was dropped) is a
    shortfall too: that knowledge is forgotten."""
    if plan is None:
        await write_ordered(collection, writes)
        return
    try:
        result = await plan.collection.bulk_write(plan.statements, ordered=True)
        if _done(result) == len(plan.merged):
            _remember(known, [plan])
            return
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise
    await _fall_back(known, [plan])


async def _write_at_once(
    db: AsyncDatabase[Document], plans: Sequence[_Plan], known: KnownDocuments | None
) -> None:
    """`_write_plan` for several collections, their statements in one client-level
    `bulkWrite`: one command, so one round trip and one reply for the client to build and
    read, instead of one per collection (a PyMongo command costs the client ~0.4 ms of CPU:
    docs/benchmarks.md). Any shortfall or refused write sends every collection of the batch
    down the fenced path, one write per event (a refused one raises there, as `write_ordered`
    does). A connection or server failure raises what a collection's `bulk_write` would
    (`_unwrapped`); write concern errors raise the ClientBulkWriteException."""
    models = [statement for plan in plans for statement in plan.statements]
    try:
        result = await db.client.bulk_write(models, ordered=True)
        written = _done(result) == sum(len(plan.merged) for plan in plans)
    except ClientBulkWriteException as exc:
        if exc.error is not None:
            raise _unwrapped(exc.error) from exc
        if exc.write_concern_errors:
            raise
        written = False
    if written:
        _remember(known, plans)
    else:
        await _fall_back(known, plans)


def _unwrapped(error: Any) -> BaseException:
    """A client-level bulk write's top-level error as the error itself: the exception
    (a connection failure, a timeout), or the server's reply as an OperationFailure with its
    code, as a collection's `bulk_write` raises them (app/projector/poison.py tells which are
    transient)."""
    if isinstance(error, BaseException):
        return error
    reply = dict(error) if isinstance(error, Mapping) else {"errmsg": repr(error)}
    code = reply.get("code")
    message = str(reply.get("errmsg", "bulkWrite failed"))
    return OperationFailure(message, code if isinstance(code, int) else None, reply)


Statement = InsertOne[Document] | UpdateOne | UpdateMany


async def existing(collection: AsyncCollection[Document], ids: list[Any]) -> set[Any]:
    """Which of `ids` have a document (one read on `_id`; none when `ids` is empty)."""
    if not ids:
        return set()
    return {d["_id"] async for d in collection.find({"_id": {"$in": ids}}, {"_id": 1})}


class KnownDocuments:
    """The `_id`s of documents a writer has upserted, per collection (by its full name, so each
    read model generation has its own), so that its next batches need not read whether they
    exist (`existing`: one read per collection and batch, a customer's on every order). At
    most `capacity` per collection, the least recently seen forgotten first. Stale knowledge
    (the collection was dropped) costs no correctness: a document believed to exist is updated
    without upsert, changes nothing, and the shortfall sends the batch down the fenced path."""

    def __init__(self, capacity: int = 65_536) -> None:
        self._capacity = capacity
        self._ids: dict[str, dict[Any, None]] = {}

    def of(self, collection: str, ids: Sequence[Any]) -> set[Any]:
        """Which of `ids` are known to exist in `collection`."""
        known = self._ids.get(collection)
        return {i for i in ids if i in known} if known else set()

    def add(self, collection: str, ids: Sequence[Any]) -> None:
        known = self._ids.setdefault(collection, {})
        for i in ids:
            known.pop(i, None)  # the latest seen last
            known[i] = None
        while len(known) > self._capacity:
            del known[next(iter(known))]

    def forget(self, collection: str) -> None:
        self._ids.pop(collection, None)


def creates(write: Write) -> bool:
    """A write that creates its document (fenced before version 1) and only sets fields: sent
    as an insert, much cheaper than a fenced upsert; a duplicate key (the document exists, a
    redelivery) sends the batch down the fenced path."""
    return (
        write.upsert and write.filter.get("version") == {"$lt": 1} and set(write.update) == {"$set"}
    )


def lookups(merged: Sequence[Write]) -> list[Any]:
    """The `_id`s of the upserts in `merged` that are not inserts: `statements` needs to know
    which of them exist."""
    return [w.filter["_id"] for w in merged if w.upsert and not creates(w)]


def statements(
    merged: Sequence[Write], found: Container[Any], namespace: str | None = None
) -> list[Statement]:
    """`merged` (one write per document) as few statements, SecantusDB committing once per
    statement: the inserts (`creates`) as one, the updates of documents that exist (upserts
    among them when their `_id` is in `found`) as `UpdateMany`s of `pipelines.MANY`, every other
    upsert as an `UpdateOne` of its own (if its document appears meanwhile, the fence decides,
    as for any upsert). With `namespace` ("db.collection") they name their collection, for a
    client-level bulk write (`_write_at_once`)."""
    inserts: list[Statement] = []
    updates: list[Write] = []
    upserts: list[Statement] = []
    for write in merged:
        if creates(write):
            document = {"_id": write.filter["_id"], **write.update["$set"]}
            inserts.append(InsertOne(document, namespace=namespace))
        elif write.upsert and write.filter["_id"] not in found:
            upserts.append(pipelines.operation(write, namespace))
        else:
            updates.append(write)
    size = pipelines.MANY
    chunks = (updates[i : i + size] for i in range(0, len(updates), size))
    return [*inserts, *(pipelines.many(chunk, namespace) for chunk in chunks), *upserts]


async def write_ordered(collection: AsyncCollection[Document], writes: Sequence[Write]) -> None:
    """One fenced update per event, in order: a write already applied changes nothing. Raises
    BulkWriteError for a real refusal (say, a second product with the same sku)."""
    await collection.bulk_write([pipelines.operation(w) for w in writes], ordered=True)


async def drop(db: AsyncDatabase[Document]) -> None:
    for name in (*COLLECTIONS, META):
        await db.drop_collection(name)
