"""Projection functions, delivery planning and the applied position, without I/O."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from app.contracts.events import (
    EVENT_TYPES,
    Envelope,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    StockReleased,
    StockReserved,
)
from app.projector.applied import AppliedPosition
from app.projector.deliveries import Decoded, Gap, Undecodable, decode_body, plan
from app.projector.documents import (
    PROJECTIONS,
    apply_order_cancelled,
    apply_order_placed,
    apply_stock_released,
    apply_stock_reserved,
)

AT = datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)


def envelope(type_name: str, position: int, version: int = 1, **data: Any) -> Envelope:
    return Envelope(
        event_id=uuid.uuid4(),
        type=type_name,
        schema_version=1,
        stream_type="order",
        stream_id=str(uuid.uuid4()),
        stream_version=version,
        position=position,
        prev_position=position - 1,
        occurred_at=AT,
        correlation_id=None,
        data=msgspec.Raw(msgspec.json.encode(data)),
    )


def test_every_event_type_has_a_projection() -> None:
    assert PROJECTIONS.keys() == EVENT_TYPES.keys()


def test_order_placed_upserts_the_order_and_the_customer_behind_fences() -> None:
    order_id, product_id = uuid.uuid4(), uuid.uuid4()
    line = OrderLine(
        product_id=product_id,
        sku="S",
        name="N",
        quantity=2,
        unit_price_cents=5,
        line_total_cents=10,
    )
    data = OrderPlaced(
        order_id=order_id,
        customer_id="c1",
        lines=(line,),
        total_cents=10,
        placed_at=AT,
        item_count=2,
    )
    order, customer = apply_order_placed(envelope("OrderPlaced", 7), data)
    assert order.collection == "orders"
    assert order.upsert
    assert order.filter == {"_id": str(order_id), "version": {"$lt": 1}}
    document = order.update["$set"]
    assert document["lines"][0]["product_id"] == str(product_id)
    assert document["status_history"] == [{"status": "placed", "at": AT, "position": 7}]
    assert (document["version"], document["position"], document["total_cents"]) == (1, 7, 10)
    assert customer.collection == "customers"
    assert customer.upsert
    fence = f"applied.{order_id}"
    assert customer.filter == {"_id": "c1", fence: {"$not": {"$gte": 1}}}
    assert customer.update["$inc"] == {"order_count": 1}
    assert customer.update["$set"][fence] == 1


@pytest.mark.parametrize(("previous", "spent"), [("paid", [-10]), ("placed", [])])
def test_cancelling_refunds_the_customer_only_when_it_was_paid(
    previous: Any, spent: list[int]
) -> None:
    data = OrderCancelled(
        order_id=uuid.uuid4(), customer_id="c1", total_cents=10, previous_status=previous
    )
    writes = apply_order_cancelled(envelope("OrderCancelled", 9, version=3), data)
    assert writes[0].filter["version"] == {"$lt": 3}
    assert writes[0].update["$push"]["status_history"]["status"] == "cancelled"
    assert [w.update["$inc"]["total_spent_cents"] for w in writes[1:]] == spent


def test_reserving_and_releasing_stock_move_sales_both_ways() -> None:
    ids = {"product_id": uuid.uuid4(), "order_id": uuid.uuid4()}
    reserved = StockReserved(**ids, quantity=3, unit_price_cents=4, stock=7)
    released = StockReleased(**ids, quantity=3, unit_price_cents=4, stock=10)
    (up,) = apply_stock_reserved(envelope("StockReserved", 2, version=2), reserved)
    (down,) = apply_stock_released(envelope("StockReleased", 5, version=3), released)
    assert up.update["$inc"] == {"units_sold": 3, "revenue_cents": 12}
    assert down.update["$inc"] == {"units_sold": -3, "revenue_cents": -12}
    assert (up.update["$set"]["stock"], down.update["$set"]["stock"]) == (7, 10)
    assert not up.upsert
    assert not down.upsert


def delivered(position: int, prev: int) -> Decoded:
    return Decoded(msgspec.structs.replace(envelope("X", position), prev_position=prev), None)


def test_plan_drops_duplicates_undoes_reordering_and_marks_gaps() -> None:
    steps = plan(
        3,
        [
            delivered(6, 5),
            delivered(2, 1),
            delivered(5, 4),
            delivered(9, 8),
            delivered(5, 4),
            delivered(8, 7),
        ],
    )
    shape = [s if isinstance(s, Gap) else s.position for s in steps]
    assert shape == [Gap(after=3, through=4), 5, 6, Gap(after=6, through=7), 8, 9]


def test_plan_does_not_invent_gaps_where_positions_were_rolled_back() -> None:
    assert [s for s in plan(3, [delivered(7, 3)]) if isinstance(s, Gap)] == []


def test_decoding_parks_garbage_and_bad_data_but_tolerates_unknown_types() -> None:
    with pytest.raises(Undecodable, match="not an event envelope"):
        decode_body(b"{")
    bad = envelope("OrderPaid", 1, order_id="nope")
    with pytest.raises(Undecodable, match="invalid OrderPaid data"):
        decode_body(msgspec.json.encode(bad))
    unknown = decode_body(msgspec.json.encode(envelope("OrderGiftWrapped", 1, paper="red")))
    assert unknown.data is None


async def test_applied_position_wakes_waiters_and_times_out_cleanly() -> None:
    applied = AppliedPosition()
    early = asyncio.create_task(applied.wait_for(5, timeout=10))
    late = asyncio.create_task(applied.wait_for(9, timeout=0.05))
    cancelled = asyncio.create_task(applied.wait_for(9, timeout=10))
    await asyncio.sleep(0)
    applied.advance(5)
    assert await early
    assert not await late
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert applied.waiting == 0
    applied.advance(4)
    assert applied.current == 5
    assert await applied.wait_for(5, timeout=0)
