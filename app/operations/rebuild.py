"""`python -m app rebuild`: a new generation of the read model, built while the service serves.

Phases (generations and the switch: app/contracts/generations.py, app/projector/generations.py):

1. **build**: generation N+1 is folded from the whole log into `<MONGO_DB>_g<N+1>`
   (app/projector/rebuild.py), while generation N serves and the live projector keeps it current;
2. **catch-up**: the events committed meanwhile are applied to it from the log;
3. **compare**: every document of the new generation against the current one
   (app/operations/compare.py). A difference between documents at the same log position is a
   change of the projection: unless `--expect-changes` admits it, the rebuild stops here (exit
   3) with the new generation kept, to be resumed with `--expect-changes` or dropped (`--abort`);
4. **switch**: the current generation is frozen for a moment, the new one caught up to the same
   position, and the pointer moved: readers and the projector use it from then on.

The generation switched away from is kept READ_MODEL_KEEP_PREVIOUS_S seconds for
`rebuild --rollback` (the same switch, back to it), then dropped (by the next `rebuild`, or by
any replica, which looks every few minutes).

One rebuild at a time: a PostgreSQL advisory lock, held by the command's own session (it goes
with the process); the second is refused with the holder's name, address and start time. The
phase reached is kept in the `generations` collection (`_id: "rebuild"`), so a rebuild that
died or was stopped (Ctrl-C) is resumed by running `rebuild` again (a build restarts; the
others continue), or dropped with `--abort`. Until the switch, the current generation serves
as if nothing happened.

`--offline` is the old path: rebuild the current generation in place, refused while a
projector consumes the queue (for an empty store, or a quick local reset).

Exit codes: 0 done (switched, rolled back, aborted); 1 a dependency failed (run it again: it
resumes); 2 refused (another rebuild holds the lock, nothing to roll back, a projector running
with `--offline`, a usage error); 3 the comparison found changes `--expect-changes` does not
admit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiormq
import asyncpg
import msgspec
from pymongo.errors import PyMongoError

from app.contracts.eventlog import head_position, settled_position
from app.contracts.generations import (
    GENERATIONS,
    REBUILD_ID,
    Pointer,
    ReadModel,
    database_name,
    read_pointer,
)
from app.contracts.readmodel import COLLECTIONS, Db, applied_position
from app.operations.compare import Comparison, compare
from app.operations.progress import Phase, Progress
from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import BrokerConnect, Resources, connect_broker, open_resources
from app.plumbing.settings import Settings
from app.projector import generations
from app.projector.readmodel import ProjectionFailed
from app.projector.rebuild import rebuild

REFUSED: Final = 2
UNEXPECTED_CHANGES: Final = 3

_LOCK: Final = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
_HOLDER: Final = """
SELECT a.application_name, coalesce(host(a.client_addr), 'local socket'), a.pid, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--abort", action="store_true", help="drop a rebuild left unfinished")
    what.add_argument(
        "--rollback", action="store_true", help="switch back to the previous generation"
    )
    what.add_argument(
        "--offline",
        action="store_true",
        help="rebuild the current generation in place (no projector may run)",
    )
    parser.add_argument(
        "--expect-changes",
        default="",
        metavar="NAMES",
        help="comma-separated changes the new projection intends, as <collection>.<field> or "
        "<collection> (e.g. orders.item_count,products)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")


