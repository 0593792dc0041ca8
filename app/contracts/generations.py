"""Generations of the read model: which MongoDB database readers and the projector use.

A *generation* is a whole database holding the collections of app/contracts/readmodel.py.
Generation 0 is MONGO_DB itself, so a read model from before generations needs nothing; a
rebuild (app/operations/rebuild.py) fills generation N >= 1 in `<MONGO_DB>_g<N>` and switches
to it. Whole databases rather than renamed collections, because every part addresses the read
model as one database handle (a new generation needs no other code), a generation is dropped
with one `dropDatabase`, and the switch is one update of one document, where renaming three
collections is three steps a reader could see half done.

The pointer, `{_id: "current", serial, generation, database, previous, switched_at}` in the
`generations` collection of MONGO_DB, names the generation in use (none: generation 0);
`previous` is `{generation, database, retire_after}`, the generation switched away from, kept
for `rebuild --rollback` until `retire_after`. Every process holds a `ReadModel`, which follows
the pointer forward only (by `serial`) and is refreshed when the projector meets a switch, when
a `meta` document says its generation was superseded, and every second (`watch`).

Marks on a generation's `meta` document that the switch (app/projector/generations.py) sets:
`frozen_until` (a datetime: until then nobody advances its position; a lease, so a switch that
dies midway unfreezes by itself) and `superseded_by` (the database that replaced it: its
position never moves again).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Final

import msgspec
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.contracts.readmodel import META, META_ID, Db, Document

log = logging.getLogger(__name__)

GENERATIONS: Final = "generations"  # the collection, in the base database
POINTER_ID: Final = "current"
REBUILD_ID: Final = "rebuild"  # the state of a rebuild in progress (app/operations/rebuild.py)

FROZEN_UNTIL: Final = "frozen_until"
SUPERSEDED_BY: Final = "superseded_by"

WATCH_INTERVAL_S: Final = 1.0


def database_name(base: str, generation: int) -> str:
    return base if generation == 0 else f"{base}_g{generation}"


class Retired(msgspec.Struct, frozen=True, kw_only=True):
    generation: int
    database: str
    retire_after: datetime


class Pointer(msgspec.Struct, frozen=True, kw_only=True):
    serial: int = 0
    generation: int = 0
    database: str
    previous: Retired | None = None
    switched_at: datetime | None = None


def writable(now: datetime) -> dict[str, Any]:
    """The part of a `meta` filter that matches only a generation whose position may move."""
    return {
        SUPERSEDED_BY: {"$exists": False},
        "$or": [{FROZEN_UNTIL: {"$exists": False}}, {FROZEN_UNTIL: {"$lt": now}}],
    }


async def read_pointer(base: Db) -> Pointer:
    """The pointer (generation 0 in the base database when there is none). Raises PyMongoError."""
    document = await base[GENERATIONS].find_one({"_id": POINTER_ID})
    if document is None:
        return Pointer(database=base.name)
    document.pop("_id")
    return msgspec.convert(document, Pointer, from_attributes=False)


async def write_pointer(base: Db, was: Pointer, now: Pointer) -> bool:
    """Replace the pointer `was` by `now` if nobody moved it meanwhile; True when it did."""
    fields = msgspec.to_builtins(now, builtin_types=(datetime,))
    if was.serial == 0:  # no pointer document yet
        try:
            await base[GENERATIONS].insert_one({"_id": POINTER_ID, **fields})
        except DuplicateKeyError:
            return False
        return True
    result = await base[GENERATIONS].replace_one(
        {"_id": POINTER_ID, "serial": was.serial}, {"_id": POINTER_ID, **fields}
    )
    return result.matched_count == 1


class ReadModel:
    """The read model generation one process uses: `db` is the database to read and write now.

    Built on the base database (MONGO_DB); `ReadModel.fixed(db)` never moves (a rebuild's
    target, tests). `refresh` reads the pointer and follows it if it moved forward.
    """

    def __init__(self, base: Db, *, follows: bool = True) -> None:
        self.base = base
        self._db = base
        self._serial = -1
        self._follows = follows

    @classmethod
    def fixed(cls, db: Db) -> ReadModel:
        return cls(db, follows=False)

    @property
    def db(self) -> Db:
        return self._db

    async def refresh(self) -> bool:
        """Follow the pointer; True when this changed the database. Raises PyMongoError."""
        if not self._follows:
            return False
        pointer = await read_pointer(self.base)
        if pointer.serial <= self._serial:
            return False
        self._serial = pointer.serial
        if pointer.database == self._db.name:
            return False
        self._db = self.base.client[pointer.database]
        log.info("read model now generation %d (%s)", pointer.generation, pointer.database)
        return True

    async def position(self) -> int:
        """The applied position of the current generation (0 for an empty one); a generation
        found superseded sends this model to the pointer first. Raises PyMongoError."""
        meta = await self._db[META].find_one({"_id": META_ID}, {"position": 1, SUPERSEDED_BY: 1})
        if meta is not None and SUPERSEDED_BY in meta and await self.refresh():
            meta = await self._db[META].find_one({"_id": META_ID}, {"position": 1})
        position = meta.get("position") if meta else None
        return position if isinstance(position, int) else 0

    async def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Refresh forever (a background task); a failing store is logged and tried again."""
        while True:
            try:
                await self.refresh()
            except PyMongoError as exc:
                log.warning("cannot read the read model's generation pointer: %r", exc)
            await asyncio.sleep(interval_s)


async def meta_of(db: Db) -> Document:
    """The `meta` document of a generation ({} when there is none)."""
    return await db[META].find_one({"_id": META_ID}) or {}
