"""Appending events to the log inside the caller's transaction (the transactional outbox)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from app.contracts.events import NewEvent, Position

_encoder = msgspec.json.Encoder()


class EventMetadata(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Stored in `events.metadata`: where an event came from."""

    correlation_id: str
    idempotency_key: str | None = None
    traceparent: str | None = None  # W3C trace context of the request (app/plumbing/tracing.py)


class Statement:
    """One SQL statement built from named parts (`WITH name AS (...)`), each binding its own
    arguments with `bind`, so no part knows another's parameter numbers. However many parts,
    it is sent as one statement: one round trip."""

    def __init__(self) -> None:
        self.arguments: list[Any] = []
        self._parts: list[str] = []

    def bind(self, value: Any) -> str:
        """The placeholder (`$n`) of `value` in this statement."""
        self.arguments.append(value)
        return f"${len(self.arguments)}"

    def part(self, name: str, sql: str) -> None:
        """Add `name AS (sql)` to the statement's WITH clause."""
        self._parts.append(f"{name} AS ({sql})")

    def text(self, final: str) -> str:
        """The whole statement: the WITH clause of the parts, then `final`."""
        return f"WITH {', '.join(self._parts)}\n{final}" if self._parts else final


def _append(statement: Statement, events: Sequence[NewEvent], metadata: EventMetadata) -> str:
    """The INSERT appending `events`, in the given order, returning their positions."""
    arrays = (
        (statement.bind([e.stream_type for e in events]), "text[]"),
        (statement.bind([e.stream_id for e in events]), "text[]"),
        (statement.bind([e.stream_version for e in events]), "int[]"),
        (statement.bind([e.type for e in events]), "text[]"),
        (statement.bind([e.schema_version for e in events]), "int[]"),
        (statement.bind([_encoder.encode(e.data).decode() for e in events]), "jsonb[]"),
    )
    columns = ", ".join(f"{placeholder}::{cast}" for placeholder, cast in arrays)
    meta = statement.bind(_encoder.encode(metadata).decode())
    return f"""
INSERT INTO events (stream_type, stream_id, stream_version, type, schema_version, data, metadata)
SELECT e.stream_type, e.stream_id, e.stream_version, e.type, e.schema_version, e.data, {meta}::jsonb
FROM unnest({columns})
     WITH ORDINALITY AS e(stream_type, stream_id, stream_version, type, schema_version, data, n)
ORDER BY e.n
RETURNING position
"""


async def append_events(
    conn: asyncpg.Connection,
    events: Sequence[NewEvent],
    metadata: EventMetadata,
    writes: Statement | None = None,
) -> Position:
    """Append `events` in the given order within the caller's transaction and return the
    position of the last one. `writes` holds the command's other writes as parts of the same
    statement, so all of it is one round trip. A stream version that already exists raises
    asyncpg.UniqueViolationError: the caller did not hold the stream's row lock."""
    statement = writes or Statement()
    rows = await conn.fetch(
        statement.text(_append(statement, events, metadata)), *statement.arguments
    )
    return Position(max(r["position"] for r in rows))
