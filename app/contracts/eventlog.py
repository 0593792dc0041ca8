"""Reading the event log (PostgreSQL): shared by the relay and the projector's gap repair.

Readers get committed events in position order. Note that a reader alone cannot tell a gap
that will never fill (a rolled-back position) from one that commits late: that decision is the
relay's (app/relay/gaps.py, docs/architecture.md §4); the projector only reads ranges the
relay already passed.

That is the one coupling between the relay and the projector, and it goes through SQL: the
relay's checkpoint (table `relay_checkpoints`, one row per relay name) is written only by the
relay (`advance_checkpoint`) and read by the projector (`settled_position`) to learn how far
the log may be read without missing a late commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

import asyncpg
import msgspec

from app.contracts.events import Envelope
from app.contracts.upcasting import upcast


class LoggedEvent(msgspec.Struct, frozen=True):
    """One row of the log, as `_SELECT` reads it: its columns come in the order of these
    fields, so a row becomes one positionally (`LoggedEvent(*row)`, ~4x cheaper than by name;
    readers take every event through here)."""

    position: int
    event_id: uuid.UUID
    type: str
    schema_version: int
    stream_type: str
    stream_id: str
    stream_version: int
    occurred_at: datetime
    correlation_id: str | None
    data: str  # the JSON text of `events.data`, passed through undecoded
    traceparent: str | None = None  # the command's trace context (metadata), if it had one

    def envelope(self, prev_position: int) -> Envelope:
        """The event as published, in its current shape (app/contracts/upcasting.py)."""
        version, data = upcast(self.type, self.schema_version, self.data.encode())
        return Envelope(
            event_id=self.event_id,
            type=self.type,
            schema_version=version,
            stream_type=self.stream_type,
            stream_id=self.stream_id,
            stream_version=self.stream_version,
            position=self.position,
            prev_position=prev_position,
            occurred_at=self.occurred_at,
            correlation_id=self.correlation_id,
            data=msgspec.Raw(data),
        )


# the fields of LoggedEvent that are not a column of `events` of the same name
_EXPRESSIONS: Final = {
    "correlation_id": "metadata->>'correlation_id'",
    "data": "data::text",
    "traceparent": "metadata->>'traceparent'",
}
_SELECT: Final = (
    "SELECT "
    + ", ".join(
        f"{_EXPRESSIONS.get(field, field)} AS {field}" for field in LoggedEvent.__struct_fields__
    )
    + " FROM events"
)


def _logged(rows: list[asyncpg.Record]) -> list[LoggedEvent]:
    return [LoggedEvent(*row) for row in rows]


async def fetch_after(conn: asyncpg.Connection, after: int, limit: int) -> list[LoggedEvent]:
    """Up to `limit` committed events with position > `after`, in position order."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE position > $1 ORDER BY position LIMIT $2", after, limit
    )
    return _logged(rows)


async def fetch_range(conn: asyncpg.Connection, after: int, through: int) -> list[LoggedEvent]:
    """Committed events with `after` < position <= `through`, in position order."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE position > $1 AND position <= $2 ORDER BY position", after, through
    )
    return _logged(rows)


async def fetch_positions(conn: asyncpg.Connection, positions: list[int]) -> list[LoggedEvent]:
    """The committed events at `positions`, in position order."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE position = ANY($1::bigint[]) ORDER BY position", positions
    )
    return _logged(rows)


class SnapshotBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Events read under one snapshot, with that snapshot's in-progress xids and its xmax."""

    events: list[LoggedEvent]
    xip: list[int]
    xmax: int


_SNAPSHOT = (
    "SELECT pg_snapshot_xmax(s)::text::bigint AS xmax,"
    " array(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x) AS xip"
    " FROM pg_current_snapshot() AS s"
)


async def fetch_after_in_snapshot(
    conn: asyncpg.Connection, after: int, limit: int, query_timeout_s: float | None = None
) -> SnapshotBatch:
    """Like `fetch_after`, plus the xip and xmax of the snapshot the rows were read under
    (one REPEATABLE READ transaction, so both come from the same snapshot)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        snapshot = await conn.fetchrow(_SNAPSHOT, timeout=query_timeout_s)
        rows = await conn.fetch(
            f"{_SELECT} WHERE position > $1 ORDER BY position LIMIT $2",
            after,
            limit,
            timeout=query_timeout_s,
        )
    return SnapshotBatch(events=_logged(rows), xip=snapshot["xip"], xmax=snapshot["xmax"])


async def head_position(conn: asyncpg.Connection, timeout_s: float | None = None) -> int:
    """The log's last position (0 for an empty log); later positions may still commit."""
    position: int = await conn.fetchval(
        "SELECT coalesce(max(position), 0) FROM events", timeout=timeout_s
    )
    return position


async def settled_position(
    conn: asyncpg.Connection, relay_name: str, timeout_s: float | None = None
) -> int:
    """The relay's checkpoint: every position up to it was published or proven dead, so
    reading the log up to it misses no late commit. 0 when that relay never published."""
    position: int = await conn.fetchval(
        "SELECT coalesce(max(position), 0) FROM relay_checkpoints WHERE name = $1",
        relay_name,
        timeout=timeout_s,
    )
    return position


_ADVANCE = (
    "INSERT INTO relay_checkpoints AS c (name, position, updated_at) VALUES ($1, $2, now())"
    " ON CONFLICT ON CONSTRAINT relay_checkpoints_pkey DO UPDATE"
    " SET position = excluded.position, updated_at = excluded.updated_at"
    " WHERE c.position < excluded.position"
)


async def advance_checkpoint(
    conn: asyncpg.Connection, relay_name: str, position: int, timeout_s: float | None = None
) -> None:
    """Move the relay's checkpoint forward to `position` (the relay only); idempotent, never
    moves it back."""
    await conn.execute(_ADVANCE, relay_name, position, timeout=timeout_s)
