"""Orders: place, pay, ship, cancel. Each handler runs inside its caller's transaction.

Locking: an order's product rows are always locked in product-id order (one fixed order, so
two multi-line orders never deadlock), and every stream's row lock is taken before its events
draw positions, so one stream's events are logged in version order. The decisions themselves
are in app/commands/order_rules.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.commands.errors import OrderNotFound
from app.commands.order_rules import (
    Action,
    OrderResult,
    OrderRow,
    PlaceOrder,
    ProductRow,
    check_version,
    decide_place_order,
    decide_transition,
    status_after,
)
from app.commands.outbox import EventMetadata, append_events
from app.contracts.events import NewEvent, StockReleased, StockReserved

# ---- handlers ----------------------------------------------------------------------------
# Each handler takes its locks with one statement, decides in Python, then writes everything
# (rows and events) with one more statement: few round trips, short lock hold times.

_LOCK_PRODUCTS = """
SELECT product_id, sku, name, price_cents, stock, version FROM products
WHERE product_id = ANY($1::uuid[]) ORDER BY product_id FOR UPDATE
"""

# $1..$3: product ids, new stocks, new versions
_SAVE_STOCK = """
stock AS (
    UPDATE products AS p SET stock = u.stock, version = u.version, updated_at = now()
    FROM unnest($1::uuid[], $2::bigint[], $3::int[]) AS u(product_id, stock, version)
    WHERE p.product_id = u.product_id
)"""

_PLACE = f"""
WITH {_SAVE_STOCK}, placed AS (
    INSERT INTO orders (order_id, customer_id, status, total_cents, version, placed_at,
                        updated_at)
    VALUES ($4, $5, 'placed', $6, 1, $7, $7)
), lines AS (
    INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents)
    SELECT $4, l.n, l.product_id, l.quantity, l.price
    FROM unnest($8::uuid[], $9::int[], $10::bigint[]) WITH ORDINALITY
         AS l(product_id, quantity, price, n)
)"""

_LOCK_ORDER = """
SELECT order_id, customer_id, status, total_cents, version FROM orders
WHERE order_id = $1 FOR UPDATE
"""

# The order's lines with their products, product rows locked in product-id order.
_LOCK_ORDER_PRODUCTS = """
SELECT p.product_id, p.sku, p.name, p.price_cents, p.stock, p.version,
       l.quantity, l.unit_price_cents
FROM order_lines AS l JOIN products AS p ON p.product_id = l.product_id
WHERE l.order_id = $1 ORDER BY p.product_id FOR UPDATE OF p
"""

# $4..$6: order id, new status, new version
_MOVE = "moved AS (UPDATE orders SET status = $5, version = $6, updated_at = now()"
_MOVE += " WHERE order_id = $4)"


def _stock_writes(
    products: Mapping[uuid.UUID, ProductRow], changes: Sequence[StockReserved | StockReleased]
) -> tuple[list[NewEvent], list[Any]]:
    """The product events of `changes` and the arguments of _SAVE_STOCK."""
    events = [
        NewEvent(
            stream_type="product",
            stream_id=str(c.product_id),
            stream_version=products[c.product_id].version + 1,
            data=c,
        )
        for c in changes
    ]
    arguments = [
        [c.product_id for c in changes],
        [c.stock for c in changes],
        [e.stream_version for e in events],
    ]
    return events, arguments


async def place_order(
    conn: asyncpg.Connection, cmd: PlaceOrder, meta: EventMetadata
) -> OrderResult:
    """Emits OrderPlaced (order version 1) then StockReserved per line (in product-id order).
    Raises DuplicateLines, UnknownProducts, InsufficientStock."""
    order_id = uuid.uuid4()
    rows = await conn.fetch(_LOCK_PRODUCTS, [line.product_id for line in cmd.lines])
    products = {r["product_id"]: ProductRow(**dict(r)) for r in rows}
    placed, reserved = decide_place_order(order_id, cmd, products, datetime.now(UTC))
    product_events, stock_arguments = _stock_writes(products, reserved)
    order_event = NewEvent(
        stream_type="order", stream_id=str(order_id), stream_version=1, data=placed
    )
    position = await append_events(
        conn,
        [order_event, *product_events],
        meta,
        writes=_PLACE,
        arguments=[
            *stock_arguments,
            order_id,
            cmd.customer_id,
            placed.total_cents,
            placed.placed_at,
            [x.product_id for x in placed.lines],
            [x.quantity for x in placed.lines],
            [x.unit_price_cents for x in placed.lines],
        ],
    )
    return OrderResult(
        order_id=order_id,
        customer_id=cmd.customer_id,
        status="placed",
        total_cents=placed.total_cents,
        version=1,
        position=position,
    )


async def transition_order(
    conn: asyncpg.Connection,
    order_id: uuid.UUID,
    action: Action,
    expected_version: int | None,
    meta: EventMetadata,
) -> OrderResult:
    """Emits OrderPaid, OrderShipped or OrderCancelled (then StockReleased per line).
    Raises OrderNotFound, VersionMismatch, InvalidTransition."""
    row = await conn.fetchrow(_LOCK_ORDER, order_id)
    if row is None:
        raise OrderNotFound(order_id)
    order = OrderRow(**dict(row))
    check_version(order, expected_version)
    event = decide_transition(order, action)
    status = status_after(action)
    version = order.version + 1
    events = [
        NewEvent(stream_type="order", stream_id=str(order_id), stream_version=version, data=event)
    ]
    stock_arguments: list[Any] = [[], [], []]
    if action == "cancel":
        released, stock_arguments = await _release_stock(conn, order_id)
        events += released
    position = await append_events(
        conn,
        events,
        meta,
        writes=f"WITH {_SAVE_STOCK}, {_MOVE}",
        arguments=[*stock_arguments, order_id, status, version],
    )
    return OrderResult(
        order_id=order_id,
        customer_id=order.customer_id,
        status=status,
        total_cents=order.total_cents,
        version=version,
        position=position,
    )


async def _release_stock(
    conn: asyncpg.Connection, order_id: uuid.UUID
) -> tuple[list[NewEvent], list[Any]]:
    rows = await conn.fetch(_LOCK_ORDER_PRODUCTS, order_id)
    products = {
        r["product_id"]: ProductRow(
            product_id=r["product_id"],
            sku=r["sku"],
            name=r["name"],
            price_cents=r["price_cents"],
            stock=r["stock"],
            version=r["version"],
        )
        for r in rows
    }
    released = [
        StockReleased(
            product_id=r["product_id"],
            order_id=order_id,
            quantity=r["quantity"],
            unit_price_cents=r["unit_price_cents"],
            stock=r["stock"] + r["quantity"],
        )
        for r in rows
    ]
    return _stock_writes(products, released)
