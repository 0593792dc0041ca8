"""The whole service as users run it: `python -m app` processes, killed and restarted.

Each test gets a fresh PostgreSQL database, its own broker names and Mongo database; at the
end `python -m app verify` must find the read model equal to the write side's truth.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.plumbing.settings import Settings
from tests.support.servers import AppProcess, app_env, http_client
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(stack: Settings) -> Iterator[list[AppProcess]]:
    started: list[AppProcess] = []
    yield started
    for replica in started:
        replica.stop(signal.SIGKILL)
        replica.log.close()


async def _replica(stack: Settings, replicas: list[AppProcess]) -> AppProcess:
    replica = AppProcess(stack)
    await replica.start()
    replicas.append(replica)
    return replica


def _verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "verify"],
        env=app_env(settings, 1),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _traffic(
    url: str,
    products: list[str],
    count: int,
    rng: random.Random,
    positions: list[int] | None = None,
) -> list[int]:
    """Mixed commands; returns (and appends to `positions`, as they come) the positions of the
    successful ones. Transport errors (a replica killed mid-request) are tolerated: the
    outcome of those is whatever committed."""
    positions = [] if positions is None else positions
    async with http_client(url, timeout=30) as http:

        async def one(i: int) -> None:
            try:
                lines = [
                    {"product_id": p, "quantity": rng.randint(1, 3)}
                    for p in rng.sample(products, rng.randint(1, min(3, len(products))))
                ]
                placed = await http.post(
                    "/orders", json={"customer_id": f"cust-{rng.randint(1, 8)}", "lines": lines}
                )
                if placed.status_code != 201:
                    return
                positions.append(placed.json()["position"])
                order_id = placed.json()["order_id"]
                for action in rng.choice(
                    [[], ["pay"], ["pay", "ship"], ["cancel"], ["pay", "cancel"]]
                ):
                    moved = await http.post(f"/orders/{order_id}/{action}")
                    if moved.status_code == 200:
                        positions.append(moved.json()["position"])
            except httpx.TransportError:
                pass

        await asyncio.gather(*(one(i) for i in range(count)))
    return positions


async def _products(url: str, n: int = 5) -> list[str]:
    async with http_client(url, timeout=30) as http:
        created = [
            await http.post(
                "/products",
                json={
                    "sku": f"P-{uuid.uuid4().hex[:8]}",
                    "name": f"Product {i}",
                    "price_cents": 100 * (i + 1),
                    "stock": 200,
                },
            )
            for i in range(n)
        ]
    return [c.json()["product_id"] for c in created]


async def _caught_up(url: str, position: int) -> None:
    async with http_client(url, timeout=60) as http:

        async def reached() -> bool:
            response = await http.get("/reports/top-products", params={"after": position})
            return response.status_code == 200

        what = f"the read model to reach position {position}"
        await eventually(reached, within_s=60, what=what, interval_s=0.2)


async def test_read_your_writes_through_the_whole_pipeline(
    stack: Settings, replicas: list[AppProcess]
) -> None:
    app = await _replica(stack, replicas)
    async with http_client(app.url, timeout=30) as http:
        product = (
            await http.post(
                "/products",
                json={"sku": "RYW-1", "name": "Kettle", "price_cents": 2500, "stock": 3},
            )
        ).json()
        placed = (
            await http.post(
                "/orders",
                json={
                    "customer_id": "ryw",
                    "lines": [{"product_id": product["product_id"], "quantity": 2}],
                },
            )
        ).json()
        order = await http.get(
            f"/orders/{placed['order_id']}", params={"after": placed["position"]}
        )
        assert order.status_code == 200, order.text
        assert order.json()["status"] == "placed"
        assert order.json()["total_cents"] == 5000
        assert int(order.headers["x-read-position"]) >= placed["position"]
        read_product = await http.get(
            f"/products/{product['product_id']}", params={"after": placed["position"]}
        )
        assert read_product.json()["stock"] == 1
    assert _verify(stack).returncode == 0


async def test_sigkill_and_restart_loses_nothing(
    stack: Settings, replicas: list[AppProcess], rng: random.Random
) -> None:
    first = await _replica(stack, replicas)
    products = await _products(first.url)
    succeeded: list[int] = []
    burst = asyncio.create_task(_traffic(first.url, products, 150, rng, succeeded))
    await eventually(lambda: len(succeeded) >= 30, within_s=30, what="30 commands to succeed")
    assert not burst.done(), "the traffic ended before the kill: nothing was in flight"
    first.stop(signal.SIGKILL)
    await burst
    again = await _replica(stack, replicas)
    positions = await _traffic(again.url, products, 50, rng)
    await _caught_up(again.url, max(positions))
    result = _verify(stack)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_second_replica_takes_over_when_the_first_is_killed(
    stack: Settings, replicas: list[AppProcess], rng: random.Random
) -> None:
    first = await _replica(stack, replicas)
    second = await _replica(stack, replicas)
    products = await _products(first.url)
    await asyncio.gather(
        _traffic(first.url, products, 60, rng), _traffic(second.url, products, 60, rng)
    )
    first.stop(signal.SIGKILL)
    positions = await _traffic(second.url, products, 60, rng)
    await _caught_up(second.url, max(positions))
    result = _verify(stack)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_sigterm_stops_cleanly(
    stack: Settings, replicas: list[AppProcess], rng: random.Random
) -> None:
    app = await _replica(stack, replicas)
    products = await _products(app.url, 2)
    positions = await _traffic(app.url, products, 20, rng)
    await _caught_up(app.url, max(positions))
    # uvicorn finishes in-flight requests and the lifespan, then re-raises the signal so the
    # parent sees a termination by SIGTERM
    assert app.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    output = app.output()
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output
