"""The whole service as users run it: `python -m app` processes, killed and restarted.

Each test gets a fresh PostgreSQL database, its own broker names and Mongo database; at the
end `python -m app verify` must find the read model equal to the write side's truth.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from app.contracts import topology as broker
from app.plumbing.settings import Settings
from tests.conftest import _free_port

pytestmark = pytest.mark.slow


def _env(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MONGO_"))}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "AMQP_URL": settings.amqp_url,
            "MONGO_URL": settings.mongo_url,
            "MONGO_DB": settings.mongo_db,
            "EXCHANGE": settings.exchange,
            "PROJECTOR_QUEUE": settings.projector_queue,
            "PARKED_QUEUE": settings.parked_queue,
            "RELAY_NAME": settings.relay_name,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "info",
        }
    )
    return env


class AppProcess:
    """One `python -m app serve` replica."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env=_env(self.settings, self.port),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=self.url) as http:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, "the app exited during start"
                try:
                    if (await http.get("/health/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("the app did not start within 30 s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@pytest.fixture
async def stack(settings: Settings, fresh_database_url: str) -> AsyncIterator[Settings]:
    stack_settings = replace(
        settings, database_url=fresh_database_url, relay_enabled=True, projector_enabled=True
    )
    yield stack_settings
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack_settings.mongo_url)
    await mongo.drop_database(stack_settings.mongo_db)
    await mongo.close()
    connection = await broker.connect(stack_settings)
    await broker.delete_topology(await connection.channel(), stack_settings)
    await connection.close()


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
        env=_env(settings, 1),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _traffic(url: str, products: list[str], count: int, seed: int) -> list[int]:
    """Mixed commands; returns the positions of the successful ones. Transport errors (a
    replica killed mid-request) are tolerated: the outcome of those is whatever committed."""
    rng = random.Random(seed)
    positions: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

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
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
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
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = await http.get("/reports/top-products", params={"after": position})
            if response.status_code == 200:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"the read model did not reach position {position}")


async def test_read_your_writes_through_the_whole_pipeline(
    stack: Settings, replicas: list[AppProcess]
) -> None:
    app = await _replica(stack, replicas)
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
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
    stack: Settings, replicas: list[AppProcess]
) -> None:
    first = await _replica(stack, replicas)
    products = await _products(first.url)
    burst = asyncio.create_task(_traffic(first.url, products, 150, seed=1))
    await asyncio.sleep(1.0)
    first.stop(signal.SIGKILL)
    await burst
    again = await _replica(stack, replicas)
    positions = await _traffic(again.url, products, 50, seed=2)
    await _caught_up(again.url, max(positions))
    result = _verify(stack)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_second_replica_takes_over_when_the_first_is_killed(
    stack: Settings, replicas: list[AppProcess]
) -> None:
    first = await _replica(stack, replicas)
    second = await _replica(stack, replicas)
    products = await _products(first.url)
    await asyncio.gather(
        _traffic(first.url, products, 60, seed=3), _traffic(second.url, products, 60, seed=4)
    )
    first.stop(signal.SIGKILL)
    positions = await _traffic(second.url, products, 60, seed=5)
    await _caught_up(second.url, max(positions))
    result = _verify(stack)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_sigterm_stops_cleanly(stack: Settings, replicas: list[AppProcess]) -> None:
    app = await _replica(stack, replicas)
    products = await _products(app.url, 2)
    positions = await _traffic(app.url, products, 20, seed=6)
    await _caught_up(app.url, max(positions))
    # uvicorn finishes in-flight requests and the lifespan, then re-raises the signal so the
    # parent sees a termination by SIGTERM
    assert app.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    output = app.output()
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output
