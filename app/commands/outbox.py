"""Appending events to the log inside the caller's transaction (the transactional outbox)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from app.events import NewEvent, Position

_encoder = msgspec.json.Encoder()


class EventMetadata(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Stored in `events.metadata`: where an event came from."""

    correlation_id: str
    causation_id: str | None = None
    idempotency_key: str | None = None


_APPEND = """
INSERT INTO events (stream_type, stream_id, stream_version, type, data, metadata)
SELECT e.stream_type, e.stream_id, e.stream_version, e.type, e.data, $6::jsonb
FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[])
     WITH ORDINALITY AS e(stream_type, stream_id, stream_version, type, data, n)
ORDER BY e.n
RETURNING position
"""


async def append_events(
    conn: asyncpg.Connection, events: Sequence[NewEvent], metadata: EventMetadata
) -> Position:
    """Append `events` in the given order within the caller's transaction and return the
    position of the last one. A stream version that already exists raises
    asyncpg.UniqueViolationError: the caller did not hold the stream's row lock."""
    rows = await conn.fetch(
        _APPEND,
        [e.stream_type for e in events],
        [e.stream_id for e in events],
        [e.stream_version for e in events],
        [e.type for e in events],
        [_encoder.encode(e.data).decode() for e in events],
        _encoder.encode(metadata).decode(),
    )
    return Position(max(r["position"] for r in rows))
