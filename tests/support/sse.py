"""Reading a server-sent event stream over real HTTP (httpx streaming), one message at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class Message:
    """One dispatched event, or one comment line (`comment` set, the rest empty)."""

    event: str | None = None
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class EventReader:
    """The messages of one `text/event-stream` response, as the SSE spec frames them."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, within_s: float = 10.0) -> Message:
        """The next event or comment; AssertionError when none comes within `within_s` (the
        reader is unusable after that)."""
        try:
            async with asyncio.timeout(within_s):
                return await self._next()
        except TimeoutError:
            raise AssertionError(f"no message within {within_s} s") from None

    async def next_event(self, within_s: float = 10.0) -> Message:
        """The next event, skipping comments and `retry` fields."""
        while True:
            message = await self.next(within_s)
            if message.comment is None and (message.data or message.event):
                return message

    async def _next(self) -> Message:
        fields: dict[str, str] = {}
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if fields or data:
                    retry = fields.get("retry")
                    return Message(
                        event=fields.get("event"),
                        id=fields.get("id"),
                        data="\n".join(data),
                        retry=int(retry) if retry is not None else None,
                    )
                continue
            if line.startswith(":"):
                return Message(comment=line[1:].strip())
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        raise AssertionError("the stream ended")


@contextlib.asynccontextmanager
async def event_stream(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[EventReader]:
    """GET `path` as a stream; the response (status, headers) is `reader.response`. Leaving
    the block closes the connection, as a browser tab that goes away does."""
    async with http.stream("GET", path, headers=headers) as response:
        yield EventReader(response)
