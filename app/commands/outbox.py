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
    causation_id: str | None = None
    idempotency_key: str | None = None


def append_statement(first: int) -> str:
    """The INSERT appending events, its six parameters numbered from `first`: the final part
    of a statement whose WITH clause may carry the command's other writes."""
    p = [f"${first + i}" for i in range(6)]
    return f"""
INSERT INTO events (stream_type, stream_id, stream_version, type, data, metadata)
SELECT e.stream_type, e.stream_id, e.stream_version, e.type, e.data, {p[5]}::jsonb
FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::int[], {p[3]}::text[], {p[4]}::jsonb[])
     WITH ORDINALITY AS e(stream_type, stream_id, stream_version, type, data, n)
ORDER BY e.n
RETURNING position
"""


def append_arguments(events: Sequence[NewEvent], metadata: EventMetadata) -> list[Any]:
    return [
        [e.stream_type for e in events],
        [e.stream_id for e in events],
        [e.stream_version for e in events],
        [e.type for e in events],
        [_encoder.encode(e.data).decode() for e in events],
        _encoder.encode(metadata).decode(),
    ]


async def append_events(
    conn: asyncpg.Connection,
    events: Sequence[NewEvent],
    metadata: EventMetadata,
    *,
    writes: str = "",
    arguments: Sequence[Any] = (),
) -> Position:
    """Append `events` in the given order within the caller's transaction and return the
    position of the last one. `writes` is an optional `WITH …` clause of the command's other
    writes, using parameters $1…$n given in `arguments`: all of it goes in one statement, one
    round trip. A stream version that already exists raises asyncpg.UniqueViolationError: the
    caller did not hold the stream's row lock."""
    rows = await conn.fetch(
        writes + append_statement(len(arguments) + 1),
        *arguments,
        *append_arguments(events, metadata),
    )
    return Position(max(r["position"] for r in rows))
