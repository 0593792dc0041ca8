"""RabbitMQ unreachable for a while: commands keep succeeding (the log buffers), and once the
broker is back the relay and the projector catch up with nothing lost or reordered.

The outage is made with a TCP proxy of the test's own between the app and the broker, so the
machine's RabbitMQ (shared with other runs) is never stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from app.operations.verify import verify
from app.plumbing.settings import Settings
from chaos.proxy import Proxy
from tests.support.servers import ServerFactory, http_client
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
async def proxied(stack: Settings) -> AsyncIterator[tuple[Settings, Proxy]]:
    """The stack with its broker behind a proxy (the `stack` fixture removes it, through the
    real broker URL, afterwards)."""
    proxy = Proxy.of_url("rabbitmq", stack.amqp_url, 5672)
    await proxy.restore()
    yield replace(stack, amqp_url=proxy.url(stack.amqp_url)), proxy
    await proxy.cut()


async def _order(http: httpx.AsyncClient, product_id: str, customer: str) -> dict[str, Any]:
    response = await http.post(
        "/orders",
        json={"customer_id": customer, "lines": [{"product_id": product_id, "quantity": 1}]},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _until_metric(http: httpx.AsyncClient, line: str) -> None:
    async def shown() -> bool:
        return line in (await http.get("/metrics")).text.splitlines()

    await eventually(shown, within_s=15, what=f"/metrics to show {line!r}", interval_s=0.05)


async def test_commands_succeed_during_a_broker_outage_and_nothing_is_lost(
    proxied: tuple[Settings, Proxy], start_server: ServerFactory
) -> None:
    stack, proxy = proxied
    server = await start_server(
        **{
            k: getattr(stack, k)
            for k in ("database_url", "amqp_url", "relay_enabled", "projector_enabled")
        }
    )
    async with http_client(server.url, timeout=30) as http:
        product = (
            await http.post(
                "/products",
                json={
                    "sku": f"OUT-{uuid.uuid4().hex[:8]}",
                    "name": "Lamp",
                    "price_cents": 700,
                    "stock": 500,
                },
            )
        ).json()["product_id"]
        first = await _order(http, product, "before")
        assert (
            await http.get(f"/orders/{first['order_id']}", params={"after": first["position"]})
        ).status_code == 200

        await proxy.cut()
        during = [await _order(http, product, f"during-{i % 3}") for i in range(30)]
        for placed in during[::3]:
            await http.post(f"/orders/{placed['order_id']}/pay")
        await _until_metric(http, "shop_relay_connected 0.0")
        await proxy.restore()

        last = await _order(http, product, "after")

        async def caught_up() -> bool:
            response = await http.get(
                f"/orders/{last['order_id']}", params={"after": last["position"]}
            )
            assert response.status_code in (200, 503), response.text
            return response.status_code == 200

        await eventually(caught_up, within_s=60, what="the pipeline to catch up after the outage")
        stock = (await http.get(f"/products/{product}")).json()["stock"]
    assert stock == 500 - 32
    report = await verify(stack, wait_s=30)
    assert report.differences == []
    assert report.ok
