"""The clients of a chaos run: a steady open-loop mix of commands over every replica, some
with an Idempotency-Key (sent twice on purpose, and retried when the answer is in doubt), and
reads with `after=<position>` of what was just written. Every request is recorded with what it
was told (chaos.tally), before it is sent, so a request cut short still counts as in doubt."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from chaos.tally import Attempt, Outcome, Read

Answer = dict[str, Any]
# the answers that mean the request was never sent: it cannot have had an effect
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # a client's retries of an in-doubt request with its key
_OPS = {  # relative frequency of each command; "invalid" is a transition the order refuses
    "create_product": 4, "restock": 8, "place_order": 45, "pay": 18, "ship": 10, "cancel": 8,
    "invalid": 3,
}  # fmt: skip
_INVALID = {
    "pay": ("shipped", "cancelled"),
    "ship": ("placed", "cancelled"),
    "cancel": ("shipped",),
}


@dataclass
class Shop:
    """What the clients know of the shop: products, and orders by the status last seen."""

    products: list[str] = field(default_factory=list)
    orders: dict[str, set[str]] = field(
        default_factory=lambda: {s: set() for s in ("placed", "paid", "shipped", "cancelled")}
    )

    def order_in(self, rng: random.Random, *statuses: str) -> str | None:
        candidates = [o for s in statuses for o in self.orders[s]]
        return rng.choice(candidates) if candidates else None

    def moved(self, order_id: str, status: str) -> None:
        for known in self.orders.values():
            known.discard(order_id)
        self.orders[status].add(order_id)


@dataclass
class Command:
    op: str
    path: str
    body: Answer | None
    read: Callable[[Answer], str]  # the path to read back once acknowledged
    learn: Callable[[Answer], None]  # what the clients learn from a 2xx


class Traffic:
    """Open-loop load over `urls`: `rate` commands a second, due whatever the answers do."""

    def __init__(self, urls: list[str], rate: float, rng: random.Random, tag: str) -> None:
        self.rate = rate
        self.rng = rng
        self.tag = tag
        self.shop = Shop()
        self.attempts: list[Attempt] = []
        self.reads: list[Read] = []
        self.shed = 0  # due while too many were in flight: not sent
        self._urls = urls
        self._clients: list[httpx.AsyncClient] = []
        self._readers: list[httpx.AsyncClient] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._serial = 0

    async def __aenter__(self) -> Traffic:
        # Commands and reads on pools of their own, so reads waiting out an outage never
        # queue the commands behind them; timeouts past the service's own bounds (10 s for a
        # PostgreSQL connection, READ_WAIT_MAX_S plus MongoDB's server selection for a read),
        # so what is measured is the service's answer, not this client giving up.
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=64)
        self._clients = [
            httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(15.0, connect=2.0), limits=limits)
            for url in self._urls
        ]
        self._readers = [
            httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(15.0, connect=2.0), limits=limits)
            for url in self._urls
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        for client in [*self._clients, *self._readers]:
            await client.aclose()

    async def seed(self, products: int) -> None:
        """Create the first products, one after the other, retrying until each is known."""
        for _ in range(products * 5):
            if len(self.shop.products) >= products:
                return
            await self._command(time.monotonic(), self._create_product(stock=500), key=True)
        raise RuntimeError(f"could not create {products} products to start with")

    async def run(self, duration_s: float, stop: asyncio.Event) -> None:
        """Send commands at `rate` until `stop` is set or `duration_s` has passed, then wait
        (bounded) for the ones in flight and their retries."""
        started = time.monotonic()
        for i in range(int(self.rate * duration_s)):
            due = started + i / self.rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
            if stop.is_set():
                break
            if len(self._in_flight) >= 50 * self.rate:
                self.shed += 1
                continue
            command = self._next()
            if command is None:
                continue
            key = self.rng.random() < 0.4
            task = asyncio.create_task(self._command(due, command, key=key))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*self._in_flight, return_exceptions=True), timeout=30
            )

    def _next(self) -> Command | None:
        op = self.rng.choices(list(_OPS), weights=list(_OPS.values()))[0]
        if op == "create_product" or not self.shop.products:
            return self._create_product(stock=self.rng.randint(20, 200))
        if op == "restock":
            product = self.rng.choice(self.shop.products)
            body = {"quantity": self.rng.randint(5, 50)}
            return Command(op, f"/products/{product}/restock", body, _product, _ignore)
        if op == "place_order":
            return self._place_order()
        if op == "invalid":
            return self._refused_transition()
        allowed = {"pay": ("placed",), "ship": ("paid",), "cancel": ("placed", "paid")}[op]
        order = self.shop.order_in(self.rng, *allowed)
        if order is None:
            return self._place_order()
        status = {"pay": "paid", "ship": "shipped", "cancel": "cancelled"}[op]
        return Command(
            op, f"/orders/{order}/{op}", None, _order, lambda a: self.shop.moved(order, status)
        )

    def _refused_transition(self) -> Command | None:
        """A transition the order's status does not allow (a 409 that must write nothing)."""
        action = self.rng.choice(list(_INVALID))
        order = self.shop.order_in(self.rng, *_INVALID[action])
        if order is None:
            return None
        return Command(f"{action}_refused", f"/orders/{order}/{action}", None, _order, _ignore)

    def _create_product(self, stock: int) -> Command:
        self._serial += 1
        body = {
            "sku": f"CH-{self.tag}-{self._serial}",
            "name": f"Chaos product {self._serial}",
            "price_cents": self.rng.randint(100, 5000),
            "stock": stock,
        }
        return Command(
            "create_product", "/products", body, _product,
            lambda a: self.shop.products.append(a["product_id"]),
        )  # fmt: skip

    def _place_order(self) -> Command:
        chosen = self.rng.sample(self.shop.products, min(len(self.shop.products), 3))
        lines = [
            {"product_id": p, "quantity": self.rng.randint(1, 3)}
            for p in chosen[: self.rng.randint(1, len(chosen))]
        ]
        body = {"customer_id": f"chaos-{self.rng.randint(1, 25)}", "lines": lines}
        return Command(
            "place_order", "/orders", body, _order,
            lambda a: self.shop.moved(a["order_id"], "placed"),
        )  # fmt: skip

    async def _command(self, due: float, command: Command, *, key: bool) -> None:
        """Send `command`; with a key, sometimes twice on purpose (at once or after the
        answer), and again, bounded, while its answer is in doubt."""
        idempotency_key = f"chaos-{self.tag}-{uuid.uuid4().hex}" if key else None
        send = self._sender(command, idempotency_key)
        duplicate = self.rng.random() if key else 1.0
        answers: list[tuple[Attempt, Answer | None]]
        if duplicate < 0.15:
            answers = list(await asyncio.gather(send(due), send(due)))
        else:
            answers = [await send(due)]
            if duplicate < 0.3:
                answers.append(await send(time.monotonic()))
        for delay in _RETRY_DELAYS_S if key else ():
            if any(a.outcome in (Outcome.ACKNOWLEDGED, Outcome.REJECTED) for a, _ in answers):
                break
            await asyncio.sleep(delay)
            answers.append(await send(time.monotonic()))
        told = next((body for a, body in answers if body is not None), None)
        if told is not None:
            command.learn(told)
            if self.rng.random() < 0.6:
                await self._read_back(command.read(told), told)

    def _sender(
        self, command: Command, key: str | None
    ) -> Callable[[float], Awaitable[tuple[Attempt, Answer | None]]]:
        async def send(due: float) -> tuple[Attempt, Answer | None]:
            attempt = Attempt(command.op, uuid.uuid4().hex, key, started=due)
            self.attempts.append(attempt)
            headers = {"X-Correlation-ID": attempt.correlation_id}
            if key is not None:
                headers["Idempotency-Key"] = key
            body: Answer | None = None
            client = self.rng.choice(self._clients)
            attempt.replica = str(client.base_url)
            try:
                response = await client.post(command.path, json=command.body, headers=headers)
                attempt.status = response.status_code
                if attempt.outcome is Outcome.ACKNOWLEDGED:
                    body = response.json()
                    attempt.position = int(body["position"])
                    attempt.replayed = "idempotent-replayed" in response.headers
            except _NOT_SENT:
                attempt.refused = True
            except httpx.HTTPError:
                pass  # in doubt: it may have committed
            finally:
                attempt.ended = time.monotonic()
            return attempt, body

        return send

    async def _read_back(self, path: str, told: Answer) -> None:
        """Read what was just written with `after=`, from any replica: a 200 older than the
        write is a stale read."""
        read = Read(started=time.monotonic())
        self.reads.append(read)
        client = self.rng.choice(self._readers)
        read.replica = str(client.base_url)
        try:
            response = await client.get(path, params={"after": told["position"]})
            read.status = response.status_code
            if response.status_code == 200:
                seen = int(response.headers.get("x-read-position", "0"))
                read.stale = seen < told["position"] or response.json()["version"] < told["version"]
        except _NOT_SENT:
            read.refused = True
        except httpx.HTTPError:
            pass
        finally:
            read.ended = time.monotonic()


def _product(answer: Answer) -> str:
    return f"/products/{answer['product_id']}"


def _order(answer: Answer) -> str:
    return f"/orders/{answer['order_id']}"


def _ignore(answer: Answer) -> None:
    return None
