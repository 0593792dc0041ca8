"""`GET /asyncapi.json` and docs/asyncapi.yaml: the event contract for consumers in any language.

An AsyncAPI 3.0 document built from the event Structs and the routing keys of
app/contracts/events.py and the topology of app/contracts/topology.py, so it cannot drift from
what the relay publishes (app/relay/publisher.py). docs/asyncapi.yaml is this module's output,
JSON (which is YAML too), so that any JSON parser reads it:
`python -m app.operations.asyncapi > docs/asyncapi.yaml`.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.contracts.events import EVENT_TYPES, Envelope
from app.contracts.upcasting import current_version
from app.plumbing.settings import Settings

BINDING_VERSION: Final = "0.3.0"

_GUARANTEES: Final = """\
Every event the write side commits is published once to the durable topic exchange \
`{exchange}` with the routing key `<stream_type>.<event>` and the envelope below as its \
JSON body. Declare a durable queue of your own and bind it with the keys you need (`#` for \
all, `order.*`, `product.stock_*`, ...).

**Order.** The relay publishes in log order: `position` is strictly increasing from one \
message to the next, except for the duplicates below. Positions of rolled-back transactions \
never appear, so holes between positions are normal. `stream_version` runs 1, 2, 3, ... per \
stream (`stream_type`, `stream_id`).

**Duplicates.** Delivery is at least once: after a failure (a broker reconnect, a relay \
restart, a leader change) the relay republishes from its last confirmed checkpoint, so a \
message can arrive again, with the same `event_id` and `position`. Deduplicate by `event_id` \
(or treat a `position` at or below the last one you applied as a duplicate).

**Gaps.** `prev_position` is the position of the message the relay published just before \
this one. On a queue bound with `#`, `prev_position` greater than the last position you saw \
reveals a lost or reordered delivery (read it again from the service, or stop); \
`prev_position` equal to it means nothing is missing, whatever the hole between positions. \
A queue bound to some keys only sees `prev_position` jump over the other keys' events.

**Versions.** `schema_version` is the version of the schema of `data` for its type (each \
message's `x-schema-version`). The relay publishes every event in its newest version (it \
upcasts older logged events), so only a message published before an upgrade and still \
queued can carry an older one.

**AMQP properties.** `message_id` = `event_id`, `type` = the event type, \
`content_type` = `application/json`, `delivery_mode` = 2 (persistent), `timestamp` = \
`occurred_at` (whole seconds)."""

_ENVELOPE_FIELDS: Final[dict[str, dict[str, str]]] = {
    "event_id": {"description": "Unique per event; the AMQP message_id. Deduplicate by it."},
    "type": {"description": "The event type (the AMQP type property)."},
    "schema_version": {"description": "Version of the schema of `data` for this type."},
    "stream_type": {"description": "`order` or `product`: the first part of the routing key."},
    "stream_id": {"description": "The order's or product's id."},
    "stream_version": {"description": "1, 2, 3, ... within the stream."},
    "position": {"description": "Place in the global log; strictly increasing."},
    "prev_position": {
        "description": "Position of the message published before this one (0: none)."
    },
    "occurred_at": {"description": "Commit time, RFC 3339, UTC.", "format": "date-time"},
    "correlation_id": {"description": "X-Correlation-ID of the command that caused it."},
    "data": {"description": "The event's data; its schema depends on `type`."},
}


def _schemas() -> dict[str, Any]:
    structs = (Envelope, *(struct for _, _, struct in EVENT_TYPES.values()))
    (_, components) = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    envelope = components["Envelope"]
    envelope["description"] = "One logged event as published; `data` depends on `type`."
    for name, extra in _ENVELOPE_FIELDS.items():
        envelope["properties"][name].update(extra)
    return dict(components)


def _payload(type_name: str, stream_type: str) -> dict[str, Any]:
    """The envelope of one event type: its constants and its data schema."""
    return {
        "allOf": [
            {"$ref": "#/components/schemas/Envelope"},
            {
                "type": "object",
                "properties": {
                    "type": {"const": type_name},
                    "schema_version": {"const": current_version(type_name)},
                    "stream_type": {"const": stream_type},
                    "data": {"$ref": f"#/components/schemas/{type_name}"},
                },
            },
        ]
    }


def _message(type_name: str, stream_type: str, key: str) -> dict[str, Any]:
    version = current_version(type_name)
    return {
        "name": type_name,
        "title": type_name,
        "summary": f"{type_name}, schema version {version}, routing key `{key}`.",
        "contentType": "application/json",
        "correlationId": {"location": "$message.payload#/correlation_id"},
        "headers": {
            "type": "object",
            "properties": {
                "traceparent": {
                    "type": "string",
                    "description": "W3C trace context of the command, when it was traced.",
                }
            },
        },
        "payload": _payload(type_name, stream_type),
        "bindings": {"amqp": {"messageType": type_name, "bindingVersion": BINDING_VERSION}},
        "x-schema-version": version,
        "x-amqp-properties": {
            "message_id": "$message.payload#/event_id",
            "type": type_name,
            "content_type": "application/json",
            "delivery_mode": 2,
            "timestamp": "$message.payload#/occurred_at",
        },
    }


def _channel(key: str, type_name: str, exchange: str) -> dict[str, Any]:
    exchange_binding = {
        "name": exchange,
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    return {
        "address": key,
        "title": f"Routing key {key} on {exchange}",
        "messages": {type_name: {"$ref": f"#/components/messages/{type_name}"}},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": exchange_binding,
                "bindingVersion": BINDING_VERSION,
            }
        },
    }


def _operation(key: str, type_name: str) -> dict[str, Any]:
    return {
        "action": "send",
        "title": f"Publish {type_name}",
        "summary": "Published by the relay, in log order, with publisher confirms.",
        "channel": {"$ref": f"#/channels/{key}"},
        "messages": [{"$ref": f"#/channels/{key}/messages/{type_name}"}],
        "bindings": {
            "amqp": {
                "deliveryMode": 2,
                "mandatory": False,
                "timestamp": True,
                "bindingVersion": BINDING_VERSION,
            }
        },
    }


def document(exchange: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the events published to `exchange` (default: the
    default EXCHANGE setting, as in docs/asyncapi.yaml)."""
    exchange = exchange or Settings().exchange
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for type_name, (stream_type, key, _) in EVENT_TYPES.items():
        channels[key] = _channel(key, type_name, exchange)
        operations[f"send{type_name}"] = _operation(key, type_name)
        messages[type_name] = _message(type_name, stream_type, key)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "shop-cqrs events",
            "version": "0.1.0",
            "description": _GUARANTEES.format(exchange=exchange),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "The deployment's AMQP_URL (docker compose publishes it here).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": _schemas(), "messages": messages},
    }


def text(exchange: str | None = None) -> str:
    """docs/asyncapi.yaml: the document as indented JSON, which YAML parsers read too."""
    return json.dumps(document(exchange), indent=2, ensure_ascii=False) + "\n"


def routes(exchange: str) -> list[Route]:
    """`GET /asyncapi.json` describing `exchange`, encoded once here."""
    body = msgspec.json.encode(document(exchange))

    async def asyncapi(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return [Route("/asyncapi.json", asyncapi, methods=["GET"])]


if __name__ == "__main__":
    sys.stdout.write(text())
