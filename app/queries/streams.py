"""Server-sent event streams of the read model: one order, or one customer's orders, each time
the projector changes them.

`GET /orders/{order_id}/stream` opens with the order as `GET /orders/{order_id}` shows it, then
sends it again after each change; `GET /customers/{customer_id}/orders/stream` opens with a
`ready` event and then sends each of that customer's orders that changes. Each `order` event's
data is the order document; its `id` is a read-model applied position P such that the stream
has now sent every change of what it follows up to P (the position of the order's last change,
or the applied position it was read at). `ready` carries the position the stream continues
after, as its `id` and in its data.

Resuming: a client that reconnects with `Last-Event-ID: P` (EventSource does so by itself) gets
exactly the changes after P, nothing it already has: the stream first waits until the read
model here has applied P (a replica that lags behind, at most READ_WAIT_MAX_S, else 503), then
sends only documents whose last change lies after P. So a reconnect never misses a change nor
repeats one; an order that did not change meanwhile is not sent again. `after=<position>` works
as on every query (wait until applied, e.g. for the order a command just placed).

How changes are found: each stream waits on the query side's `Waiter` for a position past the
last one it covered: woken in-process where the projector runs, by polling `meta` where it
stands by. Then it reads the documents that changed up to the applied position, never beyond
it: a batch that is being written can show a later document before an earlier one, and the
stream must not pass the earlier one by. One stream reads at most once per
READ_POLL_INTERVAL_S. Every read takes the database from `QueryContext.db` at that moment, so
a read-model generation switch is followed mid-stream. A heartbeat comment goes out after
STREAM_HEARTBEAT_S without an event. MongoDB failing mid-stream keeps the stream open and
retries; the access rules are those of the matching GET.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import msgspec
from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.contracts.readmodel import Db, Document
from app.plumbing import access, sse
from app.plumbing.access import signed_in
from app.plumbing.problems import Problem
from app.queries import documents, reads
from app.queries.params import MAX_POSITION, NotFound, customer_id, uuid_id
from app.queries.routes import QueryContext, Reading, _query
from app.queries.waiting import wait_until_applied

log = logging.getLogger(__name__)

ORDER_EVENT: Final = "order"
READY_EVENT: Final = "ready"
BATCH: Final = 100  # documents sent per read at most
_RETRY_S: Final = 1.0  # pause after a failed read before the next
_POSITION = re.compile(r"[0-9]{1,19}")

# the documents that changed in (after, through], oldest change first, at most BATCH
Changed = Callable[[Db, int, int], Awaitable[list[Document]]]


class InvalidLastEventId(Problem):
    status = 400
    slug = "invalid-last-event-id"


def last_event_id(request: Request) -> int | None:
    """The position of `Last-Event-ID`, None without one; 400 unless it is a position."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not _POSITION.fullmatch(raw) or int(raw) > MAX_POSITION:
        raise InvalidLastEventId(
            "Last-Event-ID must be the id of an event this stream sent (a log position)"
        )
    return int(raw)


class Follow:
    """One stream's loop: wait for the applied position to pass `last`, read what changed up to
    it, frame each document as an event; heartbeats in between."""

    def __init__(self, context: QueryContext, streams: sse.Streams, changed: Changed) -> None:
        self._context = context
        self._streams = streams
        self._changed = changed

    async def events(self, last: int, opening: bytes = b"") -> AsyncIterator[bytes]:
        """The stream's bytes, forever (the client's going away cancels it)."""
        loop = asyncio.get_running_loop()
        heartbeat_s = self._streams.heartbeat_s
        yield sse.reconnect_after() + opening
        beat_at = loop.time() + heartbeat_s
        while True:
            try:
                through = self._context.waiter.current
                if through > last:
                    chunk, last = await self._read(last, through)
                    if chunk:
                        yield chunk
                        beat_at = loop.time() + heartbeat_s
                    if last == through:  # else more changed than one read sends: go on
                        await asyncio.sleep(self._streams.check_interval_s)
                    continue
                if loop.time() >= beat_at:
                    yield sse.comment("heartbeat")
                    beat_at = loop.time() + heartbeat_s
                    continue
                await self._context.waiter.wait_for(last + 1, beat_at - loop.time())
            except PyMongoError as exc:
                log.warning("a stream cannot read the read model, will retry: %r", exc)
                await asyncio.sleep(_RETRY_S)

    async def _read(self, last: int, through: int) -> tuple[bytes, int]:
        """The events of the documents changed in (last, through] and the position they cover."""
        async with reads.Bounded(self._context.read_timeout_s):
            found = await self._changed(self._context.db, last, through)
        complete = len(found) < BATCH
        covered = through if complete else found[-1]["position"]
        chunk = b"".join(
            sse.event(
                documents.encode(documents.order(document)),
                event_id=covered if i == len(found) - 1 else document["position"],
                name=ORDER_EVENT,
            )
            for i, document in enumerate(found)
        )
        return chunk, covered


async def _start(context: QueryContext, read: Reading, request: Request) -> int | None:
    """Waits until the later of `after` and Last-Event-ID is applied (503 past the bound),
    keeping the position it reads at; returns Last-Event-ID."""
    resume = last_event_id(request)
    read.position = await wait_until_applied(
        context.waiter, max(read.args.after(), resume or 0), context.read_wait_max_s
    )
    return resume


async def stream_order(request: Request, read: Reading) -> Response:
    context: QueryContext = request.app.state.queries
    streams = sse.streams_of(request)
    order_id = uuid_id(request.path_params["order_id"], "order")
    slot = streams.slots.take()
    try:
        resume = await _start(context, read, request)
        async with reads.Bounded(context.read_timeout_s):
            found = await reads.find_order(context.db, order_id)
        # another customer's order is answered as missing, as on GET /orders/{order_id}
        if found is None or not access.principal(request).may_act_for(found["customer_id"]):
            raise NotFound(f"no order {order_id}", order_id=order_id)
    except BaseException:
        slot.release()
        raise

    def changed(db: Db, after: int, through: int) -> Awaitable[list[Document]]:
        return reads.order_changed(db, order_id, after, through)

    follow = Follow(context, streams, changed)
    return sse.EventStream(follow.events(resume or 0), slot)


async def stream_customer_orders(request: Request, read: Reading) -> Response:
    context: QueryContext = request.app.state.queries
    streams = sse.streams_of(request)
    wanted = customer_id(request.path_params["customer_id"])
    access.principal(request).require_customer(wanted)
    slot = streams.slots.take()
    try:
        resume = await _start(context, read, request)
    except BaseException:
        slot.release()
        raise
    start = read.position if resume is None else resume
    assert start is not None

    def changed(db: Db, after: int, through: int) -> Awaitable[list[Document]]:
        return reads.customer_orders_changed(db, wanted, after, through, BATCH)

    ready = msgspec.json.encode({"customer_id": wanted, "position": start})
    opening = sse.event(ready, event_id=start, name=READY_EVENT)
    follow = Follow(context, streams, changed)
    return sse.EventStream(follow.events(start, opening), slot)


def routes() -> list[Route]:
    # the rules of GET /orders/{order_id} and GET /customers/{customer_id}/orders
    return [
        Route("/orders/{order_id}/stream", _query(signed_in(stream_order)), methods=["GET"]),
        Route(
            "/customers/{customer_id}/orders/stream",
            _query(signed_in(stream_customer_orders)),
            methods=["GET"],
        ),
    ]
