"""Response bodies of the read endpoints and their making from read-model documents.

The Structs name exactly what a client sees: the command API's names, no Mongo internals
(`_id`, `position`), datetimes as RFC 3339. Counters a projector may not have written yet
default to zero, so an older document still reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Generic, TypeVar

import msgspec

T = TypeVar("T")


class OrderLineBody(msgspec.Struct, frozen=True, kw_only=True):
    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int


class StatusChangeBody(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    at: datetime
    position: int


class OrderBody(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    customer_id: str
    status: str
    lines: list[OrderLineBody]
    total_cents: int
    # units over all lines (OrderPlaced v2); null in a document projected before the upgrade
    # until the read model is rebuilt
    item_count: int | None = None
    status_history: list[StatusChangeBody] = []
    placed_at: datetime
    updated_at: datetime
    version: int


class ProductBody(msgspec.Struct, frozen=True, kw_only=True):
    product_id: str
    sku: str
    name: str
    price_cents: int
    stock: int
    units_sold: int = 0
    revenue_cents: int = 0
    version: int
    created_at: datetime
    updated_at: datetime


class CustomerBody(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    order_count: int = 0
    total_spent_cents: int = 0
    last_order_at: datetime | None = None


class PageBody(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One page of a list; `next_cursor` is null on the last page."""

    items: list[T]
    next_cursor: str | None


_encoder: Final = msgspec.json.Encoder()


def order(document: dict[str, Any]) -> OrderBody:
    return msgspec.convert(document, OrderBody)


def product(document: dict[str, Any]) -> ProductBody:
    return msgspec.convert(document, ProductBody)


def customer(document: dict[str, Any]) -> CustomerBody:
    return msgspec.convert(document, CustomerBody)


def encode(body: msgspec.Struct) -> bytes:
    return _encoder.encode(body)
