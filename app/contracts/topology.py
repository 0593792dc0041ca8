"""RabbitMQ topology (DESIGN §5), declared idempotently by whichever part starts first.

- topic exchange `settings.exchange` (durable), routing keys `<stream_type>.<event>`;
- quorum queue `settings.projector_queue`, single active consumer, bound with `#`;
- quorum queue `settings.parked_queue` for messages the projector cannot decode.
"""

from __future__ import annotations

from typing import Any

import aiormq
import aiormq.abc

from app.plumbing.settings import Settings

_QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


async def connect(settings: Settings) -> aiormq.abc.AbstractConnection:
    """One AMQP connection; raises aiormq.AMQPConnectionError or OSError when unreachable."""
    connection: aiormq.abc.AbstractConnection = await aiormq.connect(settings.amqp_url)
    return connection


async def declare_topology(channel: aiormq.abc.AbstractChannel, settings: Settings) -> None:
    await channel.exchange_declare(settings.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(
        settings.projector_queue,
        durable=True,
        arguments={**_QUORUM, "x-single-active-consumer": True},
    )
    await channel.queue_bind(settings.projector_queue, settings.exchange, routing_key="#")
    await channel.queue_declare(settings.parked_queue, durable=True, arguments=_QUORUM)


async def delete_topology(channel: aiormq.abc.AbstractChannel, settings: Settings) -> None:
    """Remove what `declare_topology` made (tests and tenants cleaning up)."""
    await channel.queue_delete(settings.projector_queue)
    await channel.queue_delete(settings.parked_queue)
    await channel.exchange_delete(settings.exchange)
