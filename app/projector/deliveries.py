"""What the projector receives, decoded, and the order in which it applies it.

A delivery is an Envelope (docs/architecture.md §2). `plan` turns a batch of deliveries into
the steps that apply the log strictly in position order: duplicates dropped, reorderings
undone, and a `Gap` wherever a delivery's `prev_position` says the transport lost something
(read from the log; docs/architecture.md §6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Literal

import asyncpg
import msgspec

from app.contracts.eventlog import LoggedEvent, fetch_range
from app.contracts.events import EVENT_TYPES, Envelope, EventData, decode_data
from app.contracts.upcasting import upcast

_decoder = msgspec.json.Decoder(Envelope)


class Undecodable(ValueError):
    """A message that is not an Envelope of a known shape; `reason` goes to the parked queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Why a delivery has no data: a type this version does not know (from a newer producer), or a
# log event of a known type whose data does not match it.
Skipped = Literal["unknown-type", "invalid-data"]


@dataclass(frozen=True, slots=True)
class Decoded:
    envelope: Envelope
    data: EventData | None  # None exactly when `skipped` says why: nothing is projected
    skipped: Skipped | None = None
    traceparent: str | None = None  # the command's trace context (app/plumbing/tracing.py)

    @property
    def position(self) -> int:
        return self.envelope.position


@dataclass(frozen=True, slots=True)
class Gap:
    """Log positions `after` < p <= `through` that must be read from PostgreSQL."""

    after: int
    through: int


def decode_body(body: bytes, traceparent: str | None = None) -> Decoded:
    """The delivered event. Raises Undecodable for anything but an Envelope whose data
    matches its (known) type; an unknown type decodes with data None (tolerant reader)."""
    try:
        envelope = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise Undecodable(f"not an event envelope: {exc}") from None
    try:
        return _with_data(envelope, traceparent)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise Undecodable(f"invalid {envelope.type} data: {exc}") from None


def decode_logged(event: LoggedEvent, prev_position: int) -> Decoded:
    """An event read from the log; data that does not decode is marked "invalid-data" (data
    None): the projector parks it and holds its stream (app/projector/poison.py)."""
    envelope = event.envelope(prev_position)
    try:
        return _with_data(envelope, event.traceparent)
    except msgspec.DecodeError:  # ValidationError included
        return Decoded(envelope, None, "invalid-data", event.traceparent)


def _with_data(envelope: Envelope, traceparent: str | None) -> Decoded:
    """The envelope with its data decoded; data None for a type this version does not know.
    Raises msgspec.DecodeError when the data does not match its known type."""
    if envelope.type not in EVENT_TYPES:
        return Decoded(envelope, None, "unknown-type", traceparent)
    version, data = upcast(envelope.type, envelope.schema_version, envelope.data)
    if version != envelope.schema_version:  # published before an upgrade
        envelope = msgspec.structs.replace(envelope, schema_version=version, data=msgspec.Raw(data))
    return Decoded(envelope, decode_data(envelope.type, envelope.data), None, traceparent)


def plan(applied: int, deliveries: Iterable[Decoded]) -> list[Decoded | Gap]:
    """Steps that continue the read model from `applied` in position order.

    Deliveries at or below the applied position (or repeated) are duplicates and vanish. A
    delivery whose `prev_position` is past what precedes it is preceded by a Gap up to just
    before it: the relay publishes every committed event, so the log fills it exactly."""
    steps: list[Decoded | Gap] = []
    cursor = applied
    for delivery in sorted(deliveries, key=lambda d: d.position):
        if delivery.position <= cursor:
            continue
        if delivery.envelope.prev_position > cursor:
            steps.append(Gap(after=cursor, through=delivery.position - 1))
        steps.append(delivery)
        cursor = delivery.position
    return steps


async def read_gap(pool: asyncpg.Pool, gap: Gap, chunk: int) -> AsyncIterator[list[Decoded]]:
    """The log's events of `gap`, read and decoded `chunk` positions at a time (a read model
    refilled from position 0 is one big gap); a chunk may be empty (rolled-back positions)."""
    after = gap.after
    while after < gap.through:
        through = min(after + chunk, gap.through)
        async with pool.acquire() as conn:
            yield repaired(Gap(after, through), await fetch_range(conn, after, through))
        after = through


def repaired(gap: Gap, events: Iterable[LoggedEvent]) -> list[Decoded]:
    """The log's events of `gap`, chained by their real predecessors."""
    decoded: list[Decoded] = []
    prev = gap.after
    for event in events:
        decoded.append(decode_logged(event, prev))
        prev = event.position
    return decoded
