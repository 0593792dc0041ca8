"""`python -m app parked list|retry|skip`: the operator's side of held streams.

An event the projector could not apply is parked with its error and holds its stream
(app/projector/poison.py, app/projector/holds.py). From here an operator lists what is parked,
retries a held stream (after deploying a fix: its events are applied in order; one that fails
again stays parked with the rest behind it), or skips one event for good (recorded with the
reason; then the stream's later events are applied). Safe while the service runs: a release
locks the stream's hold, so the projector parks behind it or, once released, applies after it.
Every action is logged and kept in `parked_audit`. Releases are refused while a rebuild of the
read model is unfinished (its new generation keeps the stream held, and would miss them).

Exit codes: 0 done; 1 an event failed again (still parked) or a dependency failed; 2 nothing
to act on (no such held stream or parked position) or a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass

import asyncpg
import msgspec
from pymongo.errors import PyMongoError

from app.contracts.eventlog import fetch_positions
from app.contracts.generations import GENERATIONS, REBUILD_ID, ReadModel, read_pointer
from app.contracts.readmodel import Db
from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import Resources, open_resources
from app.plumbing.settings import Settings
from app.projector import holds, readmodel
from app.projector.deliveries import decode_logged
from app.projector.poison import is_transient

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the parked events, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    retry = actions.add_parser("retry", help="re-apply held streams' events in order")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--stream", metavar="TYPE:ID", help="one held stream, e.g. order:<id>")
    which.add_argument("--all", action="store_true", help="every held stream")
    skip = actions.add_parser("skip", help="give up one parked event, then apply the rest")
    skip.add_argument("position", type=int)
    skip.add_argument("--reason", required=True)


def main(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(settings, args))
    except (*POSTGRES_FAILURES, PyMongoError) as exc:
        print(
            f"parked {args.action} failed: {exc!r}; nothing was lost, run it again", file=sys.stderr
        )
        return 1


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    async with open_resources(settings, pool_min=1, pool_max=2) as resources:
        if args.action == "list":
            return await _list(resources, as_json=args.json)
        model = ReadModel(resources.db)
        await model.refresh()  # a release writes the generation in use, and the one kept
        previous = (await read_pointer(resources.db)).previous  # for a rollback, if any
        dbs = [model.db, *([resources.mongo[previous.database]] if previous else [])]
        if await resources.db[GENERATIONS].find_one({"_id": REBUILD_ID}) is not None:
            print(
                "a rebuild of the read model is unfinished (python -m app rebuild): let it "
                "switch, or abort it, before releasing held streams",
                file=sys.stderr,
            )
            return 2
        if args.action == "skip":
            return await _skip(resources, dbs, args.position, args.reason)
        if args.all:
            async with resources.pool.acquire() as conn:
                streams = sorted(await holds.held_streams(conn))
        else:
            stream_type, _, stream_id = args.stream.partition(":")
            streams = [(stream_type, stream_id)]
        outcomes = [await release(resources, dbs, stream) for stream in streams]
        for outcome in outcomes:
            print(outcome.summary())
        if not outcomes or any(o.held is None for o in outcomes):
            return 2
        return 1 if any(o.held for o in outcomes) else 0


async def _list(resources: Resources, *, as_json: bool) -> int:
    async with resources.pool.acquire() as conn:
        events = await holds.parked(conn)
    if as_json:
        for event in events:
            record = msgspec.to_builtins(event)
            record["error"] = f"{event.error_class}: {event.error}"
            print(msgspec.json.encode(record).decode())
        return 0
    print(f"{'position':>10}  {'stream':<44}  {'type':<16}  attempts  error")
    for e in events:
        stream = f"{e.stream_type}:{e.stream_id}"
        print(
            f"{e.position:>10}  {stream:<44}  {e.type:<16}  {e.attempts:>8}"
            f"  {e.error_class}: {e.error[:80]}"
        )
    print(f"{len(events)} parked event(s)")
    return 0


async def _skip(resources: Resources, dbs: list[Db], position: int, reason: str) -> int:
    async with resources.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT stream_type, stream_id FROM parked_events WHERE position = $1", position
        )
    if row is None:
        print(f"position {position} is not parked", file=sys.stderr)
        return 2
    stream = (row["stream_type"], row["stream_id"])
    outcome = await release(resources, dbs, stream, (position, reason))
    print(outcome.summary())
    return 1 if outcome.held else 0


@dataclass(frozen=True, slots=True)
class Release:
    stream: holds.Stream
    applied: int
    skipped: int
    held: bool | None  # None: the stream was not held
    error: str = ""

    def summary(self) -> str:
        name = f"{self.stream[0]}:{self.stream[1]}"
        if self.held is None:
            return f"{name}: not held"
        state = f"still held ({self.error})" if self.held else "released"
        return f"{name}: {self.applied} applied, {self.skipped} skipped, {state}"


async def release(
    resources: Resources,
    dbs: list[Db],
    stream: holds.Stream,
    skip: tuple[int, str] | None = None,
) -> Release:
    """Apply the parked events of `stream` to `dbs` (the read model generation in use, and the
    one kept for a rollback, whose fences make it exact too) in order
    (after skipping `skip`'s position, with its
    reason), under the hold's lock; the hold goes once none is left. An event that fails again
    stays parked, with every later one. Raises on a transient failure (run it again)."""
    async with resources.pool.acquire() as conn, conn.transaction():
        locked = await conn.fetchval(
            "SELECT true FROM held_streams WHERE stream_type = $1 AND stream_id = $2 FOR UPDATE",
            *stream,
        )
        if not locked:
            return Release(stream, 0, 0, None)
        positions = [e.position for e in await holds.parked(conn, [stream])]
        skipped = 0
        if skip is not None and skip[0] in positions:
            await _forget(conn, skip[0], stream, "skipped", skip[1])
            positions.remove(skip[0])
            skipped = 1
        applied = 0
        for event in await fetch_positions(conn, positions):
            decoded = decode_logged(event, event.position - 1)
            try:
                for db in dbs:
                    await readmodel.write_documents(db, [decoded])
            except Exception as exc:
                if is_transient(exc):
                    raise
                await _failed_again(conn, event.position, stream, exc)
                return Release(stream, applied, skipped, True, f"{type(exc).__name__}: {exc}")
            await _forget(conn, event.position, stream, "applied", "retried by an operator")
            applied += 1
        await conn.execute(
            "DELETE FROM held_streams WHERE stream_type = $1 AND stream_id = $2", *stream
        )
    log.info("released stream %s:%s (%d applied, %d skipped)", *stream, applied, skipped)
    return Release(stream, applied, skipped, False)


async def _forget(
    conn: asyncpg.Connection, position: int, stream: holds.Stream, action: str, detail: str
) -> None:
    await conn.execute("DELETE FROM parked_events WHERE position = $1", position)
    await holds.audit(conn, action, position, stream, detail)
    log.info("parked event %d of %s:%s %s: %s", position, *stream, action, detail)


async def _failed_again(
    conn: asyncpg.Connection, position: int, stream: holds.Stream, exc: Exception
) -> None:
    await conn.execute(
        "UPDATE parked_events SET attempts = attempts + 1, error_class = $2, error = $3,"
        " last_failed_at = now() WHERE position = $1",
        position,
        type(exc).__name__,
        str(exc)[:2000] or repr(exc),
    )
    await holds.audit(conn, "retried", position, stream, f"failed again: {exc!r}"[:2000])
    log.warning("parked event %d of %s:%s failed again: %r", position, *stream, exc)
