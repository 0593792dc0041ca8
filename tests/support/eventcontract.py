"""The event contract as a consumer checks it: the AsyncAPI document, a JSON Schema validator
per message type, sample events of every type, a tap on the exchange, commands that log every
event type, and the log."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiormq.abc
import asyncpg
import httpx
import msgspec
import msgspec.inspect as mi
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT7

from app.contracts.eventlog import LoggedEvent
from app.contracts.events import EVENT_TYPES, decode_data
from app.contracts.topology import declare_topology
from app.contracts.upcasting import current_version
from app.plumbing.resources import connect_broker
from app.plumbing.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "docs" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json"
REGENERATE = "python -m app.operations.asyncapi > docs/asyncapi.yaml"
_DOCUMENT_URI = "urn:shop-cqrs:asyncapi"


def message_validators(document: dict[str, Any]) -> dict[str, Draft7Validator]:
    """Event type -> a validator of a decoded message body against that message's payload
    schema in `document` (its references resolved within the document, formats checked)."""
    registry: Registry[Any] = Registry().with_resource(
        _DOCUMENT_URI, DRAFT7.create_resource(document)
    )
    return {
        name: Draft7Validator(
            {"$ref": f"{_DOCUMENT_URI}#/components/messages/{name}/payload"},
            registry=registry,
            format_checker=FormatChecker(),  # uuid and date-time too
        )
        for name in document["components"]["messages"]
    }


def checked_in_document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(CHECKED_IN.read_text())
    return loaded


def _sample(t: mi.Type) -> Any:
    """A JSON value of type `t`, for every field type the event Structs use."""
    match t:
        case mi.UUIDType():
            return str(uuid.uuid4())
        case mi.StrType():
            return "MUG-1"
        case mi.IntType():
            return 3
        case mi.DateTimeType():
            return "2026-11-29T12:00:00.123456Z"
        case mi.LiteralType(values=values):
            return values[0]
        case mi.VarTupleType(item_type=item) | mi.ListType(item_type=item):
            return [_sample(item), _sample(item)]
        case mi.StructType(fields=fields):
            return {f.encode_name: _sample(f.type) for f in fields}
    raise AssertionError(f"no sample for {t!r}: extend _sample")


def sample_event(type_name: str, position: int) -> LoggedEvent:
    """A logged event of `type_name` at `position`, its data filled from its Struct's fields
    (so a field added to a Struct is sampled too) and accepted by `decode_data`."""
    stream_type, _, struct = EVENT_TYPES[type_name]
    data = msgspec.json.encode(_sample(mi.type_info(struct)))
    decode_data(type_name, data)
    return LoggedEvent(
        position=position,
        event_id=uuid.uuid4(),
        type=type_name,
        schema_version=current_version(type_name),
        stream_type=stream_type,
        stream_id=str(uuid.uuid4()),
        stream_version=1,
        occurred_at=datetime.now(UTC),
        correlation_id=None if position % 2 else "checkout-42",
        data=data.decode(),
    )


@dataclass(frozen=True)
class Tapped:
    routing_key: str
    properties: Any  # pamqp's Basic.Properties
    body: bytes


class Tap:
    """An exclusive queue bound with `#` to the settings' exchange, recording every message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.messages: list[Tapped] = []
        self._connection: aiormq.abc.AbstractConnection | None = None

    async def start(self) -> None:
        connection = self._connection = await connect_broker(self.settings)
        channel = await connection.channel()
        await declare_topology(channel, self.settings)
        declared = await channel.queue_declare(exclusive=True, auto_delete=True)
        assert declared.queue is not None
        await channel.queue_bind(declared.queue, self.settings.exchange, routing_key="#")
        await channel.basic_consume(declared.queue, self._on_message, no_ack=True)

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        key = message.routing_key or ""
        self.messages.append(Tapped(key, message.header.properties, message.body))

    def positions(self) -> list[int]:
        return [json.loads(m.body)["position"] for m in self.messages]

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def _post(http: httpx.AsyncClient, path: str, body: object = None) -> dict[str, Any]:
    response = await http.post(path, json=body) if body is not None else await http.post(path)
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


async def _order(http: httpx.AsyncClient, products: list[str], customer: str) -> str:
    lines = [{"product_id": p, "quantity": 1 + i} for i, p in enumerate(products)]
    placed = await _post(http, "/orders", {"customer_id": customer, "lines": lines})
    return str(placed["order_id"])


async def log_every_event_type(http: httpx.AsyncClient) -> int:
    """Commands over HTTP that log each event type at least once (two products, a restock,
    orders shipped, cancelled when paid and cancelled when placed); the last position."""
    products = []
    for name in ("Mug", "Tea"):
        sku = f"{name.upper()}-{uuid.uuid4().hex[:8]}"
        body = {"sku": sku, "name": name, "price_cents": 450, "stock": 20}
        products.append(str((await _post(http, "/products", body))["product_id"]))
    await _post(http, f"/products/{products[0]}/restock", {"quantity": 5})
    for actions in (("pay", "ship"), ("pay", "cancel"), ("cancel",)):
        order = await _order(http, products, "alice")
        for action in actions:
            last = await _post(http, f"/orders/{order}/{action}")
    return int(last["position"])


async def log_positions(settings: Settings) -> list[int]:
    """Every committed position of the settings' event log, in order."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT position FROM events ORDER BY position")
    finally:
        await conn.close()
    return [row["position"] for row in rows]
