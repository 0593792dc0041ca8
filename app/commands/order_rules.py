"""Orders' commands, their results, and the rules that decide them: pure, no I/O.

`decide_*` take the state the handler locked and return the events, or raise a domain error.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec

from app.commands.errors import (
    DuplicateLines,
    InsufficientStock,
    InvalidTransition,
    UnknownProducts,
    VersionMismatch,
)
from app.contracts.events import (
    CUSTOMER_ID_CHARS,
    CUSTOMER_ID_MAX,
    TEXT_END,
    EventData,
    OrderCancelled,
    OrderLine,
    OrderPaid,
    OrderPlaced,
    OrderShipped,
    OrderStatus,
    StockReserved,
)

MAX_LINES: Final = 50
MAX_QUANTITY: Final = 100_000

CustomerIdText = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=CUSTOMER_ID_MAX, pattern=f"^{CUSTOMER_ID_CHARS}{TEXT_END}"
    ),
]
Action = Literal["pay", "ship", "cancel"]


class LineRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    product_id: uuid.UUID
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]


class PlaceOrder(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    customer_id: CustomerIdText
    lines: Annotated[tuple[LineRequest, ...], msgspec.Meta(min_length=1, max_length=MAX_LINES)]


class OrderResult(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    customer_id: str
    status: OrderStatus
    total_cents: int
    version: int
    position: int


@dataclass(frozen=True, slots=True)
class ProductRow:
    product_id: uuid.UUID
    sku: str
    name: str
    price_cents: int
    stock: int
    version: int


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_id: uuid.UUID
    customer_id: str
    status: OrderStatus
    total_cents: int
    version: int


def decide_place_order(
    order_id: uuid.UUID,
    cmd: PlaceOrder,
    products: Mapping[uuid.UUID, ProductRow],
    placed_at: datetime,
) -> tuple[OrderPlaced, list[StockReserved]]:
    """Price the order from `products` (locked rows) and reserve stock line by line.
    Raises DuplicateLines, UnknownProducts, InsufficientStock."""
    _check_lines(cmd, products)
    lines = tuple(
        OrderLine(
            product_id=p.product_id,
            sku=p.sku,
            name=p.name,
            quantity=line.quantity,
            unit_price_cents=p.price_cents,
            line_total_cents=p.price_cents * line.quantity,
        )
        for line in cmd.lines
        for p in (products[line.product_id],)
    )
    placed = OrderPlaced(
        order_id=order_id,
        customer_id=cmd.customer_id,
        lines=lines,
        total_cents=sum(line.line_total_cents for line in lines),
        placed_at=placed_at,
        item_count=sum(line.quantity for line in lines),
    )
    reserved = [
        StockReserved(
            product_id=line.product_id,
            order_id=order_id,
            quantity=line.quantity,
            unit_price_cents=line.unit_price_cents,
            stock=products[line.product_id].stock - line.quantity,
        )
        for line in sorted(lines, key=lambda line: line.product_id)
    ]
    return placed, reserved


def _check_lines(cmd: PlaceOrder, products: Mapping[uuid.UUID, ProductRow]) -> None:
    """Raises DuplicateLines, UnknownProducts or InsufficientStock, in that order."""
    repeated = [p for p, n in Counter(line.product_id for line in cmd.lines).items() if n > 1]
    if repeated:
        raise DuplicateLines(repeated)
    unknown = [line.product_id for line in cmd.lines if line.product_id not in products]
    if unknown:
        raise UnknownProducts(unknown)
    short = [
        {
            "product_id": str(line.product_id),
            "sku": products[line.product_id].sku,
            "requested": line.quantity,
            "available": products[line.product_id].stock,
        }
        for line in cmd.lines
        if products[line.product_id].stock < line.quantity
    ]
    if short:
        raise InsufficientStock(short)


_TRANSITIONS: Final[dict[Action, tuple[frozenset[str], OrderStatus, str]]] = {
    "pay": (frozenset({"placed"}), "paid", "paid"),
    "ship": (frozenset({"paid"}), "shipped", "shipped"),
    "cancel": (frozenset({"placed", "paid"}), "cancelled", "cancelled"),
}


def decide_transition(order: OrderRow, action: Action) -> EventData:
    """The order event for `action`. Raises InvalidTransition."""
    allowed_from, _, verb = _TRANSITIONS[action]
    if order.status not in allowed_from:
        raise InvalidTransition(order.order_id, order.status, verb)
    oid, cid, total = order.order_id, order.customer_id, order.total_cents
    if action == "pay":
        return OrderPaid(order_id=oid, customer_id=cid, total_cents=total)
    if action == "ship":
        return OrderShipped(order_id=oid, customer_id=cid, total_cents=total)
    return OrderCancelled(
        order_id=oid, customer_id=cid, total_cents=total, previous_status=order.status
    )


def check_version(order: OrderRow, expected: int | None) -> None:
    """Raises VersionMismatch when an If-Match version is given and the order moved on."""
    if expected is not None and expected != order.version:
        raise VersionMismatch(order.order_id, expected, order.version)


def status_after(action: Action) -> OrderStatus:
    return _TRANSITIONS[action][1]
