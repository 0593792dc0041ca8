"""HTTP query endpoints: type the parameters, wait for `after`, read Mongo, respond.

Every answer, problems included, carries `X-Read-Position`: a position the read model had
applied when the answer was read, which a client can pass back as `after`. An unreachable or
failing Mongo answers 503 with Retry-After, never 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.contracts.generations import ReadModel
from app.contracts.readmodel import Db
from app.plumbing import access
from app.plumbing.access import admin_only, signed_in
from app.plumbing.problems import Problem, ServiceUnavailable
from app.queries import documents, reads
from app.queries.cache import (
    CacheKey,
    ReadCache,
    product_key,
    products_page_key,
    top_products_key,
)
from app.queries.cursors import C, OrderCursor, ProductCursor, decode_cursor, encode_cursor
from app.queries.params import NotFound, QueryArgs, customer_id, uuid_id
from app.queries.waiting import Waiter, wait_until_applied

log = logging.getLogger(__name__)

READ_POSITION: Final = "X-Read-Position"
_READ_POSITION_KEY: Final = READ_POSITION.lower().encode("latin-1")
_NO_PARAMS: Final = QueryParams()


@dataclass(frozen=True, slots=True)
class QueryContext:
    """What the query endpoints need, built by the composition root. `db` is the database of
    the read model generation in use at the time it is asked (app/contracts/generations.py):
    ask for it per read, never keep it."""

    model: ReadModel
    waiter: Waiter
    read_wait_max_s: float
    read_timeout_s: float = 5.0  # bounds each Mongo read, so a hung server answers 503 in time
    cache: ReadCache | None = None  # the read cache (REDIS_URL; app/queries/cache.py)

    @property
    def db(self) -> Db:
        return self.model.db


class Reading:
    """One request's read: its typed query string, then the wait for `after` and the bounded
    Mongo reads, remembering the position they reflect."""

    def __init__(self, context: QueryContext, args: QueryArgs) -> None:
        self.context = context
        self.args = args
        self.position: int | None = None
        self.database: str | None = None  # the read model's database read, once it is

    def applied(self) -> _Applied:
        """`async with read.applied() as db:` waits until `after` is applied (503 past the
        bound), then yields the database with every read inside bounded by `read_timeout_s`.
        Parse everything before entering, so a bad request is refused without waiting."""
        return _Applied(self)

    async def cached(self, key: CacheKey, answer: Callable[[], Awaitable[Response]]) -> Response:
        """`answer()` through the read cache when there is one: a kept body that reflects
        `after` and every change since, at the position it was read at; else `answer()`, whose
        200 body is kept with the position it reflects."""
        cache = self.context.cache
        if cache is None:
            return await answer()
        entry = await cache.get(self.context.db.name, key, self.args.after())
        if entry is not None:
            self.position = entry.position  # its X-Read-Position: never later than its content
            return Response(entry.body, media_type="application/json")
        response = await answer()
        if response.status_code == 200 and self.position is not None and self.database:
            await cache.put(self.database, key, self.position, bytes(response.body))
        return response


class _Applied(reads.Bounded):
    """Reading.applied's context (a class, not a generator: every read goes through it)."""

    __slots__ = ("_reading",)

    def __init__(self, reading: Reading) -> None:
        super().__init__(reading.context.read_timeout_s)
        self._reading = reading

    async def __aenter__(self) -> Db:
        reading = self._reading
        context = reading.context
        reading.position = await wait_until_applied(
            context.waiter, reading.args.after(), context.read_wait_max_s
        )
        db = context.db
        reading.database = db.name
        await super().__aenter__()  # the reads' bound starts after the wait
        return db


Endpoint = Callable[[Request, Reading], Awaitable[Response]]


def _query(read: Endpoint, known: Iterable[str] = ()) -> Callable[[Request], Awaitable[Response]]:
    """The ASGI endpoint around `read`: types the query string, stamps X-Read-Position on every
    answer and turns Mongo failures into 503."""

    async def endpoint(request: Request) -> Response:
        context: QueryContext = request.app.state.queries
        reading: Reading | None = None
        try:
            params = request.query_params if request.scope["query_string"] else _NO_PARAMS
            reading = Reading(context, QueryArgs(params, known))
            reading.args.after()  # a bad `after` is refused like any other parameter
            response = await read(request, reading)
        except Problem as problem:
            problem.headers.setdefault(READ_POSITION, str(_read_at(context, reading)))
            raise
        except PyMongoError as exc:
            raise _unavailable(exc, context.waiter.current) from None
        # appended, not set: no endpoint sets it (a MutableHeaders would search for it first)
        response.raw_headers.append((_READ_POSITION_KEY, str(_read_at(context, reading)).encode()))
        return response

    endpoint.__name__ = read.__name__
    return endpoint


