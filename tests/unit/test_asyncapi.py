"""The AsyncAPI document (app/operations/asyncapi.py): checked in unchanged, valid AsyncAPI 3.0,
one channel, operation and message per event type, the topology and the message properties
the relay really uses, and payload schemas that accept what the relay publishes and refuse
what breaks the contract."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft7Validator

from app.contracts.events import EVENT_TYPES
from app.contracts.topology import declare_topology
from app.main import create_app
from app.operations.asyncapi import document, text
from app.plumbing.settings import Settings
from app.relay.publisher import message_body, message_properties
from tests.support.eventcontract import (
    ASYNCAPI_SCHEMA,
    CHECKED_IN,
    REGENERATE,
    checked_in_document,
    message_validators,
    sample_event,
)


def test_the_checked_in_document_is_the_generated_one() -> None:
    if CHECKED_IN.read_text() != text():
        pytest.fail(f"docs/asyncapi.yaml differs from the code; regenerate it: {REGENERATE}")


def test_the_checked_in_document_reads_the_same_as_yaml_and_as_json() -> None:
    assert yaml.safe_load(CHECKED_IN.read_text()) == checked_in_document() == document()


def _asyncapi_errors(spec: dict[str, Any]) -> list[str]:
    meta = json.loads(ASYNCAPI_SCHEMA.read_text())
    Draft7Validator.check_schema(meta)
    validator = Draft7Validator(meta, format_checker=Draft7Validator.FORMAT_CHECKER)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(spec)]


def test_the_document_is_valid_asyncapi_3() -> None:
    assert _asyncapi_errors(document()) == []


def test_the_validation_sees_an_invalid_document() -> None:
    spec = document()
    spec["operations"]["sendOrderPaid"]["action"] = "publish"  # AsyncAPI 2 wording
    spec["channels"]["order.paid"]["bindings"]["amqp"]["exchange"]["type"] = "fan-out"
    assert len(_asyncapi_errors(spec)) >= 2


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_and_operations_send_their_channels_messages() -> None:
    spec = document()
    for ref in _refs(spec):
        _resolve(spec, ref)
    for name, operation in spec["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), name


class _RecordingChannel:
    """Stands in for an AMQP channel: records what `declare_topology` declares."""

    def __init__(self) -> None:
        self.exchanges: dict[str, dict[str, Any]] = {}

    async def exchange_declare(self, exchange: str, **options: Any) -> None:
        self.exchanges[exchange] = options

    async def queue_declare(self, *args: Any, **options: Any) -> None:
        pass

    async def queue_bind(self, *args: Any, **options: Any) -> None:
        pass


async def test_one_channel_per_routing_key_on_the_declared_exchange() -> None:
    settings = Settings()
    channel = _RecordingChannel()
    await declare_topology(channel, settings)  # type: ignore[arg-type]
    declared = channel.exchanges[settings.exchange]
    spec = document()
    assert {c["address"] for c in spec["channels"].values()} == {
        key for _, key, _ in EVENT_TYPES.values()
    }
    for type_name, (_, key, _) in EVENT_TYPES.items():
        channel_spec = spec["channels"][key]
        assert list(channel_spec["messages"]) == [type_name]
        amqp = channel_spec["bindings"]["amqp"]
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"]["name"] == settings.exchange
        assert (amqp["exchange"]["type"], amqp["exchange"]["durable"]) == (
            declared["exchange_type"],
            declared["durable"],
        )
        assert spec["operations"][f"send{type_name}"]["action"] == "send"
    assert set(spec["components"]["messages"]) == set(EVENT_TYPES)


def test_the_guarantees_are_stated() -> None:
    description = document()["info"]["description"]
    for phrase in ("strictly increasing", "Deduplicate by `event_id`", "`prev_position`"):
        assert phrase in description


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_what_the_publisher_sends_matches_its_message(type_name: str) -> None:
    spec = document()
    event = sample_event(type_name, position=7)
    body = json.loads(message_body(event, prev_position=5))
    assert list(message_validators(spec)[type_name].iter_errors(body)) == []
    message = spec["components"]["messages"][type_name]
    operation = spec["operations"][f"send{type_name}"]["bindings"]["amqp"]
    properties = message_properties(event)
    assert properties.message_type == message["bindings"]["amqp"]["messageType"] == type_name
    assert properties.content_type == message["contentType"]
    assert properties.delivery_mode == operation["deliveryMode"] == 2
    assert properties.message_id == body["event_id"]
    assert message["x-schema-version"] == body["schema_version"]


def _broken(body: dict[str, Any], type_name: str) -> list[dict[str, Any]]:
    first_field = next(iter(body["data"]))
    return [
        {k: v for k, v in body.items() if k != "event_id"},
        {**body, "position": "7"},
        {**body, "event_id": "not-a-uuid"},
        {**body, "occurred_at": "yesterday"},
        {**body, "type": "OrderPaid" if type_name != "OrderPaid" else "OrderShipped"},
        {**body, "schema_version": body["schema_version"] + 1},
        {**body, "data": {k: v for k, v in body["data"].items() if k != first_field}},
        {**body, "data": {**body["data"], first_field: [1]}},
    ]


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_a_body_that_breaks_the_contract_is_refused(type_name: str) -> None:
    validator = message_validators(document())[type_name]
    body = json.loads(message_body(sample_event(type_name, position=2), prev_position=1))
    for broken in _broken(body, type_name):
        assert not validator.is_valid(broken), broken


async def test_the_app_serves_the_document_of_its_exchange() -> None:
    for settings in (Settings(), Settings(exchange="tenant.events")):
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            response = await http.get("/asyncapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == document(settings.exchange)
    assert document("tenant.events")["channels"]["order.paid"]["bindings"]["amqp"]["exchange"][
        "name"
    ] == ("tenant.events")
