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
from app.commands.outbox import EventMetadata, Statement, append_events
from app.contracts.events import NewEvent, OrderPlaced, StockReleased, StockReserved

# ---- handlers ----------------------------------------------------------------------------
# Each handler takes its locks with one statement, decides in Python, then writes everything
# (rows and events) with one more statement: few round trips, short lock hold times.

_LOCK_PRODUCTS = """
SELECT product_id, sku, name, price_cents, stock, version FROM products
WHERE product_id = ANY($1::uuid[]) ORDER BY product_id FOR UPDATE
"""

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


def _save_stock(
    sql: Statement,
    products: Mapping[uuid.UUID, ProductRow],
    changes: Sequence[StockReserved | StockReleased],
) -> list[NewEvent]:
    """Add the product rows' new stock and version to `sql`; returns the product events."""
    events = [
        NewEvent(
            stream_type="product",
            stream_id=str(c.product_id),
            stream_version=products[c.product_id].version + 1,
            data=c,
        )
        for c in changes
    ]
    ids = sql.bind([c.product_id for c in changes])
    stocks = sql.bind([c.stock for c in changes])
    versions = sql.bind([e.stream_version for e in events])
    sql.part(
        "stock",
        "UPDATE products AS p SET stock = u.stock, version = u.version, updated_at = now()"
        f" FROM unnest({ids}::uuid[], {stocks}::bigint[], {versions}::int[])"
        " AS u(product_id, stock, version) WHERE p.product_id = u.product_id",
    )
    return events


def _insert_order(sql: Statement, placed: OrderPlaced) -> None:
    """Add the order row (version 1) and its lines to `sql`."""
    order_id, at = sql.bind(placed.order_id), sql.bind(placed.placed_at)
    sql.part(
        "placed",
        "INSERT INTO orders (order_id, customer_id, status, total_cents, version, placed_at,"
        f" updated_at) VALUES ({order_id}, {sql.bind(placed.customer_id)}, 'placed',"
        f" {sql.bind(placed.total_cents)}, 1, {at}, {at})",
    )
    products = sql.bind([x.product_id for x in placed.lines])
    quantities = sql.bind([x.quantity for x in placed.lines])
    prices = sql.bind([x.unit_price_cents for x in placed.lines])
    sql.part(
        "lines",
        "INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents)"
        f" SELECT {order_id}, l.n, l.product_id, l.quantity, l.price"
        f" FROM unnest({products}::uuid[], {quantities}::int[], {prices}::bigint[])"
        " WITH ORDINALITY AS l(product_id, quantity, price, n)",
    )


def _move_order(sql: Statement, order_id: uuid.UUID, status: str, version: int) -> None:
    """Add the order row's new status and version to `sql`."""
    sql.part(
        "moved",
        f"UPDATE orders SET status = {sql.bind(status)}, version = {sql.bind(version)},"
        f" updated_at = now() WHERE order_id = {sql.bind(order_id)}",
    )


async def place_order(
    conn: asyncpg.Connection, cmd: PlaceOrder, meta: EventMetadata
) -> OrderResult:
    """Emits OrderPlaced (order version 1) then StockReserved per line (in product-id order).
    Raises DuplicateLines, UnknownProducts, InsufficientStock."""
    order_id = uuid.uuid4()
    rows = await conn.fetch(_LOCK_PRODUCTS, [line.product_id for line in cmd.lines])
    products = {r["product_id"]: ProductRow(**dict(r)) for r in rows}
    placed, reserved = decide_place_order(order_id, cmd, products, datetime.now(UTC))
    sql = Statement()
    product_events = _save_stock(sql, products, reserved)
    _insert_order(sql, placed)
    order_event = NewEvent(
        stream_type="order", stream_id=str(order_id), stream_version=1, data=placed
    )
    position = await append_events(conn, [order_event, *product_events], meta, sql)
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
    *,
    customer: str | None = None,
) -> OrderResult:
    """Emits OrderPaid, OrderShipped or OrderCancelled (then StockReleased per line).
    Raises OrderNotFound (also when `customer`, the one customer the caller may act for, is
    not the order's: never reveal that another customer's order exists), VersionMismatch,
    InvalidTransition."""
    row = await conn.fetchrow(_LOCK_ORDER, order_id)
    if row is None or customer not in (None, row["customer_id"]):
        raise OrderNotFound(order_id)
    order = OrderRow(**dict(row))
    check_version(order, expected_version)
    event = decide_transition(order, action)
    status = status_after(action)
    version = order.version + 1
    events = [
        NewEvent(stream_type="order", stream_id=str(order_id), stream_version=version, data=event)
    ]
    sql = Statement()
    if action == "cancel":
        events += await _release_stock(conn, sql, order_id)
    _move_order(sql, order_id, status, version)
    position = await append_events(conn, events, meta, sql)
    return OrderResult(
        order_id=order_id,
        customer_id=order.customer_id,
        status=status,
        total_cents=order.total_cents,
        version=version,
        position=position,
    )


async def _release_stock(
    conn: asyncpg.Connection, sql: Statement, order_id: uuid.UUID
) -> list[NewEvent]:
    """Lock the order's products and add their released stock to `sql`; the product events."""
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
    return _save_stock(sql, products, released)
