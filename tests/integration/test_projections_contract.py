"""Contract of every projection: applying any prefix of a real log twice equals applying it once.

The history comes from the real command handlers against a fresh database, including
rolled-back transactions (positions that never commit), so the log has real gaps
(tests/support/histories.py).
"""

from __future__ import annotations

import gc
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from app.contracts.eventlog import LoggedEvent, fetch_after
from app.contracts.generations import FROZEN_UNTIL, SUPERSEDED_BY
from app.contracts.readmodel import (
    COLLECTIONS,
    META,
    META_ID,
    applied_position,
    ensure_indexes,
)
from app.plumbing.settings import Settings
from app.projector import readmodel
from app.projector import rebuild as rebuild_module
from app.projector.coalescing import coalesce
from app.projector.deliveries import Decoded
from app.projector.documents import Write
from app.projector.rebuild import rebuild
from tests.support.histories import decoded, make_history

Document = dict[str, Any]


async def snapshot(db: AsyncDatabase[Document]) -> dict[str, list[Document]]:
    return {
        name: [doc async for doc in db[name].find().sort("_id", 1)] for name in (*COLLECTIONS, META)
    }


@pytest.fixture
async def mongo_db(settings: Settings) -> AsyncIterator[AsyncDatabase[Document]]:
    """This test's own Mongo database, dropped afterwards."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    yield client[settings.mongo_db]
    await client.drop_database(settings.mongo_db)
    await client.close()


@pytest.fixture(params=["as the projector sends them", "in one command", "per collection"])
def batch_commands(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ways a batch's documents reach the store: the collections' statements in one
    client-level bulkWrite (MongoDB 8.0 and later, SecantusDB) when there are few enough, else
    one bulk write per collection at once; or always the one, or always the other (older
    servers)."""
    if request.param == "in one command":
        monkeypatch.setattr(readmodel, "ONE_COMMAND_STATEMENTS", 1_000_000)
    elif request.param == "per collection":
        monkeypatch.setattr(readmodel, "writes_at_once", lambda db: False)
    return str(request.param)


