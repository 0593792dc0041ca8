"""Server-sent events (`text/event-stream`): the framing, the bound on a replica's open streams
and the streaming response that gives its slot back however the stream ends.

Every stream of the app (app/queries/streams.py, app/operations/dashboard.py) takes a slot of
one `StreamSlots` per app (STREAM_MAX_OPEN); past the bound a new stream is refused with 503
and `Retry-After` before anything is streamed. A client that goes away ends its stream quietly:
Starlette cancels the body's generator and `EventStream` releases the slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.plumbing.problems import ServiceUnavailable

MEDIA_TYPE: Final = "text/event-stream"
RETRY_AFTER_S: Final = 5  # what a refused client is told to wait before trying again
RECONNECT_MS: Final = 1000  # the `retry:` field: how long an EventSource waits to reconnect


def event(data: bytes, *, event_id: int | None = None, name: str | None = None) -> bytes:
    """One event: `id`, `event` and `data` fields (one `data:` line per line of `data`)."""
    head = b""
    if event_id is not None:
        head += b"id: %d\n" % event_id
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return head + lines + b"\n"


def comment(text: str) -> bytes:
    """A comment line: clients ignore it; it keeps proxies and idle timers from closing."""
    return b": " + text.encode() + b"\n\n"


def reconnect_after(milliseconds: int = RECONNECT_MS) -> bytes:
    return b"retry: %d\n\n" % milliseconds


class Slot:
    """One open stream's place in its `StreamSlots`; `release` is idempotent."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots: StreamSlots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.open -= 1
            self._slots = None


class StreamSlots:
    """The bound on the streams a replica holds open at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> Slot:
        """A slot; raises ServiceUnavailable (503, Retry-After) when all are taken."""
        if self.open >= self.limit:
            raise ServiceUnavailable(
                f"this replica already holds {self.limit} open streams (STREAM_MAX_OPEN);"
                " retry later or on another replica",
                headers={"Retry-After": str(RETRY_AFTER_S)},
                open_streams=self.open,
            )
        self.open += 1
        return Slot(self)


@dataclass(frozen=True, slots=True)
class Streams:
    """An app's streams: the slots every stream takes, the heartbeat interval, and the least
    time between two reads of one stream (one wake-up serves every stream at once)."""

    slots: StreamSlots
    heartbeat_s: float
    check_interval_s: float


def install(app: Starlette, streams: Streams) -> None:
    app.state.streams = streams


def streams_of(request: Request) -> Streams:
    streams: Streams = request.app.state.streams
    return streams


class EventStream(StreamingResponse):
    """A `text/event-stream` response of `events`, holding `slot` until the stream ends: the
    generator ran out, the client went away (Starlette cancels the generator), or the server
    cancelled the request. Never cached, never buffered by a proxy."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        slot: Slot,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            events,
            media_type=MEDIA_TYPE,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._events = events
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass  # ASGI 2.4 servers report a gone client by failing the send: a normal end
        finally:
            self._slot.release()
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()  # a generator never started (client gone at once) runs nothing