@dataclass
class Summary:
    action: str
    exit_code: int = 0
    message: str = ""
    generation: int | None = None
    database: str | None = None
    previous: str | None = None
    position: int | None = None
    phases: list[Phase] = field(default_factory=list)
    comparison: Comparison | None = None

    def to_json(self) -> bytes:
        fields = {k: v for k, v in self.__dict__.items() if v is not None}
        return msgspec.json.encode(fields, enc_hook=_encode)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments of `rebuild` alone (tests and scripts)."""
    parser = argparse.ArgumentParser(prog="python -m app rebuild")
    add_arguments(parser)
    return parser.parse_args(argv)


# `python -m app rebuild`'s process collects its youngest generation every 100,000 net allocations
# (app/plumbing/collector.py). A rebuild's chunk of 10,000 events and the documents it folds
# stay in use across hundreds of default collections, are promoted, and set off full
# collections of a quarter of a million objects: with CPython's defaults the collector took
# about 45 % of a rebuild's CPU (61,000 events in-process, docs/benchmarks.md). A batch job:
# the pauses, 70-100 ms each, matter less than their number. The bench's rebuild runs with it.
# While it folds the log, the rebuild pauses automatic collection altogether (app/projector/
# rebuild.py, `_COLLECT_EVERY`); this setting serves the rest: catch-up, compare, verify.
YOUNG_EVERY: Final = 100_000


def main(settings: Settings, args: argparse.Namespace) -> int:
    if args.offline:
        return _offline(settings)
    expected = [name.strip() for name in args.expect_changes.split(",") if name.strip()]
    try:
        summary = asyncio.run(_online(settings, args, expected))
    except (*POSTGRES_FAILURES, PyMongoError) as exc:
        summary = Summary(
            action="rebuild",
            exit_code=1,
            message=f"rebuild stopped: {exc!r}; the generation in use still serves. Run it "
            "again to resume, or `rebuild --abort` to drop what it built",
        )
    except ProjectionFailed as exc:
        summary = Summary(
            action="rebuild",
            exit_code=1,
            message=f"rebuild stopped: {exc}. The new projection code cannot apply this event "
            "(nothing was held; the generation in use still serves): fix the code and run "
            "`rebuild` again to resume, or `rebuild --abort`",
        )
    except generations.SwitchFailed as exc:
        summary = Summary(
            action="rebuild",
            exit_code=1,
            message=f"not switched: {exc}. The current generation still serves; run it again",
        )
    except KeyboardInterrupt:
        summary = Summary(
            action="rebuild",
            exit_code=1,
            message="interrupted; the current generation still serves. Run `rebuild` again to "
            "resume, or `rebuild --abort`",
        )
    print(summary.message, file=sys.stderr if summary.exit_code else sys.stdout)
    if args.json:
        print(summary.to_json().decode())
    return summary.exit_code


async def _online(settings: Settings, args: argparse.Namespace, expected: list[str]) -> Summary:
    async with open_resources(settings, pool_min=1, pool_max=3) as resources:
        lock = await generations_lock(settings)
        try:
            holder = await lock.take()
            if holder is not None:
                return Summary(
                    action="rebuild",
                    exit_code=REFUSED,
                    message=f"another rebuild is running: {holder}",
                )
            model = ReadModel(resources.db)
            await model.refresh()
            await generations.retire_expired(resources.db)
            if args.abort:
                return await _abort(resources.db)
            if args.rollback:
                return await _rollback(resources, model)
            return await _rebuild(resources, model, expected)
        finally:
            await lock.release()


class _Lock:
    def __init__(self, conn: asyncpg.Connection, key: str) -> None:
        self._conn, self._key = conn, key

    async def take(self) -> str | None:
        """None once held; else who holds it."""
        if await self._conn.fetchval(_LOCK, self._key):
            return None
        row = await self._conn.fetchrow(_HOLDER, self._key)
        if row is None:
            return "a session that has just let go: try again"
        name, address, pid, started = row
        since = f"{started:%Y-%m-%d %H:%M:%S %Z}"
        return f"{name or 'a session'} (PostgreSQL backend {pid} from {address}, since {since})"

    async def release(self) -> None:
        await self._conn.close()  # the lock goes with the session


async def generations_lock(settings: Settings) -> _Lock:
    """The session holding (or trying for) the rebuild lock of `settings.mongo_db`."""
    conn = await asyncpg.connect(
        settings.database_url,
        timeout=settings.command_timeout_s,
        server_settings={"application_name": f"rebuild {socket.gethostname()} pid {os.getpid()}"},
    )
    return _Lock(conn, f"read-model-rebuild:{settings.mongo_db}")


async def _rebuild(resources: Resources, model: ReadModel, expected: list[str]) -> Summary:
    base, settings = resources.db, resources.settings
    pointer = await read_pointer(base)
    state = await base[GENERATIONS].find_one({"_id": REBUILD_ID})
    if state is None:
        known = [pointer.generation, *([pointer.previous.generation] if pointer.previous else [])]
        generation = max(known) + 1
        state = {
            "_id": REBUILD_ID,
            "generation": generation,
            "database": database_name(base.name, generation),
            "phase": "build",
            "started_at": datetime.now(UTC),
        }
        await base[GENERATIONS].insert_one(state)
    else:
        print(f"resuming the rebuild of generation {state['generation']} at its {state['phase']}")
    summary = Summary(
        action="rebuild",
        generation=state["generation"],
        database=state["database"],
        previous=pointer.database,
    )
    target: Db = base.client[state["database"]]
    current = model.db
    if state["phase"] == "switch":  # stopped halfway through the switch: finish it
        finished = await generations.resume_switch(
            model, target, state["generation"], keep_previous_s=settings.read_model_keep_previous_s
        )
        if finished is not None:
            await base[GENERATIONS].delete_one({"_id": REBUILD_ID})
            return _switched(summary, *finished)

    async def phase(name: str) -> None:
        await base[GENERATIONS].update_one({"_id": REBUILD_ID}, {"$set": {"phase": name}})

    if state["phase"] == "build":
        # up to a position below which every event has committed or never will (the relay's
        # checkpoint, or what the live projector applied), so that none can commit later
        # behind the new generation's position; what follows is catch-up's
        async with resources.pool.acquire() as conn:
            checkpoint = await settled_position(conn, settings.relay_name)
        settled = max(checkpoint, await applied_position(current))
        progress = Progress("build", settled)
        await rebuild(resources.pool, target, progress=progress, through=settled)
        summary.phases.append(progress.finish())
        await phase("catch-up")
    start = await applied_position(target)
    live = await applied_position(current)
    progress = Progress("catch-up", live, start=start)
    await generations.catch_up(
        resources.pool,
        target,
        live,
        poison_attempts=settings.projector_poison_attempts,
        progress=progress,
    )
    summary.phases.append(progress.finish())
    await phase("compare")

    async def again() -> None:
        await generations.catch_up(
            resources.pool,
            target,
            await applied_position(current),
            poison_attempts=settings.projector_poison_attempts,
        )

    counted = sum([await current[name].estimated_document_count() for name in COLLECTIONS])
    progress = Progress("compare", counted, unit="documents")
    comparison = await compare(current, target, again, progress)
    summary.phases.append(progress.finish())
    summary.comparison = comparison
    print(_describe(comparison))
    unexpected = comparison.unexpected(expected)
    if unexpected:
        summary.exit_code = UNEXPECTED_CHANGES
        names = ",".join(sorted(unexpected))
        summary.message = (
            f"not switched: the new generation differs in {names}. If the new code intends "
            f"it, run `rebuild --expect-changes {names}`; else `rebuild --abort`"
        )
        return summary
    await phase("switch")
    progress = Progress("switch", 0)
    pointer, at = await generations.switch(
        model,
        resources.pool,
        target,
        state["generation"],
        keep_previous_s=settings.read_model_keep_previous_s,
        poison_attempts=settings.projector_poison_attempts,
        progress=progress,
    )
    summary.phases.append(progress.finish())
    await base[GENERATIONS].delete_one({"_id": REBUILD_ID})
    return _switched(summary, pointer, at)


def _switched(summary: Summary, pointer: Pointer, at: int) -> Summary:
    summary.position = at
    kept = pointer.previous.retire_after if pointer.previous else datetime.now(UTC)
    summary.previous = pointer.previous.database if pointer.previous else summary.previous
    summary.message = (
        f"switched the read model to generation {pointer.generation} ({pointer.database}) at "
        f"log position {at}; the previous one ({summary.previous}) is kept until "
        f"{kept:%Y-%m-%d %H:%M:%S %Z} for `rebuild --rollback`"
    )
    return summary


def _describe(comparison: Comparison) -> str:
    checked = ", ".join(f"{n} {name}" for name, n in comparison.checked.items())
    lines = [f"compared {checked}: {sum(comparison.changes.values())} change(s)"]
    for name, count in sorted(comparison.changes.items()):
        lines.append(f"  {name}: {count} document(s)")
    for change in comparison.examples[:10]:
        lines.append(
            f"  e.g. {change.collection}/{change.id} {change.field}: "
            f"{change.current!r} -> {change.new!r}"
        )
    if comparison.unsettled:
        lines.append(
            f"  {comparison.unsettled} document(s) kept changing while compared (not changes)"
        )
    return "\n".join(lines)


async def _abort(base: Db) -> Summary:
    state = await base[GENERATIONS].find_one({"_id": REBUILD_ID})
    if state is None:
        return Summary(action="abort", exit_code=REFUSED, message="no rebuild to abort")
    pointer = await read_pointer(base)
    if pointer.database != state["database"]:
        await generations.drop_generation(base, state["database"])
    await base[GENERATIONS].delete_one({"_id": REBUILD_ID})
    return Summary(
        action="abort",
        generation=state["generation"],
        database=state["database"],
        message=f"aborted the rebuild of generation {state['generation']}: "
        f"{state['database']} dropped; {pointer.database} serves",
    )


async def _rollback(resources: Resources, model: ReadModel) -> Summary:
    base = resources.db
    if await base[GENERATIONS].find_one({"_id": REBUILD_ID}) is not None:
        return Summary(
            action="rollback",
            exit_code=REFUSED,
            message="a rebuild is unfinished: resume it or `rebuild --abort` first",
        )
    pointer = await read_pointer(base)
    previous = pointer.previous
    if previous is None:
        return Summary(action="rollback", exit_code=REFUSED, message="no previous generation")
    progress = Progress("rollback", 0)
    moved, at = await generations.switch(
        model,
        resources.pool,
        base.client[previous.database],
        previous.generation,
        keep_previous_s=resources.settings.read_model_keep_previous_s,
        progress=progress,
    )
    return Summary(
        action="rollback",
        generation=moved.generation,
        database=moved.database,
        previous=pointer.database,
        position=at,
        phases=[progress.finish()],
        message=f"rolled back to generation {moved.generation} ({moved.database}) at log "
        f"position {at}; {pointer.database} is kept for `rebuild --rollback` likewise",
    )


def _offline(settings: Settings) -> int:
    """Rebuild the generation in use in place; 2 while a projector consumes the queue."""
    try:
        consumers = asyncio.run(
            _projector_consumers(lambda: connect_broker(settings), settings.projector_queue)
        )
    except (aiormq.AMQPError, OSError) as exc:
        print(f"cannot tell whether a projector is running (RabbitMQ): {exc!r}", file=sys.stderr)
        return 1
    if consumers:
        print(
            f"{consumers} projector(s) consume {settings.projector_queue!r}: stop them "
            "(or run the service with PROJECTOR_ENABLED=false) before `rebuild --offline`, "
            "or rebuild online (without --offline)",
            file=sys.stderr,
        )
        return REFUSED
    try:
        name, position = asyncio.run(_rebuild_in_place(settings))
    except (*POSTGRES_FAILURES, PyMongoError) as exc:
        print(
            f"rebuild failed: {exc!r}; run it again (a read model left halfway claims no"
            " position, so a projector started on it re-applies the log from 0)",
            file=sys.stderr,
        )
        return 1
    print(f"read model {name!r} rebuilt up to log position {position}")
    return 0


async def _projector_consumers(connect: BrokerConnect, queue: str) -> int:
    connection = await connect()
    try:
        channel = await connection.channel()
        try:
            declared = await channel.queue_declare(queue, passive=True)
        except aiormq.ChannelNotFoundEntity:
            return 0  # never declared: no projector ever ran against this broker
        return declared.consumer_count or 0
    finally:
        await connection.close()


async def _rebuild_in_place(settings: Settings) -> tuple[str, int]:
    async with open_resources(settings, pool_min=1, pool_max=2) as resources:
        model = ReadModel(resources.db)
        await model.refresh()
        async with resources.pool.acquire() as conn:
            head = await head_position(conn)
        progress = Progress("build", head)
        position = await rebuild(resources.pool, model.db, progress=progress)
        progress.finish()
        return model.db.name, position
