"""The app's broker connections against a real RabbitMQ: their frame queues are large enough that
a confirm window or a prefetch crosses them without waiting for the event loop every 10 frames
(app/plumbing/resources.py)."""

from __future__ import annotations

import asyncio

from pamqp import commands as spec

from app.plumbing.resources import FRAME_BUFFER, close_broker, connect_broker
from app.plumbing.settings import Settings


async def test_the_connection_and_its_channels_queue_frame_buffer_frames(
    settings: Settings,
) -> None:
    connection = await connect_broker(settings)
    try:
        assert connection.write_queue.maxsize == FRAME_BUFFER
        default = await connection.channel()
        confirming = await connection.channel(publisher_confirms=True)
        plain = await connection.channel(publisher_confirms=False)
        assert [c.frames.maxsize for c in (default, confirming, plain)] == [FRAME_BUFFER] * 3
        # aiormq's own default stays: a channel confirms unless told otherwise
        assert default.publisher_confirms
        assert not plain.publisher_confirms
    finally:
        await close_broker(connection)


async def test_a_window_of_publishes_is_confirmed_in_order(settings: Settings) -> None:
    """More unconfirmed publishes than the old 10-frame queues held, all on the socket before
    any confirm is read: every one is confirmed, and they reach the queue in publish order."""
    connection = await connect_broker(settings)
    try:
        channel = await connection.channel()
        queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).queue
        assert queue is not None
        publishes = [
            asyncio.ensure_future(
                channel.basic_publish(str(i).encode(), routing_key=queue, wait=False)
            )
            for i in range(1000)
        ]
        confirms = await asyncio.wait_for(asyncio.gather(*publishes), 30)
        assert all(isinstance(c, spec.Basic.Ack) for c in confirms)
        bodies = []
        for _ in range(1000):
            got = await channel.basic_get(queue, no_ack=True)
            bodies.append(int(got.body))
        assert bodies == list(range(1000))
    finally:
        await close_broker(connection)
