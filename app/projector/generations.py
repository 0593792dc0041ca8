"""Catching a read model generation up with the log, switching to it, and retiring the old one
(the pointer and the marks: app/contracts/generations.py; the operator's command:
app/operations/rebuild.py).

The switch, while replicas serve and the live projector writes the current generation:

1. catch the target up from its own position to the current one's, a chunk of the log at a
   time, with the projector's own poison policy (held streams stay held), until it is close;
2. freeze the current generation: `meta.frozen_until` = now + FREEZE_LEASE_S. The projector's
   position update refuses a frozen generation (app/projector/readmodel.py), so the current
   position X stops moving; the projector retries with backoff meanwhile;
3. catch the target up to exactly X;
4. seal the current generation: `superseded_by` the target, only if its `meta` still holds X
   under this freeze (the store decides, not this host's clock: a lease that lapsed while a
   projector moved the position makes the switch fail and start again);
5. move the pointer to the target (one conditional update of one document): from here every
   reader and writer that refreshes uses it, a projector still writing the old generation
   fails its next position update and follows, and a reader polling the old `meta` follows
   too. The target's position is X, so no reader's position goes back.

A failure (or a Ctrl-C) before step 4 lifts the freeze, and the current generation goes on
serving; a process killed meanwhile leaves a lease that lapses by itself. A failure between 4
and 5 unseals it. A process killed between them leaves the current generation sealed (reads
go on; its projector waits): `rebuild` again finishes the switch (`resume_switch`). Rolling
back is the same switch with the previous generation as the target. Documents a projector
writes during the freeze are ahead of X in the old generation only; readers there never see a
position beyond X.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
from pymongo import ReturnDocument

from app.contracts.generations import (
    FROZEN_UNTIL,
    SUPERSEDED_BY,
    Pointer,
    ReadModel,
    Retired,
    meta_of,
    read_pointer,
    write_pointer,
)
from app.contracts.readmodel import META, META_ID, Db, applied_position
from app.projector.counters import ProjectorCounters
from app.projector.deliveries import Gap, read_gap
from app.projector.poison import GuardedStore
from app.projector.readmodel import drop

log = logging.getLogger(__name__)

FREEZE_LEASE_S: Final = 30.0
CLOSE_ENOUGH: Final = 2_000  # events behind the current generation at which to freeze it
_CATCH_UP_ROUNDS: Final = 20
_CHUNK: Final = 5_000

Progress = Callable[[int], None]  # told the position reached


class SwitchFailed(RuntimeError):
    """The switch did not happen; the current generation serves as before."""


async def catch_up(
    pool: asyncpg.Pool,
    target: Db,
    through: int,
    *,
    poison_attempts: int = 3,
    progress: Progress | None = None,
) -> int:
    """Apply the log after `target`'s position up to `through` to `target`, parking the events
    of held streams as the projector does; returns the position reached (at least `through`).
    Raises ProjectionFailed when an event fails for good: it holds nothing, so the live
    projector is not affected by a bug of the code being tried."""
    guard = GuardedStore(
        ReadModel.fixed(target),
        pool,
        ProjectorCounters(),
        poison_attempts,
        (0.05, 2.0),
        holds_streams=False,
    )
    position = await applied_position(target)
    if through <= position:
        return position
    async for events in read_gap(pool, Gap(position, through), _CHUNK):
        await guard.store(events, expected=position)
        if events:
            position = events[-1].position
        if progress is not None:
            progress(position)
    # positions after the last event were rolled back: every event up to `through` is applied
    await target[META].update_one({"_id": META_ID}, {"$max": {"position": through}}, upsert=True)
    return through


async def switch(
    model: ReadModel,
    pool: asyncpg.Pool,
    target: Db,
    generation: int,
    *,
    keep_previous_s: float,
    poison_attempts: int = 3,
    progress: Progress | None = None,
) -> tuple[Pointer, int]:
    """Switch the read model of `model.base` to `target` (generation `generation`) as the
    module docstring says; returns the new pointer and the position of the switch. Raises
    SwitchFailed (nothing switched) and PyMongoError or PostgreSQL errors (nothing switched,
    the freeze lifted)."""
    base = model.base
    pointer = await read_pointer(base)
    if pointer.database == target.name:
        raise SwitchFailed(f"{target.name} is already the current generation")
    current = base.client[pointer.database]
    await target[META].update_one(
        {"_id": META_ID}, {"$unset": {SUPERSEDED_BY: "", FROZEN_UNTIL: ""}}
    )
    for _ in range(_CATCH_UP_ROUNDS):
        live = await applied_position(current)
        if live - await applied_position(target) <= CLOSE_ENOUGH:
            break
        await catch_up(pool, target, live, poison_attempts=poison_attempts, progress=progress)
    until = datetime.now(UTC) + timedelta(seconds=FREEZE_LEASE_S)
    frozen = await current[META].find_one_and_update(
        {"_id": META_ID, SUPERSEDED_BY: {"$exists": False}},
        {"$set": {FROZEN_UNTIL: until}},
        return_document=ReturnDocument.AFTER,
        upsert=False,
    )
    if frozen is None:
        raise SwitchFailed(f"{current.name} has no position or was switched away from meanwhile")
    at = int(frozen.get("position", 0))
    try:
        await catch_up(pool, target, at, poison_attempts=poison_attempts, progress=progress)
        # the freeze becomes final only while it still holds (nobody moved the position past
        # `at` after a lapsed lease): judged by the store, not by this host's clock
        sealed = await current[META].update_one(
            {"_id": META_ID, "position": at, FROZEN_UNTIL: until},
            {"$set": {SUPERSEDED_BY: target.name}, "$unset": {FROZEN_UNTIL: ""}},
        )
        if sealed.matched_count == 0:
            raise SwitchFailed("the freeze lapsed before the new generation caught up; try again")
    except BaseException:
        await current[META].update_one(
            {"_id": META_ID, FROZEN_UNTIL: until}, {"$unset": {FROZEN_UNTIL: ""}}
        )
        raise
    try:
        moved = await _move_pointer(base, pointer, target, generation, keep_previous_s)
    except BaseException:
        # not moved: the current generation goes on from `at`, which it still holds
        await current[META].update_one(
            {"_id": META_ID, SUPERSEDED_BY: target.name}, {"$unset": {SUPERSEDED_BY: ""}}
        )
        raise
    await _switched(model, pointer, moved, at)
    return moved, at


async def resume_switch(
    model: ReadModel, target: Db, generation: int, *, keep_previous_s: float
) -> tuple[Pointer, int] | None:
    """Finish a switch to `target` that stopped after its first step that cannot be undone
    (the current generation sealed, or the pointer moved); None when it did not get there."""
    base = model.base
    pointer = await read_pointer(base)
    if pointer.database == target.name:  # moved: mark the old one, as the switch would have
        if pointer.previous is not None:
            await base.client[pointer.previous.database][META].update_one(
                {"_id": META_ID},
                {"$set": {SUPERSEDED_BY: target.name}, "$unset": {FROZEN_UNTIL: ""}},
            )
        await model.refresh()
        return pointer, await applied_position(target)
    meta = await meta_of(base.client[pointer.database])
    if meta.get(SUPERSEDED_BY) != target.name:
        return None
    at = int(meta.get("position", 0))
    moved = await _move_pointer(base, pointer, target, generation, keep_previous_s)
    await _switched(model, pointer, moved, at)
    return moved, at


async def _move_pointer(
    base: Db, pointer: Pointer, target: Db, generation: int, keep_previous_s: float
) -> Pointer:
    now = datetime.now(UTC)
    moved = Pointer(
        serial=pointer.serial + 1,
        generation=generation,
        database=target.name,
        previous=Retired(
            generation=pointer.generation,
            database=pointer.database,
            retire_after=now + timedelta(seconds=keep_previous_s),
        ),
        switched_at=now,
    )
    if not await write_pointer(base, pointer, moved):
        raise SwitchFailed("another switch moved the pointer meanwhile")
    return moved


async def _switched(model: ReadModel, was: Pointer, moved: Pointer, at: int) -> None:
    await model.refresh()
    if was.previous is not None and was.previous.database != moved.database:
        await drop_generation(model.base, was.previous.database)  # no longer reachable
    log.info("read model switched from %s to %s at position %d", was.database, moved.database, at)


async def retire_expired(base: Db, now: datetime | None = None) -> str | None:
    """Drop the previous generation once its grace period is over; returns its database."""
    pointer = await read_pointer(base)
    previous = pointer.previous
    if previous is None or previous.retire_after > (now or datetime.now(UTC)):
        return None
    kept = Pointer(
        serial=pointer.serial + 1,
        generation=pointer.generation,
        database=pointer.database,
        previous=None,
        switched_at=pointer.switched_at,
    )
    if not await write_pointer(base, pointer, kept):
        return None  # a switch meanwhile: look again next time
    await drop_generation(base, previous.database)
    log.info("dropped read model generation %d (%s)", previous.generation, previous.database)
    return previous.database


async def drop_generation(base: Db, database: str) -> None:
    """Drop a generation: its database, or its collections when it is the base database
    (generation 0 shares it with the pointer)."""
    if database == base.name:
        await drop(base)
    else:
        await base.client.drop_database(database)