class _Commands(CommandListener):
    """The names of the commands a client sent."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


async def _apply_in_batches(
    db: AsyncDatabase[Document],
    events: list[Decoded],
    rng: random.Random,
    known: readmodel.KnownDocuments | None = None,
) -> None:
    start = 0
    while start < len(events):
        size = rng.randint(1, 25)
        await readmodel.apply_events(db, events[start : start + size], known=known)
        start += size


@pytest.mark.usefixtures("batch_commands")
async def test_applying_any_prefix_twice_equals_once(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document], rng: random.Random
) -> None:
    events = decoded(await make_history(fresh_database_url, rng))
    assert len({e.envelope.type for e in events}) == 8, "the history covers every event type"
    assert any(e.envelope.prev_position != e.position - 1 for e in events), "the log has gaps"
    prefixes = [*sorted(rng.sample(range(1, len(events)), 4)), len(events)]
    # one writer's memory of the documents that exist, kept across the drops: it goes stale
    known = readmodel.KnownDocuments()
    for k in prefixes:
        await readmodel.drop(mongo_db)
        await ensure_indexes(mongo_db)
        await _apply_in_batches(mongo_db, events[:k], rng, known)
        once = await snapshot(mongo_db)
        assert once["meta"] == [{"_id": "projection", "position": events[k - 1].position}]
        await _apply_in_batches(mongo_db, events[:k], rng, known)
        assert await snapshot(mongo_db) == once, f"prefix of {k} events applied twice"
        await _apply_in_batches(mongo_db, events[: rng.randint(1, k)], rng)
        assert await snapshot(mongo_db) == once, f"a shorter prefix re-applied after {k}"


@pytest.mark.usefixtures("batch_commands")
async def test_batches_equal_one_event_at_a_time_even_after_a_partial_batch(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document], rng: random.Random
) -> None:
    """Batches fold each document's writes into one (app.projector.coalescing); a batch that
    finds documents already partly through it (a crash mid-batch, then redelivery) must still
    end exactly where applying one event at a time ends."""
    events = decoded(await make_history(fresh_database_url, rng))
    await ensure_indexes(mongo_db)
    for event in events:
        await readmodel.apply_events(mongo_db, [event])
    reference = await snapshot(mongo_db)
    for _ in range(3):
        await readmodel.drop(mongo_db)
        await ensure_indexes(mongo_db)
        start = rng.randrange(len(events))
        end = rng.randint(start + 1, len(events))
        crashed_at = rng.randint(start, end)
        await _apply_in_batches(mongo_db, events[:start], rng)
        for event in events[start:crashed_at]:  # part of the batch landed before the crash
            await readmodel.apply_events(mongo_db, [event])
        await readmodel.apply_events(mongo_db, events[start:end])
        await _apply_in_batches(mongo_db, events[end:], rng)
        assert await snapshot(mongo_db) == reference, (start, crashed_at, end)


async def test_a_batch_of_several_collections_is_one_command_and_its_position_another(
    settings: Settings,
    fresh_database_url: str,
    mongo_db: AsyncDatabase[Document],
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An order placed writes its order and its customer: on a server that takes a client-level
    bulkWrite both go in one command, and the applied position moves in a command of its own
    after it (a shortfall's fenced path must run before the position moves). A batch of more
    statements than `ONE_COMMAND_STATEMENTS`, or on a server that does not take it: one command
    per collection."""
    events = decoded(await make_history(fresh_database_url, rng))
    placed = [i for i, e in enumerate(events) if e.envelope.type == "OrderPlaced"][:3]
    commands = _Commands()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True, event_listeners=[commands]
    )
    db = client[mongo_db.name]
    try:
        await ensure_indexes(db)
        assert readmodel.writes_at_once(db)
        applied = 0
        for at, patch, sent in [
            (placed[0], None, ["bulkWrite", "update"]),
            (placed[1], ("ONE_COMMAND_STATEMENTS", 1), ["insert", "update", "update"]),
            (placed[2], ("writes_at_once", lambda db: False), ["insert", "update", "update"]),
        ]:
            await readmodel.apply_events(db, events[applied:at])
            if patch is not None:
                monkeypatch.setattr(readmodel, *patch)
            commands.names.clear()
            await readmodel.apply_events(db, [events[at]], events[at - 1].position)
            assert sorted(commands.names) == sent, (at, patch)
            applied = at + 1
        for event in (events[i] for i in placed):
            order = await db["orders"].find_one({"_id": str(event.envelope.stream_id)})
            assert order is not None
            assert order["status_history"][0]["position"] == event.position
        fresh: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongo_url, connect=False)
        assert not readmodel.writes_at_once(fresh[mongo_db.name]), "no server seen yet"
        await fresh.close()
    finally:
        await client.close()