def _read_at(context: QueryContext, reading: Reading | None) -> int:
    # the position read at, not a newer one: a 404 only holds up to what was read
    if reading is None or reading.position is None:
        return context.waiter.current
    return reading.position


def _unavailable(exc: PyMongoError, position: int) -> ServiceUnavailable:
    if isinstance(exc, ConnectionFailure):
        log.warning("MongoDB unreachable for a query: %r", exc)
    else:
        log.error("MongoDB failed a query: %r", exc)
    return ServiceUnavailable(
        "the read model is unavailable; retry shortly",
        headers={"Retry-After": "1", READ_POSITION: str(position)},
    )


def _json(body: msgspec.Struct, headers: dict[str, str] | None = None) -> Response:
    return Response(documents.encode(body), media_type="application/json", headers=headers)


def _cursor(args: QueryArgs, kind: type[C]) -> C | None:
    raw = args.text("cursor")
    return None if raw is None else decode_cursor(raw, kind)


def _page(items: list[Any], cursor: OrderCursor | ProductCursor | None) -> Response:
    next_cursor = None if cursor is None else encode_cursor(cursor)
    return _json(documents.PageBody(items=items, next_cursor=next_cursor))


# ---- endpoints ---------------------------------------------------------------------------


async def get_products(request: Request, read: Reading) -> Response:
    after = _cursor(read.args, ProductCursor)
    limit = read.args.limit(default=20)

    async def answer() -> Response:
        async with read.applied() as db:
            found, cursor = await reads.products(db, after, limit)
        return _page([documents.product(d) for d in found], cursor)

    return await (answer() if after is not None else read.cached(products_page_key(limit), answer))


async def get_product(request: Request, read: Reading) -> Response:
    product_id = uuid_id(request.path_params["product_id"], "product")

    async def answer() -> Response:
        async with read.applied() as db:
            found = await reads.find_product(db, product_id)
        if found is None:
            raise NotFound(f"no product {product_id}", product_id=product_id)
        return _json(documents.product(found))

    return await read.cached(product_key(product_id), answer)


async def get_order(request: Request, read: Reading) -> Response:
    order_id = uuid_id(request.path_params["order_id"], "order")
    async with read.applied() as db:
        found = await reads.find_order(db, order_id)
    # another customer's order is answered as missing: its existence is not theirs to know
    if found is None or not access.principal(request).may_act_for(found["customer_id"]):
        raise NotFound(f"no order {order_id}", order_id=order_id)
    body = documents.order(found)
    etag = f'"{body.version}"'
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    return _json(body, headers={"ETag": etag})


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110 §13.1.2): `*` or any listed tag, W/ or not."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


async def get_customer(request: Request, read: Reading) -> Response:
    wanted = customer_id(request.path_params["customer_id"])
    access.principal(request).require_customer(wanted)
    async with read.applied() as db:
        found = await reads.find_customer(db, wanted)
    if found is None:
        raise NotFound(f"no customer {wanted!r}", customer_id=wanted)
    return _json(documents.customer(found))


async def get_customer_orders(request: Request, read: Reading) -> Response:
    wanted = customer_id(request.path_params["customer_id"])
    access.principal(request).require_customer(wanted)
    status, after = read.args.status(), _cursor(read.args, OrderCursor)
    limit = read.args.limit(default=20)
    async with read.applied() as db:
        found, cursor = await reads.customer_orders(db, wanted, status, after, limit)
    return _page([documents.order(d) for d in found], cursor)


async def get_top_products(request: Request, read: Reading) -> Response:
    limit = read.args.limit(default=10)

    async def answer() -> Response:
        async with read.applied() as db:
            found = await reads.top_products(db, limit)
        return _page([documents.product(d) for d in found], None)

    return await read.cached(top_products_key(limit), answer)


def routes() -> list[Route]:
    page = ("limit", "cursor")
    return [
        Route("/products", _query(get_products, page), methods=["GET"]),
        Route("/products/{product_id}", _query(get_product), methods=["GET"]),
        # a customer reads only their own orders and customer documents; an admin reads all
        Route("/orders/{order_id}", _query(signed_in(get_order)), methods=["GET"]),
        Route("/customers/{customer_id}", _query(signed_in(get_customer)), methods=["GET"]),
        Route(
            "/customers/{customer_id}/orders",
            _query(signed_in(get_customer_orders), (*page, "status")),
            methods=["GET"],
        ),
        Route(
            "/reports/top-products",
            _query(admin_only(get_top_products), ("limit",)),
            methods=["GET"],
        ),
    ]
