"""Server-sent event streams over real HTTP (app/queries/streams.py): an order's and a
customer's changes arrive in order, a reconnect with Last-Event-ID resumes exactly, heartbeats,
the bound on open streams, bad input, access rules, and a replica whose projector stands by."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from app.plumbing.access import mint_token
from app.plumbing.settings import Settings
from tests.support.servers import Server, http_client
from tests.support.sse import EventReader, Message, event_stream
from tests.support.waiting import eventually

Serve = Callable[..., Awaitable[httpx.AsyncClient]]
SECRET = "stream-test-secret-long-enough-for-hs256"


@pytest.fixture
async def serve(stack: Settings) -> AsyncIterator[Serve]:
    """Start the app on the test's stack (keyword arguments override settings); a client of it."""
    servers: list[Server] = []
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: Any) -> httpx.AsyncClient:
        server = Server(replace(stack, **overrides))
        await server.start()
        servers.append(server)
        client = http_client(server.url, timeout=30)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for server in reversed(servers):
        await server.stop()


async def product(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Mug", "price_cents": 250, "stock": 50}
    response = await http.post("/products", json=body, headers=headers)
    assert response.status_code == 201, response.text
    product_id: str = response.json()["product_id"]
    return product_id


async def place(
    http: httpx.AsyncClient, product_id: str, customer: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    body = {"customer_id": customer, "lines": [{"product_id": product_id, "quantity": 1}]}
    response = await http.post("/orders", json=body, headers=headers)
    assert response.status_code == 201, response.text
    placed: dict[str, Any] = response.json()
    return placed


async def act(http: httpx.AsyncClient, order_id: str, action: str) -> int:
    response = await http.post(f"/orders/{order_id}/{action}")
    assert response.status_code == 200, response.text
    position: int = response.json()["position"]
    return position


def customer() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


async def order_event(reader: EventReader) -> Message:
    message = await reader.next_event()
    assert message.event == "order", message
    assert message.id is not None, message
    assert message.id.isdigit(), message
    return message


async def test_an_order_stream_sends_each_change_in_order(serve: Serve) -> None:
    http = await serve()
    placed = await place(http, await product(http), customer())
    oid = placed["order_id"]
    async with event_stream(http, f"/orders/{oid}/stream?after={placed['position']}") as reader:
        assert reader.response.status_code == 200
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        assert reader.response.headers["cache-control"] == "no-cache"
        assert int(reader.response.headers["x-read-position"]) >= placed["position"]
        first = await order_event(reader)
        assert first.json()["status"] == "placed"
        assert int(first.id or 0) >= placed["position"]
        paid_at = await act(http, oid, "pay")
        paid = await order_event(reader)
        shipped_at = await act(http, oid, "ship")
        shipped = await order_event(reader)
    assert [paid.json()["status"], shipped.json()["status"]] == ["paid", "shipped"]
    assert paid_at <= int(paid.id or 0) < shipped_at <= int(shipped.id or 0)
    assert [c["status"] for c in shipped.json()["status_history"]] == ["placed", "paid", "shipped"]
    # the stream's document is the one GET answers at that position
    current = await http.get(f"/orders/{oid}?after={shipped.id}")
    assert current.json() == shipped.json()


async def test_a_reconnect_with_last_event_id_gets_exactly_what_changed(serve: Serve) -> None:
    http = await serve(stream_heartbeat_s=0.3)
    placed = await place(http, await product(http), customer())
    oid = placed["order_id"]
    async with event_stream(http, f"/orders/{oid}/stream?after={placed['position']}") as reader:
        seen = await order_event(reader)
    # nothing changed since: the resumed stream sends no order, only heartbeats
    async with event_stream(http, f"/orders/{oid}/stream", {"Last-Event-ID": seen.id or ""}) as r:
        assert r.response.status_code == 200
        messages = [await r.next() for _ in range(3)]
        assert [m.comment for m in messages[1:]] == ["heartbeat", "heartbeat"], messages
    # changed while away: the resumed stream (once the read model has the ship) sends the
    # order as it is now, once
    await act(http, oid, "pay")
    shipped_at = await act(http, oid, "ship")
    resume = f"/orders/{oid}/stream?after={shipped_at}"
    async with event_stream(http, resume, {"Last-Event-ID": seen.id or ""}) as r:
        resumed = await order_event(r)
        assert resumed.json()["status"] == "shipped"
        assert int(resumed.id or 0) >= shipped_at
        assert (await r.next()).comment == "heartbeat"  # and not the order once more


async def test_a_customer_stream_sends_each_change_and_resumes(serve: Serve) -> None:
    http = await serve()
    item, who = await product(http), customer()
    other = await place(http, item, customer())  # another customer's order is never sent
    async with event_stream(http, f"/customers/{who}/orders/stream?after={other['position']}") as r:
        ready = await r.next_event()
        assert ready.event == "ready"
        assert ready.json() == {"customer_id": who, "position": int(ready.id or -1)}
        first = await place(http, item, who)
        second = await place(http, item, who)
        got = [await order_event(r), await order_event(r)]
    assert [m.json()["order_id"] for m in got] == [first["order_id"], second["order_id"]]
    assert int(got[0].id or 0) < int(got[1].id or 0)
    # while away: a new order, then the first one paid; the second stays as it was
    third = await place(http, item, who)
    await act(http, first["order_id"], "pay")
    await place(http, item, customer())
    async with event_stream(
        http, f"/customers/{who}/orders/stream", {"Last-Event-ID": got[1].id or ""}
    ) as r:
        assert (await r.next_event()).event == "ready"
        resumed = [await order_event(r), await order_event(r)]
        fourth = await place(http, item, who)
        live = await order_event(r)
    assert [(m.json()["order_id"], m.json()["status"]) for m in resumed] == [
        (third["order_id"], "placed"),
        (first["order_id"], "paid"),
    ]
    assert live.json()["order_id"] == fourth["order_id"]
    ids = [int(m.id or 0) for m in (*got, *resumed, live)]
    assert ids == sorted(set(ids))


async def test_a_quiet_stream_sends_heartbeats(serve: Serve) -> None:
    http = await serve(stream_heartbeat_s=0.2)
    async with event_stream(http, f"/customers/{customer()}/orders/stream") as reader:
        assert (await reader.next()).retry == 1000
        assert (await reader.next_event()).event == "ready"
        beats = [await reader.next(within_s=2) for _ in range(3)]
    assert [b.comment for b in beats] == ["heartbeat"] * 3


async def test_streams_beyond_the_bound_are_503_and_a_closed_one_frees_its_slot(
    serve: Serve,
) -> None:
    http = await serve(stream_max_open=2)
    path = f"/customers/{customer()}/orders/stream"
    async with event_stream(http, path) as one, event_stream(http, path) as two:
        assert (one.response.status_code, two.response.status_code) == (200, 200)
        refused = await http.get(path)
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["open_streams"] == 2
        async with event_stream(http, "/orders/8b7ad7b4-8d63-4bbd-8d6b-8e7c2bd5f7a1/stream") as r:
            assert r.response.status_code == 503  # one bound for every stream

    # the clients went away: their slots come back
    async def reopens() -> bool:
        async with event_stream(http, path) as a, event_stream(http, path) as b:
            return (a.response.status_code, b.response.status_code) == (200, 200)

    await eventually(reopens, within_s=5, what="the closed streams' slots to be released")


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/orders/not-a-uuid/stream", {}, 404),
        (f"/orders/{uuid.uuid4()}/stream", {}, 404),  # no such order
        ("/customers/bad%20id/orders/stream", {}, 404),
        (f"/customers/{'x' * 65}/orders/stream", {}, 404),
        ("/customers/alice/orders/stream?after=-1", {}, 422),
        ("/customers/alice/orders/stream?after=1&after=2", {}, 422),
        ("/customers/alice/orders/stream", {"Last-Event-ID": "abc"}, 400),
        ("/customers/alice/orders/stream", {"Last-Event-ID": "1" * 20}, 400),
        (f"/orders/{uuid.uuid4()}/stream", {"Last-Event-ID": "-3"}, 400),
    ],
)
async def test_bad_input_is_a_problem_before_anything_streams(
    serve: Serve, path: str, headers: dict[str, str], status: int
) -> None:
    http = await serve(stream_max_open=1)
    response = await http.get(path, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "x-read-position" in response.headers
    # a refused stream holds no slot
    async with event_stream(http, "/customers/alice/orders/stream") as reader:
        assert reader.response.status_code == 200


async def test_a_read_model_that_lags_past_the_bound_is_503(serve: Serve) -> None:
    http = await serve(read_wait_max_s=0.2)
    path = f"/customers/{customer()}/orders/stream"
    response = await http.get(path, headers={"Last-Event-ID": str(2**40)})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


async def test_streams_keep_the_rules_of_their_gets(serve: Serve) -> None:
    http = await serve(auth_mode="jwt", auth_jwt_secret=SECRET)

    def bearer(sub: str, role: str = "customer") -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(SECRET, sub, role, 300)}"}  # type: ignore[arg-type]

    alice, bob = customer(), customer()
    item = await product(http, bearer("ops", "admin"))
    placed = await place(http, item, alice, bearer(alice))
    order_path = f"/orders/{placed['order_id']}/stream?after={placed['position']}"
    assert (await http.get(order_path)).status_code == 401
    assert (await http.get(order_path, headers=bearer(bob))).status_code == 404
    assert (
        await http.get(f"/customers/{alice}/orders/stream", headers=bearer(bob))
    ).status_code == 403
    assert (await http.get(f"/customers/{alice}/orders/stream")).status_code == 401
    for who in (bearer(alice), bearer("ops", "admin")):
        async with event_stream(http, order_path, who) as reader:
            assert (await order_event(reader)).json()["order_id"] == placed["order_id"]
        async with event_stream(http, f"/customers/{alice}/orders/stream", who) as reader:
            assert (await reader.next_event()).event == "ready"


@pytest.mark.slow
async def test_a_replica_whose_projector_stands_by_finds_changes_by_polling(
    serve: Serve,
) -> None:
    active = await serve()
    standby = await serve(relay_enabled=False, projector_enabled=False)
    placed = await place(active, await product(active), customer())
    oid = placed["order_id"]
    async with event_stream(standby, f"/orders/{oid}/stream?after={placed['position']}") as r:
        assert (await order_event(r)).json()["status"] == "placed"
        await act(active, oid, "pay")
        assert (await order_event(r)).json()["status"] == "paid"
        await act(active, oid, "cancel")
        assert (await order_event(r)).json()["status"] == "cancelled"
