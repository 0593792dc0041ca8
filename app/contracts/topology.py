"""RabbitMQ topology (docs/architecture.md §5), declared idempotently by whichever part
starts first.

- topic exchange `settings.exchange` (durable), routing keys `<stream_type>.<event>`;
- quorum queue `settings.projector_queue`, single active consumer, bound with `#`;
- quorum queue `settings.parked_queue` for messages the projector cannot decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import aiormq.abc

_QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


class Names(Protocol):
    """The broker names, which are settings (app.plumbing.settings.Settings has them), so that
    tests and tenants can use their own."""

    @property
    def exchange(self) -> str: ...
    @property
    def projector_queue(self) -> str: ...
    @property
    def parked_queue(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: str
    projector_queue: str
    parked_queue: str

    @classmethod
    def of(cls, names: Names) -> Topology:
        return cls(names.exchange, names.projector_queue, names.parked_queue)


async def declare_topology(channel: aiormq.abc.AbstractChannel, names: Names) -> None:
    await channel.exchange_declare(names.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(
        names.projector_queue,
        durable=True,
        arguments={**_QUORUM, "x-single-active-consumer": True},
    )
    await channel.queue_bind(names.projector_queue, names.exchange, routing_key="#")
    await channel.queue_declare(names.parked_queue, durable=True, arguments=_QUORUM)


async def delete_topology(channel: aiormq.abc.AbstractChannel, names: Names) -> None:
    """Remove what `declare_topology` made (tests and tenants cleaning up)."""
    await channel.queue_delete(names.projector_queue)
    await channel.queue_delete(names.parked_queue)
    await channel.exchange_delete(names.exchange)
