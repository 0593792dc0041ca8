"""The Mongo reads behind the query endpoints: one function per question, keyset pages only.

Every filter is built here from typed values (str, int, datetime); no client text ever becomes
a key or an operator. Pages fetch one item more than asked to know whether another page exists.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import NetworkTimeout

from app.contracts.events import OrderStatus
from app.contracts.readmodel import (
    BEST_SELLING,
    BY_SKU,
    CUSTOMERS,
    NEWEST_FIRST,
    ORDERS,
    PRODUCTS,
    Db,
    Document,
)
from app.queries.cursors import OrderCursor, ProductCursor

_COLLECTIONS: dict[tuple[int, str], AsyncCollection[Document]] = {}
_KEPT = 64  # collection objects kept; more (tests' databases) and the cache starts over


def _collection(db: Db, name: str) -> AsyncCollection[Document]:
    """`db[name]`, made once per database object: PyMongo builds a new collection object on
    every `db[name]` (5.9 µs against 0.4 µs for this lookup, docs/benchmarks.md), and every
    read asks for one. A process keeps its database object until the read model moves to
    another generation. Keyed by `id(db)`: a kept collection holds its database, so no other
    object can have that id while the entry exists."""
    key = (id(db), name)
    collection = _COLLECTIONS.get(key)
    if collection is None:
        if len(_COLLECTIONS) >= _KEPT:
            _COLLECTIONS.clear()
        collection = _COLLECTIONS[key] = db[name]
    return collection


class Bounded:
    """`async with Bounded(seconds):` bounds the reads inside by `seconds`; past it they are
    cancelled and NetworkTimeout (a PyMongoError: the endpoints answer 503) is raised.
    asyncio's timeout rather than `pymongo.timeout`: PyMongo's client-side operation timeout
    adds about a fifth to the CPU of a `find_one` (deadline checks at every step, a bounded
    wait for a pooled connection), and a cancelled PyMongo operation closes its connection,
    so nothing is left half-read. A class, not a generator: it wraps every read."""

    __slots__ = ("_seconds", "_timeout")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> object:
        self._timeout = asyncio.timeout(self._seconds)  # the bound starts here
        await self._timeout.__aenter__()
        return None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._timeout is not None
        try:
            await self._timeout.__aexit__(kind, error, traceback)
        except TimeoutError:
            if not self._timeout.expired():
                raise
            raise NetworkTimeout(
                f"the read model did not answer within {self._seconds:g} s"
            ) from None


async def find_order(db: Db, order_id: str) -> Document | None:
    return await _collection(db, ORDERS).find_one({"_id": order_id})


async def find_product(db: Db, product_id: str) -> Document | None:
    return await _collection(db, PRODUCTS).find_one({"_id": product_id})


async def find_customer(db: Db, customer_id: str) -> Document | None:
    return await _collection(db, CUSTOMERS).find_one({"_id": customer_id})


async def customer_orders(
    db: Db, customer_id: str, status: OrderStatus | None, after: OrderCursor | None, limit: int
) -> tuple[list[Document], OrderCursor | None]:
    """A customer's orders newest first (placed_at, then _id, both descending), served by the
    (customer_id, [status,] placed_at, _id) indexes; the cursor of the next page or None."""
    query: dict[str, Any] = {"customer_id": customer_id}
    if status is not None:
        query["status"] = status
    if after is not None:
        query["$or"] = [
            {"placed_at": {"$lt": after.placed_at}},
            {"placed_at": after.placed_at, "_id": {"$lt": after.order_id}},
        ]
    documents = (
        await _collection(db, ORDERS).find(query, sort=NEWEST_FIRST, limit=limit + 1).to_list()
    )
    if len(documents) <= limit:
        return documents, None
    last = documents[limit - 1]
    return documents[:limit], OrderCursor(placed_at=last["placed_at"], order_id=last["_id"])


async def products(
    db: Db, after: ProductCursor | None, limit: int
) -> tuple[list[Document], ProductCursor | None]:
    """Products by sku ascending (the unique sku index); the cursor of the next page or None."""
    query: dict[str, Any] = {} if after is None else {"sku": {"$gt": after.sku}}
    documents = await _collection(db, PRODUCTS).find(query, sort=BY_SKU, limit=limit + 1).to_list()
    if len(documents) <= limit:
        return documents, None
    return documents[:limit], ProductCursor(sku=documents[limit - 1]["sku"])


async def top_products(db: Db, limit: int) -> list[Document]:
    """The best sellers: units sold descending, ties by id (the (units_sold, _id) index)."""
    return await _collection(db, PRODUCTS).find({}, sort=BEST_SELLING, limit=limit).to_list()


async def order_changed(db: Db, order_id: str, after: int, through: int) -> list[Document]:
    """The order if its last applied event lies in (after, through] (streams), else []."""
    found = await _collection(db, ORDERS).find_one(
        {"_id": order_id, "position": {"$gt": after, "$lte": through}}
    )
    return [] if found is None else [found]


async def customer_orders_changed(
    db: Db, customer_id: str, after: int, through: int, limit: int
) -> list[Document]:
    """A customer's orders whose last applied event lies in (after, through], oldest change
    first, at most `limit` (streams). Scans that customer's orders (the customer_id prefix of
    its indexes): a customer has few."""
    query = {"customer_id": customer_id, "position": {"$gt": after, "$lte": through}}
    return await _collection(db, ORDERS).find(query, sort=[("position", 1)], limit=limit).to_list()
