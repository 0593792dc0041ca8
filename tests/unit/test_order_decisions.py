"""The pure business rules of orders and products: no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from app.commands.errors import (
    DuplicateLines,
    InsufficientStock,
    InvalidTransition,
    StockLimitExceeded,
    UnknownProducts,
    VersionMismatch,
)
from app.commands.order_rules import (
    LineRequest,
    OrderRow,
    PlaceOrder,
    ProductRow,
    check_version,
    decide_place_order,
    decide_transition,
)
from app.commands.products import MAX_STOCK, decide_restock
from app.contracts.events import OrderCancelled, OrderPaid, OrderShipped

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def product(stock: int = 10, price: int = 100) -> ProductRow:
    pid = uuid.uuid4()
    return ProductRow(
        product_id=pid,
        sku=f"S-{pid.hex[:6]}",
        name="Thing",
        price_cents=price,
        stock=stock,
        version=3,
    )


def order_of(*lines: tuple[ProductRow, int]) -> PlaceOrder:
    return PlaceOrder(
        customer_id="c1",
        lines=tuple(LineRequest(product_id=p.product_id, quantity=q) for p, q in lines),
    )


def test_order_is_priced_from_products_and_reserves_in_id_order() -> None:
    a, b = product(stock=5, price=300), product(stock=7, price=125)
    placed, reserved = decide_place_order(
        uuid.uuid4(), order_of((a, 2), (b, 3)), {a.product_id: a, b.product_id: b}, NOW
    )
    assert [line.line_total_cents for line in placed.lines] == [600, 375]
    assert placed.total_cents == 975
    assert [line.sku for line in placed.lines] == [a.sku, b.sku]
    assert [r.product_id for r in reserved] == sorted([a.product_id, b.product_id])
    assert {r.product_id: r.stock for r in reserved} == {a.product_id: 3, b.product_id: 4}


def test_exact_stock_is_enough() -> None:
    a = product(stock=2)
    _, reserved = decide_place_order(uuid.uuid4(), order_of((a, 2)), {a.product_id: a}, NOW)
    assert reserved[0].stock == 0


def test_every_short_product_is_named() -> None:
    a, b, c = product(stock=1), product(stock=9), product(stock=0)
    with pytest.raises(InsufficientStock) as caught:
        decide_place_order(
            uuid.uuid4(),
            order_of((a, 2), (b, 3), (c, 1)),
            {p.product_id: p for p in (a, b, c)},
            NOW,
        )
    shortfalls = caught.value.extra["shortfalls"]
    assert [(s["product_id"], s["requested"], s["available"]) for s in shortfalls] == [
        (str(a.product_id), 2, 1),
        (str(c.product_id), 1, 0),
    ]


def test_unknown_products_are_named() -> None:
    a = product()
    ghost = product()
    with pytest.raises(UnknownProducts) as caught:
        decide_place_order(uuid.uuid4(), order_of((a, 1), (ghost, 1)), {a.product_id: a}, NOW)
    assert caught.value.extra["product_ids"] == [str(ghost.product_id)]


def test_repeated_product_is_refused() -> None:
    a = product()
    with pytest.raises(DuplicateLines):
        decide_place_order(uuid.uuid4(), order_of((a, 1), (a, 1)), {a.product_id: a}, NOW)


def _order(status: str, version: int = 1) -> OrderRow:
    return OrderRow(
        order_id=uuid.uuid4(),
        customer_id="c1",
        status=status,  # type: ignore[arg-type]
        total_cents=500,
        version=version,
    )


@pytest.mark.parametrize(
    ("status", "action", "event"),
    [
        ("placed", "pay", OrderPaid),
        ("paid", "ship", OrderShipped),
        ("placed", "cancel", OrderCancelled),
        ("paid", "cancel", OrderCancelled),
    ],
)
def test_allowed_transitions(status: str, action: str, event: type) -> None:
    result = decide_transition(_order(status), action)  # type: ignore[arg-type]
    assert isinstance(result, event)


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("placed", "ship"),
        ("paid", "pay"),
        ("shipped", "pay"),
        ("shipped", "ship"),
        ("shipped", "cancel"),
        ("cancelled", "pay"),
        ("cancelled", "ship"),
        ("cancelled", "cancel"),
    ],
)
def test_refused_transitions(status: str, action: str) -> None:
    with pytest.raises(InvalidTransition):
        decide_transition(_order(status), action)  # type: ignore[arg-type]


def test_cancel_remembers_whether_it_was_paid() -> None:
    event = decide_transition(_order("paid"), "cancel")
    assert isinstance(event, OrderCancelled)
    assert event.previous_status == "paid"


def test_if_match_version() -> None:
    order = _order("placed", version=4)
    check_version(order, None)
    check_version(order, 4)
    with pytest.raises(VersionMismatch):
        check_version(order, 3)


def test_restock_adds_and_is_bounded() -> None:
    pid = uuid.uuid4()
    assert decide_restock(pid, 5, 7).stock == 12
    with pytest.raises(StockLimitExceeded):
        decide_restock(pid, MAX_STOCK, 1)
