"""Projection functions: one event in, the fenced read-model writes it causes out.

Read model (MongoDB). `_id` is the id as a string, datetimes are BSON dates (UTC, millisecond
precision), amounts are integer cents. This is the contract the query side reads:

- `orders`: {_id, order_id, customer_id, status, lines: [{product_id, sku, name, quantity,
  unit_price_cents, line_total_cents}], total_cents, item_count, status_history: [{status, at,
  position}],
  placed_at, updated_at, version, position}. `version` is the order stream's version last
  applied, `position` the log position of that event. Indexes: (customer_id 1, placed_at -1,
  _id -1) and (customer_id 1, status 1, placed_at -1, _id -1) for "a customer's orders, newest
  first" with keyset pagination on (placed_at, _id).
- `products`: {_id, product_id, sku, name, price_cents, stock, units_sold, revenue_cents,
  version, position, created_at, updated_at}. `stock` is the stock after the last applied
  event; `units_sold`/`revenue_cents` count reserved minus released stock (orders not
  cancelled). Indexes: sku unique, (units_sold -1, _id 1) for the top-products report.
- `customers`: {_id, customer_id, order_count, total_spent_cents, last_order_at, position,
  applied: {<order_id>: version}}.
  `total_spent_cents` sums the totals of the customer's orders that are paid or shipped;
  `position` is the highest log position applied to the document; `applied` the version of
  each of the customer's order streams last applied to it.
- `meta`: {_id: "projection", position} — every event up to `position` is applied.

Every write is fenced so that re-applying any prefix of the log is a no-op: orders and products
only match a document whose `version` is older than the event's stream version. A customer is
fed by several streams (its orders), so its fence is per stream: a write for order o at version
v matches only while `applied.<o>` is below v (or absent). So an order stream held back by a
poison event (app/projector/holds.py) and released later is neither refused by the fences of
the customer's newer orders nor counted twice. The store gets each write as an update pipeline
on `_id` alone with the fence inside it (app/projector/pipelines.py): an upsert of a document
that is already there finds its fence closed and changes nothing.
Timestamps come from the events (never the clock), so a rebuild gives identical documents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from pymongo import UpdateOne

from app.contracts.events import (
    Envelope,
    EventData,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    OrderShipped,
    ProductCreated,
    ProductRestocked,
    StockReleased,
    StockReserved,
)
from app.contracts.readmodel import CollectionName


class Write(NamedTuple):
    """One fenced update of one document; `upsert` only for events that create it."""

    collection: CollectionName
    filter: dict[str, Any]
    update: dict[str, Any]
    upsert: bool = False

    def operation(self) -> UpdateOne:
        return UpdateOne(self.filter, self.update, upsert=self.upsert)


Projection = Callable[[Envelope, Any], list[Write]]


def _by_version(doc_id: str, version: int) -> dict[str, Any]:
    return {"_id": doc_id, "version": {"$lt": version}}


def _by_stream(doc_id: str, order_id: str, version: int) -> dict[str, Any]:
    return {"_id": doc_id, f"applied.{order_id}": {"$not": {"$gte": version}}}


def _stamp(envelope: Envelope) -> dict[str, Any]:
    """Fields every order/product write sets: what was applied last, and when it happened."""
    return {
        "version": envelope.stream_version,
        "position": envelope.position,
        "updated_at": envelope.occurred_at,
    }


# ---- orders ------------------------------------------------------------------------------


def apply_order_placed(envelope: Envelope, data: OrderPlaced) -> list[Write]:
    order_id, position = str(data.order_id), envelope.position
    order = {
        "order_id": order_id,
        "customer_id": data.customer_id,
        "status": "placed",
        "lines": [
            {
                "product_id": str(line.product_id),
                "sku": line.sku,
                "name": line.name,
                "quantity": line.quantity,
                "unit_price_cents": line.unit_price_cents,
                "line_total_cents": line.line_total_cents,
            }
            for line in data.lines
        ],
        "total_cents": data.total_cents,
        "item_count": data.item_count,
        "status_history": [{"status": "placed", "at": data.placed_at, "position": position}],
        "placed_at": data.placed_at,
        **_stamp(envelope),
        "updated_at": data.placed_at,
    }
    customer = Write(
        "customers",
        _by_stream(data.customer_id, order_id, envelope.stream_version),
        {
            "$inc": {"order_count": 1},
            "$max": {"last_order_at": data.placed_at, "position": position},
            "$set": {
                "customer_id": data.customer_id,
                f"applied.{order_id}": envelope.stream_version,
            },
            "$setOnInsert": {"total_spent_cents": 0},
        },
        upsert=True,
    )
    return [
        Write("orders", _by_version(order_id, envelope.stream_version), {"$set": order}, True),
        customer,
    ]


def _order_moved(envelope: Envelope, order_id: str, status: str) -> Write:
    entry = {"status": status, "at": envelope.occurred_at, "position": envelope.position}
    update = {"$set": {"status": status, **_stamp(envelope)}, "$push": {"status_history": entry}}
    return Write("orders", _by_version(order_id, envelope.stream_version), update)


def _customer_spent(envelope: Envelope, customer_id: str, order_id: str, delta_cents: int) -> Write:
    update = {
        "$inc": {"total_spent_cents": delta_cents},
        "$set": {f"applied.{order_id}": envelope.stream_version},
        "$max": {"position": envelope.position},
    }
    return Write("customers", _by_stream(customer_id, order_id, envelope.stream_version), update)


def apply_order_paid(envelope: Envelope, data: OrderPaid) -> list[Write]:
    return [
        _order_moved(envelope, str(data.order_id), "paid"),
        _customer_spent(envelope, data.customer_id, str(data.order_id), data.total_cents),
    ]


def apply_order_shipped(envelope: Envelope, data: OrderShipped) -> list[Write]:
    return [_order_moved(envelope, str(data.order_id), "shipped")]


def apply_order_cancelled(envelope: Envelope, data: OrderCancelled) -> list[Write]:
    writes = [_order_moved(envelope, str(data.order_id), "cancelled")]
    if data.previous_status == "paid":
        writes.append(
            _customer_spent(envelope, data.customer_id, str(data.order_id), -data.total_cents)
        )
    return writes


# ---- products ----------------------------------------------------------------------------


def apply_product_created(envelope: Envelope, data: ProductCreated) -> list[Write]:
    product_id = str(data.product_id)
    product = {
        "product_id": product_id,
        "sku": data.sku,
        "name": data.name,
        "price_cents": data.price_cents,
        "stock": data.stock,
        "units_sold": 0,
        "revenue_cents": 0,
        "created_at": envelope.occurred_at,
        **_stamp(envelope),
    }
    fence = _by_version(product_id, envelope.stream_version)
    return [Write("products", fence, {"$set": product}, upsert=True)]


def _product_changed(
    envelope: Envelope, product_id: str, stock: int, sold: int = 0, revenue: int = 0
) -> list[Write]:
    update: dict[str, Any] = {"$set": {"stock": stock, **_stamp(envelope)}}
    if sold or revenue:
        update["$inc"] = {"units_sold": sold, "revenue_cents": revenue}
    return [Write("products", _by_version(product_id, envelope.stream_version), update)]


def apply_product_restocked(envelope: Envelope, data: ProductRestocked) -> list[Write]:
    return _product_changed(envelope, str(data.product_id), data.stock)


def apply_stock_reserved(envelope: Envelope, data: StockReserved) -> list[Write]:
    revenue = data.quantity * data.unit_price_cents
    return _product_changed(envelope, str(data.product_id), data.stock, data.quantity, revenue)


def apply_stock_released(envelope: Envelope, data: StockReleased) -> list[Write]:
    revenue = data.quantity * data.unit_price_cents
    return _product_changed(envelope, str(data.product_id), data.stock, -data.quantity, -revenue)


def project(envelope: Envelope, data: EventData) -> list[Write]:
    """The writes for one decoded event; [] for a type this version does not project."""
    projection = PROJECTIONS.get(envelope.type)
    return projection(envelope, data) if projection else []


PROJECTIONS: Final[dict[str, Projection]] = {
    "ProductCreated": apply_product_created,
    "ProductRestocked": apply_product_restocked,
    "StockReserved": apply_stock_reserved,
    "StockReleased": apply_stock_released,
    "OrderPlaced": apply_order_placed,
    "OrderPaid": apply_order_paid,
    "OrderShipped": apply_order_shipped,
    "OrderCancelled": apply_order_cancelled,
}
