"""Events stored at an old schema version are read in the current shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from app.contracts.eventlog import LoggedEvent
from app.contracts.events import OrderPlaced, decode_data
from app.contracts.upcasting import UPCASTERS, current_version, upcast
from app.projector.deliveries import decode_body

V1_ORDER_PLACED = {
    "order_id": str(uuid.uuid4()),
    "customer_id": "c1",
    "lines": [
        {"product_id": str(uuid.uuid4()), "sku": "A", "name": "a", "quantity": 2,
         "unit_price_cents": 5, "line_total_cents": 10},
        {"product_id": str(uuid.uuid4()), "sku": "B", "name": "b", "quantity": 3,
         "unit_price_cents": 1, "line_total_cents": 3},
    ],
    "total_cents": 13,
    "placed_at": "2026-01-02T03:04:05.123000Z",
}  # fmt: skip


def test_writers_write_the_newest_version() -> None:
    assert current_version("OrderPlaced") == 2
    assert current_version("OrderPaid") == 1
    assert all(version >= 1 for _, version in UPCASTERS)


def test_a_v1_order_placed_reads_as_v2_with_its_item_count() -> None:
    version, data = upcast("OrderPlaced", 1, msgspec.json.encode(V1_ORDER_PLACED))
    assert version == 2
    placed = decode_data("OrderPlaced", data)
    assert isinstance(placed, OrderPlaced)
    assert placed.item_count == 5


def test_a_current_event_passes_through_untouched() -> None:
    raw = msgspec.json.encode({**V1_ORDER_PLACED, "item_count": 5})
    assert upcast("OrderPlaced", 2, raw) == (2, raw)


def _logged(version: int, data: dict[str, object]) -> LoggedEvent:
    return LoggedEvent(
        position=7,
        event_id=uuid.uuid4(),
        type="OrderPlaced",
        schema_version=version,
        stream_type="order",
        stream_id=str(V1_ORDER_PLACED["order_id"]),
        stream_version=1,
        occurred_at=datetime.now(UTC),
        correlation_id=None,
        data=msgspec.json.encode(data).decode(),
    )


def test_the_log_reader_and_a_delivery_published_before_the_upgrade_both_upcast() -> None:
    envelope = _logged(1, V1_ORDER_PLACED).envelope(prev_position=6)
    assert envelope.schema_version == 2
    assert msgspec.json.decode(envelope.data)["item_count"] == 5
    old_message = msgspec.json.encode(
        msgspec.structs.replace(envelope, schema_version=1, data=msgspec.Raw(
            msgspec.json.encode(V1_ORDER_PLACED)))
    )  # fmt: skip
    delivered = decode_body(old_message)
    assert delivered.envelope.schema_version == 2
    assert isinstance(delivered.data, OrderPlaced)
    assert delivered.data.item_count == 5
