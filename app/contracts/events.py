"""The event contract shared by the write side, the relay, the projector and the queries.

Each event type has a msgspec Struct for its `data`; `Envelope` is what the relay publishes
and what the projector consumes (docs/architecture.md §2). Event data carries every fact a
reader needs, so no reader ever asks the write side: order events carry the customer and the
total, product events carry the product's stock after the change.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final, Literal, NewType, get_args

import msgspec

from app.contracts.upcasting import current_version

Position = NewType("Position", int)

StreamType = Literal["order", "product"]
OrderStatus = Literal["placed", "paid", "shipped", "cancelled"]
ORDER_STATUSES: Final[tuple[OrderStatus, ...]] = get_args(OrderStatus)

# A customer id, as commands accept it and queries look it up: these characters, 1 to 64 of them.
CUSTOMER_ID_CHARS: Final = r"[A-Za-z0-9][A-Za-z0-9._:@\-]*"
CUSTOMER_ID_MAX: Final = 64
# The end of the text, for patterns that must match all of it: `$` also matches before a final
# newline in Python's regexes (so "A-1\n" passed `^[A-Z0-9-]+$`), `\Z` is not ECMA-262 (the
# OpenAPI document's dialect); "not followed by any character" means the same in both.
TEXT_END: Final = r"(?![\s\S])"


class EventData(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every event's data."""


class ProductCreated(EventData, frozen=True, kw_only=True):
    product_id: uuid.UUID
    sku: str
    name: str
    price_cents: int
    stock: int


class ProductRestocked(EventData, frozen=True, kw_only=True):
    product_id: uuid.UUID
    quantity: int
    stock: int


class StockReserved(EventData, frozen=True, kw_only=True):
    product_id: uuid.UUID
    order_id: uuid.UUID
    quantity: int
    unit_price_cents: int
    stock: int


class StockReleased(EventData, frozen=True, kw_only=True):
    product_id: uuid.UUID
    order_id: uuid.UUID
    quantity: int
    unit_price_cents: int
    stock: int


class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
    product_id: uuid.UUID
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int


class OrderPlaced(EventData, frozen=True, kw_only=True):
    """Schema version 2: `item_count` (units over all lines) is new; version 1 events are
    upcast (app/contracts/upcasting.py)."""

    order_id: uuid.UUID
    customer_id: str
    lines: tuple[OrderLine, ...]
    total_cents: int
    placed_at: datetime
    item_count: int


class OrderPaid(EventData, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: str
    total_cents: int


class OrderShipped(EventData, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: str
    total_cents: int


class OrderCancelled(EventData, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: str
    total_cents: int
    previous_status: OrderStatus


# type name -> (stream type, routing key, data struct)
EVENT_TYPES: Final[dict[str, tuple[StreamType, str, type[EventData]]]] = {
    "ProductCreated": ("product", "product.created", ProductCreated),
    "ProductRestocked": ("product", "product.restocked", ProductRestocked),
    "StockReserved": ("product", "product.stock_reserved", StockReserved),
    "StockReleased": ("product", "product.stock_released", StockReleased),
    "OrderPlaced": ("order", "order.placed", OrderPlaced),
    "OrderPaid": ("order", "order.paid", OrderPaid),
    "OrderShipped": ("order", "order.shipped", OrderShipped),
    "OrderCancelled": ("order", "order.cancelled", OrderCancelled),
}


def event_type(data: EventData) -> str:
    return type(data).__name__


def routing_key(type_name: str) -> str:
    """`<stream_type>.<event>`; an unknown type still gets a stable, bindable key."""
    known = EVENT_TYPES.get(type_name)
    return known[1] if known else f"unknown.{type_name}"


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event about to be appended to the log by the write side."""

    stream_type: StreamType
    stream_id: str
    stream_version: int
    data: EventData

    @property
    def type(self) -> str:
        return event_type(self.data)

    @property
    def schema_version(self) -> int:
        """Writers always write the newest version."""
        return current_version(self.type)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One logged event as published to the broker (docs/architecture.md §2). `data` is the
    event's JSON as logged, passed through undecoded (the relay never parses it; a consumer
    decodes it straight into its type with `decode_data`)."""

    event_id: uuid.UUID
    type: str
    schema_version: int
    stream_type: str
    stream_id: str
    stream_version: int
    position: int
    prev_position: int
    occurred_at: datetime
    correlation_id: str | None
    data: msgspec.Raw


_DATA_DECODERS: Final = {
    name: msgspec.json.Decoder(struct) for name, (_, _, struct) in EVENT_TYPES.items()
}


def decode_data(type_name: str, data: bytes | msgspec.Raw) -> EventData:
    """Typed data of a known event type from its JSON; raises KeyError for an unknown type and
    msgspec.ValidationError (or DecodeError) for data that does not match the contract."""
    decoded: EventData = _DATA_DECODERS[type_name].decode(data)
    return decoded
