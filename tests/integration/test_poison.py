"""One bad event holds one stream, never the read side (real PostgreSQL, RabbitMQ, store)."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from app.contracts.generations import read_pointer
from app.operations import parked as parked_command
from app.operations import rebuild as rebuild_command
from app.operations.verify import verify
from app.plumbing.resources import open_resources
from app.plumbing.settings import Settings
from app.projector import documents
from app.projector.rebuild import rebuild
from tests.support.servers import Server, http_client
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

TOO_BIG_FOR_BSON = 10**19


@pytest.fixture
def stack(pipeline_stack: Settings) -> Settings:
    return pipeline_stack


Start = Callable[[], Awaitable[tuple[Server, httpx.AsyncClient]]]


@pytest.fixture
async def start(stack: Settings) -> AsyncIterator[Start]:
    running: list[tuple[Server, httpx.AsyncClient]] = []

    async def start() -> tuple[Server, httpx.AsyncClient]:
        server = Server(stack)
        await server.start()
        running.append((server, http_client(server.url, timeout=30)))
        return running[-1]

    yield start
    for server, http in reversed(running):
        await http.aclose()
        await server.stop()


async def _post(http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None) -> Any:
    response = await http.post(path, json=body) if body is not None else await http.post(path)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def _product(http: httpx.AsyncClient, stock: int = 100) -> str:
    body = {"sku": f"P-{uuid.uuid4().hex[:8]}", "name": "thing", "price_cents": 10, "stock": stock}
    product_id: str = (await _post(http, "/products", body))["product_id"]
    return product_id


async def _order(http: httpx.AsyncClient, customer: str, product_id: str) -> Any:
    body = {"customer_id": customer, "lines": [{"product_id": product_id, "quantity": 1}]}
    return await _post(http, "/orders", body)


async def _read(http: httpx.AsyncClient, path: str, after: int) -> Any:
    response = await http.get(path, params={"after": after})
    assert response.status_code == 200, response.text
    return response.json()


async def _log_by_hand(
    stack: Settings, stream_type: str, stream_id: str, type_: str, data: str
) -> None:
    """Append one event the way a buggy writer would: valid JSON, the stream's row version
    bumped in the same transaction."""
    table, key = ("products", "product_id") if stream_type == "product" else ("orders", "order_id")
    conn = await asyncpg.connect(stack.database_url)
    try:
        async with conn.transaction():
            version = await conn.fetchval(
                f"UPDATE {table} SET version = version + 1 WHERE {key} = $1 RETURNING version",
                uuid.UUID(stream_id),
            )
            await conn.execute(
                "INSERT INTO events (stream_type, stream_id, stream_version, type, data, metadata)"
                ' VALUES ($1, $2, $3, $4, $5::jsonb, \'{"correlation_id": "by-hand"}\')',
                stream_type,
                stream_id,
                version,
                type_,
                data,
            )
    finally:
        await conn.close()


async def _parked(stack: Settings, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    code = await parked_command._run(stack, argparse.Namespace(action="list", json=True))
    assert code == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


async def _act(stack: Settings, **args: Any) -> int:
    return await parked_command._run(stack, argparse.Namespace(**args))


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_an_event_the_store_refuses_holds_its_stream_only(
    stack: Settings, start: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    _, http = await start()
    bad, good = await _product(http), await _product(http)
    data = json.dumps({"product_id": bad, "quantity": 1, "stock": TOO_BIG_FOR_BSON})
    await _log_by_hand(stack, "product", bad, "ProductRestocked", data)

    # every other stream stays current
    placed = await _order(http, "alice", good)
    assert (await _read(http, f"/orders/{placed['order_id']}", placed["position"]))["version"] == 1
    restocked = await _post(http, f"/products/{good}/restock", {"quantity": 5})
    assert (await _read(http, f"/products/{good}", restocked["position"]))["stock"] == 104

    # the held stream is visible in `parked list`, /metrics and /health/ready
    (culprit,) = await _parked(stack, capsys)
    assert culprit["stream_type"] == "product"
    assert culprit["stream_id"] == bad
    assert culprit["type"] == "ProductRestocked"
    assert culprit["attempts"] == stack.projector_poison_attempts
    assert culprit["error"].startswith("OverflowError")
    metrics = (await http.get("/metrics")).text
    assert _metric(metrics, "shop_held_streams") == 1
    assert _metric(metrics, "shop_parked_events") == 1
    assert _metric(metrics, "shop_projector_reconnects_total") == 0
    ready = await http.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["held_streams"] == 1
    assert "1 held stream" in ready.json()["checks"]["projector"]

    # a later event of the held stream is parked behind it, not applied out of order
    later = await _post(http, f"/products/{bad}/restock", {"quantity": 2})
    await eventually(
        lambda: _count_parked(stack, 2), what="the later restock parked behind the culprit"
    )
    product = await _read(http, f"/products/{bad}", later["position"])
    assert product["version"] == 1
    report = await verify(stack, wait_s=10)
    assert report.ok, report.differences
    assert [h.stream for h in report.held] == [f"product:{bad}"]

    # skipping the culprit applies what it held back, and the read model is exact again
    code = await _act(stack, action="skip", position=culprit["position"], reason="bad data")
    assert code == 0
    product = await _read(http, f"/products/{bad}", later["position"])
    assert (product["stock"], product["version"]) == (102, 3)
    assert await _parked(stack, capsys) == []
    report = await verify(stack, wait_s=10)
    assert report.ok, report
    assert report.held == []
    assert _metric((await http.get("/metrics")).text, "shop_held_streams") == 0
    assert (await http.get("/health/ready")).json()["status"] == "ready"
    assert await _audit(stack) == ["parked", "parked", "skipped", "applied"]


async def _count_parked(stack: Settings, expected: int) -> bool:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM parked_events") == expected)
    finally:
        await conn.close()


async def _audit(stack: Settings) -> list[str]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return [
            r["action"] for r in await conn.fetch("SELECT action FROM parked_audit ORDER BY id")
        ]
    finally:
        await conn.close()


async def test_a_projection_bug_for_one_order_then_retry_after_the_fix(
    stack: Settings,
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, http = await start()
    product = await _product(http)
    unlucky, lucky = await _order(http, "carol", product), await _order(http, "carol", product)
    original = documents.PROJECTIONS["OrderPaid"]

    def broken(envelope: Any, data: Any) -> list[documents.Write]:
        if str(data.order_id) == unlucky["order_id"]:
            raise KeyError("a bug that only this order's data triggers")
        return original(envelope, data)

    monkeypatch.setitem(documents.PROJECTIONS, "OrderPaid", broken)
    await _post(http, f"/orders/{unlucky['order_id']}/pay")
    paid = await _post(http, f"/orders/{lucky['order_id']}/pay")
    # the customer's other order (another stream feeding the same customer) still moves on
    customer = await _read(http, "/customers/carol", paid["position"])
    assert customer["total_spent_cents"] == 10
    assert (await _read(http, f"/orders/{unlucky['order_id']}", 0))["status"] == "placed"
    (culprit,) = await _parked(stack, capsys)
    assert culprit["error"].startswith("KeyError")
    report = await verify(stack, wait_s=10)
    assert report.ok, report.differences
    (held,) = report.held
    assert held.stream == f"order:{unlucky['order_id']}"
    assert {(d.collection, d.field) for d in held.differences} >= {("orders", "status")}

    # retrying before the fix fails again and keeps the stream held (exit 1)
    assert await _act(stack, action="retry", stream=held.stream, all=False) == 1
    (again,) = await _parked(stack, capsys)
    assert again["attempts"] == culprit["attempts"] + 1

    monkeypatch.setitem(documents.PROJECTIONS, "OrderPaid", original)  # the fix is deployed
    assert await _act(stack, action="retry", stream=None, all=True) == 0
    customer = await _read(http, "/customers/carol", paid["position"])
    assert (customer["order_count"], customer["total_spent_cents"]) == (2, 20)
    assert (await _read(http, f"/orders/{unlucky['order_id']}", 0))["status"] == "paid"
    report = await verify(stack, wait_s=10)
    assert report.ok, report
    assert report.held == []


async def test_a_log_event_that_does_not_decode_is_parked_and_a_restart_keeps_it_held(
    stack: Settings, start: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    server, http = await start()
    product = await _product(http)
    order = await _order(http, "dave", product)
    await _log_by_hand(stack, "order", order["order_id"], "OrderPaid", '{"bogus": 1}')
    await eventually(lambda: _count_parked(stack, 1), what="the undecodable event parked")
    (culprit,) = await _parked(stack, capsys)
    assert culprit["error"].startswith("InvalidEventData")
    assert culprit["attempts"] == 1  # retrying cannot change what is in the log

    await http.aclose()
    await server.stop()
    _, http = await start()  # a restarted projector still holds the stream
    await _post(http, f"/orders/{order['order_id']}/cancel")
    await eventually(lambda: _count_parked(stack, 2), what="the cancel parked behind")
    other = await _order(http, "erin", product)
    assert (await _read(http, f"/orders/{other['order_id']}", other["position"]))["version"] == 1

    # an offline rebuild keeps it held, too
    async with open_resources(replace(stack, mongo_db=f"{stack.mongo_db}_rebuilt")) as rebuilt:
        try:
            await rebuild(rebuilt.pool, rebuilt.db)
            document = await rebuilt.db["orders"].find_one({"_id": order["order_id"]})
            assert document is not None
            assert document["status"] == "placed"
        finally:
            await rebuilt.mongo.drop_database(rebuilt.db.name)
    assert len(await _parked(stack, capsys)) == 2
    assert await _audit(stack) == ["parked", "parked"]  # the rebuild parked nothing twice


async def test_an_online_rebuild_keeps_a_held_stream_held_and_refuses_releases_meanwhile(
    stack: Settings, start: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    _, http = await start()
    product = await _product(http)
    order = await _order(http, "fay", product)
    await _log_by_hand(stack, "order", order["order_id"], "OrderPaid", '{"bogus": 1}')
    await eventually(lambda: _count_parked(stack, 1), what="the undecodable event parked")
    stream = f"order:{order['order_id']}"
    # an unfinished rebuild (stopped at its comparison) refuses releases
    async with open_resources(stack) as resources:
        await resources.db["generations"].insert_one(
            {"_id": "rebuild", "generation": 1, "database": "x", "phase": "compare"}
        )
        assert await _act(stack, action="retry", stream=stream, all=False) == 2
        assert "a rebuild of the read model is unfinished" in capsys.readouterr().err
        await resources.db["generations"].delete_one({"_id": "rebuild"})
    args = rebuild_command.parse([])
    assert await asyncio.to_thread(rebuild_command.main, stack, args) == 0
    async with open_resources(stack) as resources:
        pointer = await read_pointer(resources.db)
        assert pointer.generation == 1
        new = resources.mongo[pointer.database]
        document = await new["orders"].find_one({"_id": order["order_id"]})
        assert document is not None
        assert document["status"] == "placed"  # still held in the new generation
    await _post(http, f"/orders/{order['order_id']}/cancel")  # parked behind, in the new one
    await eventually(lambda: _count_parked(stack, 2), what="the cancel parked behind")
    assert await _audit(stack) == ["parked", "parked"]
    report = await verify(stack, wait_s=10)
    assert report.differences == []
    assert [held.stream for held in report.held] == [stream]


async def test_the_hold_survives_a_fail_over_to_another_replica(
    stack: Settings, start: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    first, http = await start()
    _, other_http = await start()
    bad = await _product(http)
    data = json.dumps({"product_id": bad, "quantity": 1, "stock": TOO_BIG_FOR_BSON})
    await _log_by_hand(stack, "product", bad, "ProductRestocked", data)
    await eventually(lambda: _count_parked(stack, 1), what="the culprit parked")

    await http.aclose()
    await first.stop()  # the second replica's projector becomes the active consumer
    later = await _post(other_http, f"/products/{bad}/restock", {"quantity": 1})
    await eventually(lambda: _count_parked(stack, 2), within_s=30, what="parked on the standby")
    good = await _post(other_http, "/products", {"sku": "FAIL-OVER", "name": "x", "price_cents": 1})
    assert later["position"] < good["position"]
    assert (await _read(other_http, f"/products/{good['product_id']}", good["position"]))[
        "version"
    ] == 1
    assert len(await _parked(stack, capsys)) == 2
