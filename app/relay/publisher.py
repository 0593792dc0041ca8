"""Publishing logged events to the broker in log order, many unconfirmed at once (a window)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import aiormq.abc
import msgspec
from opentelemetry.trace import SpanKind
from pamqp.commands import Basic

from app.contracts.eventlog import LoggedEvent
from app.contracts.events import routing_key
from app.plumbing.tracing import TRACEPARENT, span_from

_encoder = msgspec.json.Encoder()


class PublishFailed(Exception):
    """The broker nacked a message or the channel died: republish from the checkpoint."""


def message_body(event: LoggedEvent, prev_position: int) -> bytes:
    """The envelope of docs/architecture.md §2 as JSON."""
    return _encoder.encode(event.envelope(prev_position))


def message_properties(event: LoggedEvent) -> Basic.Properties:
    """Persistent JSON with the event's id and type; its trace context in `traceparent`."""
    return Basic.Properties(
        headers={TRACEPARENT: event.traceparent} if event.traceparent else None,
        delivery_mode=2,
        content_type="application/json",
        message_id=str(event.event_id),
        message_type=event.type,
        timestamp=event.occurred_at,
    )


class ConfirmWindow:
    """Publishes on one confirm-mode channel with at most `size` messages unconfirmed and
    tracks `confirmed`: the highest position whose predecessors are all confirmed too.

    Order on the wire is publish-call order: each publish becomes a task started in call
    order, and aiormq serializes the frames of a channel under a FIFO lock."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, exchange: str, size: int) -> None:
        self._channel = channel
        self._exchange = exchange
        self._slots = asyncio.Semaphore(size)
        self._in_flight: deque[tuple[int, asyncio.Task[Any]]] = deque()
        self._failure: PublishFailed | None = None
        self._settled: asyncio.Future[None] | None = None
        self.confirmed = 0
        self.confirmed_count = 0  # messages confirmed on this channel (a metric)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def publish(self, event: LoggedEvent, prev_position: int) -> None:
        """Send one message, waiting for a free slot first; raises PublishFailed once any
        earlier message failed (nothing after a failure goes out on this channel)."""
        self.raise_failure()
        await self._slots.acquire()
        self.raise_failure()
        if event.traceparent is None:  # the usual case: no span, no context manager
            task = self._send(event, prev_position)
        else:
            with span_from(event.traceparent, f"publish {event.type}", SpanKind.PRODUCER):
                task = self._send(event, prev_position)
        task.add_done_callback(self._on_done)
        self._in_flight.append((event.position, task))

    def _send(self, event: LoggedEvent, prev_position: int) -> asyncio.Task[Any]:
        return asyncio.ensure_future(
            self._channel.basic_publish(  # type: ignore[call-arg]  # the ABC omits `wait`
                message_body(event, prev_position),
                exchange=self._exchange,
                routing_key=routing_key(event.type),
                properties=message_properties(event),
                # Don't hold the channel lock until each frame is flushed: frames still go
                # out in call order through the channel's write queue, many per socket write.
                wait=False,
            )
        )

    def settled(self) -> asyncio.Future[None]:
        """A future done once every message sent so far is confirmed, or one has failed (it
        never raises: `raise_failure` says which). Cancelling it is harmless."""
        if self._settled is None or self._settled.done():
            self._settled = asyncio.get_running_loop().create_future()
        self._notify_settled()
        return self._settled

    def abandon(self) -> None:
        """Stop waiting for confirms (the channel is being thrown away)."""
        for _, task in self._in_flight:
            task.cancel()
        self._in_flight.clear()

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._slots.release()
        if task.cancelled():
            self._fail(PublishFailed("a publish was cancelled before its confirm"))
        elif (exc := task.exception()) is not None:
            self._fail(PublishFailed(f"a publish failed: {exc!r}"))
        else:
            self.confirmed_count += 1
        while self._in_flight and _succeeded(self._in_flight[0][1]):
            self.confirmed = self._in_flight.popleft()[0]
        self._notify_settled()

    def _notify_settled(self) -> None:
        settled = self._settled
        ended = not self._in_flight or self._failure is not None
        if settled is not None and not settled.done() and ended:
            settled.set_result(None)

    def _fail(self, failure: PublishFailed) -> None:
        if self._failure is None:
            self._failure = failure

    def raise_failure(self) -> None:
        """Raise PublishFailed if a message sent so far was nacked or lost."""
        if self._failure is not None:
            raise self._failure


def _succeeded(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None
