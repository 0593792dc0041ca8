"""Held streams and parked events, in PostgreSQL (migrations/0003_parked_events.sql).

An event the projector cannot apply for a reason retrying will not fix is parked with its error,
and its stream is held: every later event of that stream is parked behind it, while every other
stream keeps flowing. They live in PostgreSQL, not in the read model, because the read model is
disposable (a rebuild drops it) and because every replica's projector must see the same holds
after a fail-over. Releasing (app/operations/parked.py) locks the hold for update; parking takes
a key-share lock on it (a foreign key), so the two never interleave for one stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

import asyncpg
import msgspec

from app.projector.deliveries import Decoded

Stream = tuple[str, str]  # (stream_type, stream_id)

HELD_BEHIND: Final = "Held"  # the error class of an event parked behind its stream's culprit


class HoldReleased(Exception):
    """The stream's hold was released while events were being parked behind it: apply them."""


class ParkedEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    stream_type: str
    stream_id: str
    type: str
    error_class: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime


def stream_of(event: Decoded) -> Stream:
    return (event.envelope.stream_type, event.envelope.stream_id)


async def held_streams(conn: asyncpg.Connection) -> set[Stream]:
    rows = await conn.fetch("SELECT stream_type, stream_id FROM held_streams")
    return {(r["stream_type"], r["stream_id"]) for r in rows}


async def hold(
    conn: asyncpg.Connection,
    event: Decoded,
    error: BaseException,
    attempts: int,
    first_failed_at: datetime,
) -> None:
    """Park `event` with its error and hold its stream (idempotent: parking it again updates
    the error and the attempts)."""
    stream_type, stream_id = stream_of(event)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO held_streams (stream_type, stream_id) VALUES ($1, $2)"
            " ON CONFLICT ON CONSTRAINT held_streams_pkey DO NOTHING",
            stream_type,
            stream_id,
        )
        await conn.execute(
            "INSERT INTO parked_events (position, stream_type, stream_id, type, error_class,"
            " error, attempts, first_failed_at, last_failed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())"
            " ON CONFLICT ON CONSTRAINT parked_events_pkey DO UPDATE SET"
            " error_class = excluded.error_class, error = excluded.error,"
            " attempts = parked_events.attempts + excluded.attempts, last_failed_at = now()",
            event.position,
            stream_type,
            stream_id,
            event.envelope.type,
            type(error).__name__,
            str(error)[:2000] or repr(error),
            attempts,
            first_failed_at,
        )
        await audit(conn, "parked", event.position, (stream_type, stream_id), repr(error)[:2000])


async def park_behind(conn: asyncpg.Connection, events: Sequence[Decoded]) -> None:
    """Park `events`, whose streams are held, behind their culprits. Raises HoldReleased (and
    parks none of them) when one of those holds is gone."""
    if not events:
        return
    try:
        async with conn.transaction():
            for event in events:
                stream_type, stream_id = stream_of(event)
                parked = await conn.fetchval(
                    "INSERT INTO parked_events (position, stream_type, stream_id, type,"
                    " error_class, error) SELECT $1, $2, $3, $4, $5, 'held behind position '"
                    " || coalesce(min(position), $1) FROM parked_events"
                    " WHERE stream_type = $2 AND stream_id = $3"
                    " ON CONFLICT ON CONSTRAINT parked_events_pkey DO NOTHING RETURNING true",
                    event.position,
                    stream_type,
                    stream_id,
                    event.envelope.type,
                    HELD_BEHIND,
                )
                if parked:  # not when it was parked already (a redelivery, a second rebuild)
                    await audit(conn, "parked", event.position, (stream_type, stream_id), "held")
    except asyncpg.ForeignKeyViolationError:
        raise HoldReleased("a hold was released while parking behind it") from None


async def audit(
    conn: asyncpg.Connection, action: str, position: int | None, stream: Stream, detail: str
) -> None:
    await conn.execute(
        "INSERT INTO parked_audit (action, position, stream_type, stream_id, detail)"
        " VALUES ($1, $2, $3, $4, $5)",
        action,
        position,
        stream[0],
        stream[1],
        detail,
    )


async def parked(
    conn: asyncpg.Connection, streams: Iterable[Stream] | None = None
) -> list[ParkedEvent]:
    """The parked events in position order (of `streams` only, when given)."""
    rows = await conn.fetch(
        "SELECT position, stream_type, stream_id, type, error_class, error, attempts,"
        " first_failed_at, last_failed_at FROM parked_events ORDER BY position"
    )
    wanted = None if streams is None else set(streams)
    return [
        ParkedEvent(**dict(r))
        for r in rows
        if wanted is None or (r["stream_type"], r["stream_id"]) in wanted
    ]


async def held_from(conn: asyncpg.Connection) -> dict[Stream, int]:
    """Each held stream with the position of its first parked event: it and every later event
    of the stream stay unapplied until released."""
    rows = await conn.fetch(
        "SELECT h.stream_type, h.stream_id, min(p.position) AS position FROM held_streams h"
        " JOIN parked_events p USING (stream_type, stream_id) GROUP BY 1, 2"
    )
    return {(r["stream_type"], r["stream_id"]): r["position"] for r in rows}


async def counts(conn: asyncpg.Connection, timeout_s: float | None = None) -> tuple[int, int]:
    """(held streams, parked events)."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM held_streams) AS held,"
        " (SELECT count(*) FROM parked_events) AS parked",
        timeout=timeout_s,
    )
    assert row is not None
    return int(row["held"]), int(row["parked"])
