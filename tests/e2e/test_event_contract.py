"""Every message the relay publishes in a real run matches the AsyncAPI document a consumer
reads (docs/asyncapi.yaml): its envelope and data schemas, its routing key and its AMQP
properties."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from app.plumbing.settings import Settings
from tests.support.eventcontract import (
    Tap,
    checked_in_document,
    log_every_event_type,
    log_positions,
    message_validators,
)
from tests.support.servers import Server, http_client
from tests.support.waiting import eventually


@pytest.fixture
async def tap(stack: Settings) -> AsyncIterator[Tap]:
    tapped = Tap(stack)
    await tapped.start()
    yield tapped
    await tapped.stop()


async def test_every_published_message_matches_the_checked_in_contract(
    stack: Settings, tap: Tap
) -> None:
    server = Server(stack)
    await server.start()
    try:
        async with http_client(server.url, timeout=30) as http:
            last = await log_every_event_type(http)
        await eventually(lambda: last in tap.positions(), within_s=20, what="the last event")
    finally:
        await server.stop()
    spec = checked_in_document()
    validators = message_validators(spec)
    channels = {c["address"]: c for c in spec["channels"].values()}
    for message in tap.messages:
        body = json.loads(message.body)
        props = message.properties
        errors = [e.message for e in validators[props.message_type].iter_errors(body)]
        assert errors == [], body
        assert list(channels[message.routing_key]["messages"]) == [body["type"]]
        assert props.message_id == body["event_id"]
        assert (props.content_type, props.delivery_mode) == ("application/json", 2)
        assert props.timestamp is not None
    assert {m.properties.message_type for m in tap.messages} == set(validators)
    assert sorted(set(tap.positions())) == await log_positions(stack)
