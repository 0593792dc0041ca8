"""The projector's side of the broker: deliveries in, batches out, the undecodable parked.

`subscribe` turns the consumer callback into a queue of deliveries in arrival order (None
once the channel closes); `take` cuts batches from it; `decode` splits a batch into events
and messages to park; `park` moves one to the parked queue with the reason in its headers.
"""

from __future__ import annotations

import asyncio

import aiormq.abc
from pamqp import commands as spec

from app.contracts.topology import Topology, declare_topology
from app.plumbing.tracing import TRACEPARENT
from app.projector.deliveries import Decoded, Undecodable, decode_body

Message = aiormq.abc.DeliveredMessage
Parked = tuple[Message, str]
Inbox = asyncio.Queue[Message | None]


class ConnectionLost(ConnectionError):
    """The AMQP channel closed while the projector was consuming."""


async def subscribe(
    channel: aiormq.abc.AbstractChannel, topology: Topology, prefetch: int
) -> Inbox:
    """Consume the projector queue (manual acks, `prefetch` unacked at most)."""
    inbox: Inbox = asyncio.Queue()
    await declare_topology(channel, topology)
    await channel.basic_qos(prefetch_count=prefetch)
    channel.closing.add_done_callback(lambda _: inbox.put_nowait(None))

    async def deliver(message: Message) -> None:
        inbox.put_nowait(message)

    await channel.basic_consume(topology.projector_queue, deliver, no_ack=False)
    return inbox


async def take(inbox: Inbox, limit: int, idle_s: float) -> list[Message]:
    """What is ready, up to `limit`, waiting up to `idle_s` for the first ([] when none came).
    Raises ConnectionLost."""
    # asyncio.timeout, not wait_for: on 3.11 a cancellation that lands as wait_for's own
    # timeout fires can be swallowed, and a cancelled projector would take the next batch.
    try:
        async with asyncio.timeout(idle_s):
            first = await inbox.get()
    except TimeoutError:
        return []
    if first is None:
        raise ConnectionLost("the AMQP channel closed")
    batch = [first]
    while len(batch) < limit and not inbox.empty():
        message = inbox.get_nowait()
        if message is None:
            inbox.put_nowait(None)  # handle what arrived, then notice the loss
            break
        batch.append(message)
    return batch


def decode(batch: list[Message]) -> tuple[list[Decoded], list[Parked]]:
    """The batch's events in delivery order, and the messages that do not decode."""
    decoded: list[Decoded] = []
    parked: list[Parked] = []
    for message in batch:
        headers = message.header.properties.headers or {}
        traceparent = headers.get(TRACEPARENT)
        try:
            decoded.append(
                decode_body(message.body, traceparent if isinstance(traceparent, str) else None)
            )
        except Undecodable as exc:
            parked.append((message, exc.reason))
    return decoded, parked


async def park(
    channel: aiormq.abc.AbstractChannel, message: Message, reason: str, queue: str
) -> None:
    """Publish `message` to `queue` (persistent, through the default exchange) with
    `x-parked-reason` and `x-original-routing-key` added to its headers; returns once the
    broker confirmed it. The caller acks the original afterwards."""
    original = message.header.properties
    headers = {
        **(original.headers or {}),
        "x-parked-reason": reason[:1000],
        "x-original-routing-key": message.routing_key or "",
    }
    properties = spec.Basic.Properties(
        headers=headers,
        delivery_mode=2,
        message_id=original.message_id,
        message_type=original.message_type,
        content_type=original.content_type,
    )
    confirm = await channel.basic_publish(message.body, routing_key=queue, properties=properties)
    if not isinstance(confirm, spec.Basic.Ack):
        raise ConnectionLost(f"the broker did not confirm parking: {confirm!r}")