async def test_a_later_write_of_a_document_never_applies_ahead_of_an_earlier_one(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """A batch whose writes to one document do not fold into one write (here a $setOnInsert
    of 5 then an $inc of that field) goes one write per event: the earlier merged write finds
    its fence closed (event x1 was applied before a crash), and the later one, whose fence
    holds, must not apply order y's second event before its first. Seen with a real history
    (TEST_SEED=3430284720): a customer's order_count one short."""
    customers = mongo_db["customers"]
    await customers.insert_one({"_id": "c", "applied": {"x": 1}, "n": 0, "k": 1})

    def event(stream: str, version: int, update: dict[str, Any], upsert: bool = False) -> Write:
        fence = {"_id": "c", f"applied.{stream}": {"$not": {"$gte": version}}}
        return Write("customers", fence, {**update, "$set": {f"applied.{stream}": version}}, upsert)

    writes = [
        event("x", 1, {"$setOnInsert": {"n": 5}, "$inc": {"k": 1}}, upsert=True),
        event("y", 1, {"$inc": {"k": 10}}),
        event("y", 2, {"$inc": {"n": 1}}),
    ]
    assert len(coalesce(writes)) == 2
    await readmodel._write_collection(customers, writes)
    assert await customers.find_one({"_id": "c"}) == {
        "_id": "c", "applied": {"x": 1, "y": 2}, "n": 1, "k": 11,
    }  # fmt: skip


async def test_a_document_believed_to_exist_that_was_dropped_is_written_and_forgotten(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """A writer remembers the customers it upserted and updates them without reading first;
    when one is gone (the collection was dropped), the shortfall sends the batch down the
    fenced path, which creates it, and the memory of that collection is dropped too."""
    customers, known = mongo_db["customers"], readmodel.KnownDocuments()

    def ordered(order: str) -> Write:
        fence = {"_id": "c", f"applied.{order}": {"$not": {"$gte": 1}}}
        return Write("customers", fence, {"$inc": {"n": 1}, "$set": {f"applied.{order}": 1}}, True)

    await readmodel._write_collection(customers, [ordered("x")], known)
    assert known.of(customers.full_name, ["c"]) == {"c"}
    await customers.drop()
    await readmodel._write_collection(customers, [ordered("y")], known)
    assert await customers.find_one({"_id": "c"}) == {"_id": "c", "n": 1, "applied": {"y": 1}}
    assert known.of(customers.full_name, ["c"]) == set()


async def test_a_batch_reads_which_documents_exist_only_for_two_upserts_or_more(
    mongo_db: AsyncDatabase[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One upsert of a document not known to exist goes as its own fenced upsert without the
    read (a command that could save at most that one statement); two or more are read first,
    so that those that exist join an `UpdateMany`. Either way the documents end as one fenced
    write per event leaves them, and applying the batch again changes nothing."""
    reads: list[list[Any]] = []
    read = readmodel.existing

    async def counted(collection: Any, ids: list[Any]) -> set[Any]:
        reads.append(list(ids))
        return await read(collection, ids)

    monkeypatch.setattr(readmodel, "existing", counted)

    def ordered(customer: str, order: str) -> Write:
        fence = {"_id": customer, f"applied.{order}": {"$not": {"$gte": 1}}}
        update = {"$inc": {"n": 1}, "$set": {f"applied.{order}": 1}}
        return Write("customers", fence, update, True)

    customers, slow = mongo_db["customers"], mongo_db["slow"]
    await customers.insert_one({"_id": "old", "n": 1, "applied": {"o0": 1}})
    await slow.insert_one({"_id": "old", "n": 1, "applied": {"o0": 1}})
    batches = [
        [ordered("old", "o1")],
        [ordered("new", "o2")],
        [ordered("old", "o3"), ordered("b", "o4")],
    ]
    for batch in batches:
        await readmodel._write_collection(customers, batch, readmodel.KnownDocuments())
        await readmodel.write_ordered(slow, batch)
    assert reads == [["old", "b"]]
    fast = [d async for d in customers.find().sort("_id", 1)]
    assert fast == [d async for d in slow.find().sort("_id", 1)]
    assert {d["_id"]: d["n"] for d in fast} == {"b": 1, "new": 1, "old": 3}
    for batch in batches:
        await readmodel._write_collection(customers, batch, readmodel.KnownDocuments())
    assert [d async for d in customers.find().sort("_id", 1)] == fast


async def test_a_batch_as_few_statements_writes_what_one_write_per_document_writes(
    mongo_db: AsyncDatabase[Document],
) -> None:
    """Updates of documents that exist go as one `UpdateMany` (an upsert among them when its
    document is there), a new document's upsert as its own `UpdateOne`; every document ends as
    one fenced write per document leaves it, even with an `_id` that looks like a field path."""
    seed = [{"_id": "$stock", "version": 1, "stock": 5}, {"_id": "b", "version": 1, "n": 1}]

    def fenced(doc_id: str, update: dict[str, Any], upsert: bool = False) -> Write:
        return Write("products", {"_id": doc_id, "version": {"$lt": 2}}, update, upsert)

    writes = [
        fenced("$stock", {"$set": {"stock": 4, "version": 2}}),
        fenced("b", {"$inc": {"n": 2}, "$set": {"version": 2}}, upsert=True),
        fenced("c", {"$inc": {"n": 3}, "$set": {"version": 2}}, upsert=True),
        fenced("missing", {"$set": {"stock": 1, "version": 2}}),  # no document: no write
    ]
    found = await readmodel.existing(mongo_db["fast"], readmodel.lookups(writes))
    assert found == set()
    await mongo_db["fast"].insert_many([dict(d) for d in seed])
    await mongo_db["slow"].insert_many([dict(d) for d in seed])
    found = await readmodel.existing(mongo_db["fast"], readmodel.lookups(writes))
    assert found == {"b"}
    statements = readmodel.statements(writes, found)
    assert [type(s).__name__ for s in statements] == ["UpdateMany", "UpdateOne"]
    result = await mongo_db["fast"].bulk_write(statements, ordered=True)
    assert (result.modified_count, result.upserted_count) == (2, 1)
    await readmodel.write_ordered(mongo_db["slow"], writes)
    fast = [d async for d in mongo_db["fast"].find().sort("_id", 1)]
    assert fast == [d async for d in mongo_db["slow"].find().sort("_id", 1)]
    assert fast[0] == {"_id": "$stock", "version": 2, "stock": 4}
    # applied again, every fence is closed: nothing changes
    again = await mongo_db["fast"].bulk_write(readmodel.statements(writes, {"b", "c"}))
    assert again.modified_count == again.upserted_count == 0
    assert [d async for d in mongo_db["fast"].find().sort("_id", 1)] == fast


async def test_a_rebuild_in_chunks_equals_the_projector(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document], rng: random.Random
) -> None:
    """The rebuild folds chunks of the log in memory (app.projector.folding): it must store
    exactly what the projector's fenced writes produce, also when documents span chunks."""
    events = decoded(await make_history(fresh_database_url, rng))
    await ensure_indexes(mongo_db)
    await _apply_in_batches(mongo_db, events, rng)
    projected = await snapshot(mongo_db)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    assert pool is not None
    async with pool:
        for chunk in (7, 10_000):
            assert await rebuild(pool, mongo_db, batch_size=chunk) == events[-1].position
            assert await snapshot(mongo_db) == projected, f"rebuilt in chunks of {chunk}"


async def test_a_failed_rebuild_claims_no_position(
    fresh_database_url: str,
    mongo_db: AsyncDatabase[Document],
    monkeypatch: pytest.MonkeyPatch,
    rng: random.Random,
) -> None:
    """`meta` is written last: a rebuild that fails halfway leaves a read model that claims
    nothing, so a projector started on it applies the log from position 0."""
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
    assert await applied_position(mongo_db) == 0
    assert gc.isenabled(), "the collector is back on after a failed rebuild"


async def test_a_rebuild_folds_with_the_collector_paused_and_collects_cycles_itself(
    fresh_database_url: str,
    mongo_db: AsyncDatabase[Document],
    monkeypatch: pytest.MonkeyPatch,
    rng: random.Random,
) -> None:
    """Automatic collection is off while the log is folded (rebuild.py, `_COLLECT_EVERY`), the
    rebuild collects every few chunks itself, and the collector is on again afterwards."""
    events = await make_history(fresh_database_url, rng)
    enabled_while_folding: list[bool] = []
    collections: list[int] = []
    collect = gc.collect

    def counted(generation: int = 2) -> int:
        collections.append(generation)
        return collect(generation)

    monkeypatch.setattr(rebuild_module, "_COLLECT_EVERY", 2)
    monkeypatch.setattr(gc, "collect", counted)
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    assert pool is not None
    async with pool:
        chunk = len(events) // 5 + 1  # five chunks
        await rebuild(
            pool,
            mongo_db,
            batch_size=chunk,
            progress=lambda _: enabled_while_folding.append(gc.isenabled()),
        )
    assert enabled_while_folding == [False] * 5
    assert len(collections) == 2, "one collection per two chunks"
    assert gc.isenabled()


async def test_a_frozen_superseded_or_dropped_generation_refuses_the_position(
    fresh_database_url: str, mongo_db: AsyncDatabase[Document], rng: random.Random
) -> None:
    """`meta` moves only in a generation whose position may move, and only from at least the
    position the writer applied: otherwise the batch raises."""
    events = decoded(await make_history(fresh_database_url, rng))
    await ensure_indexes(mongo_db)
    half = len(events) // 2
    await readmodel.apply_events(mongo_db, events[:half])
    applied = events[half - 1].position
    later = datetime.now(UTC) + timedelta(minutes=5)
    for moving in ({FROZEN_UNTIL: later}, {SUPERSEDED_BY: "shop_g9"}):
        await mongo_db[META].update_one({"_id": META_ID}, {"$set": moving})
        for expected in (None, applied):
            with pytest.raises(readmodel.GenerationMoving):
                await readmodel.apply_events(mongo_db, events[half:], expected)
        assert await applied_position(mongo_db) == applied, moving
        await mongo_db[META].update_one({"_id": META_ID}, {"$unset": moving})
    await mongo_db[META].delete_one({"_id": META_ID})
    with pytest.raises(readmodel.ReadModelLost):
        await readmodel.apply_events(mongo_db, events[half:], expected=applied)
    assert await applied_position(mongo_db) == 0
