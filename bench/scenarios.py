"""The write-side and read-side scenarios, each beside the ceiling it is compared with.

- place order over HTTP (closed loop), and the same handler run straight on an asyncpg pool
  (the SQL ceiling is pgbench: bench.pgbench_ceiling);
- commit-to-visible lag and the app's memory under an open-loop rate;
- GET /orders/{id} on the app vs a bare Starlette endpoint doing the same find_one.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiormq.abc
import asyncpg
import msgspec

from app.commands.order_rules import LineRequest, PlaceOrder
from app.commands.orders import place_order
from app.commands.outbox import EventMetadata
from app.commands.products import CreateProduct, create_product
from app.contracts.events import routing_key
from app.contracts.topology import declare_topology
from app.plumbing.localstore import LocalStore
from app.plumbing.resources import connect_broker
from app.plumbing.settings import Settings
from bench import http_load
from bench.disk import FsyncProbe
from bench.http_load import LoadResult
from bench.stack import CpuUse, Process, memory_kib

PRODUCTS = 1000
CUSTOMERS = 2000
CONNECTIONS = 32
_STOCK = 10**11  # plenty: no order in a run is refused for stock


class _Placed(msgspec.Struct):
    order_id: str
    position: int


_decode_placed = msgspec.json.Decoder(_Placed).decode


class Orders:
    """Random orders over the seeded products: 1-3 distinct lines of 1-3 units each."""

    def __init__(self, product_ids: list[uuid.UUID], seed: int = 7) -> None:
        self.product_ids = product_ids
        self._text_ids = [str(p) for p in product_ids]
        self._rng = random.Random(seed)  # noqa: S311 - a load shape, not a secret

    def _pick(self) -> tuple[str, list[tuple[int, int]]]:
        rng = self._rng
        picked = rng.sample(range(len(self.product_ids)), rng.randint(1, 3))
        return f"cust-{rng.randrange(CUSTOMERS)}", [(i, rng.randint(1, 3)) for i in picked]

    def command(self) -> PlaceOrder:
        customer, lines = self._pick()
        return PlaceOrder(
            customer_id=customer,
            lines=tuple(LineRequest(product_id=self.product_ids[i], quantity=q) for i, q in lines),
        )

    def request(self) -> bytes:
        customer, lines = self._pick()
        body = ",".join(f'{{"product_id":"{self._text_ids[i]}","quantity":{q}}}' for i, q in lines)
        return http_load.post(
            "/orders", f'{{"customer_id":"{customer}","lines":[{body}]}}'.encode()
        )


async def seed_products(pool: asyncpg.Pool, count: int = PRODUCTS) -> list[uuid.UUID]:
    """`count` products with plenty of stock, created by the app's own handler (so the log
    and the read model have them)."""
    meta = EventMetadata(correlation_id="bench-seed")

    async def one(i: int) -> uuid.UUID:
        cmd = CreateProduct(
            sku=f"BENCH-{i:05d}", name=f"Bench product {i}", price_cents=100 + i, stock=_STOCK
        )
        async with pool.acquire() as conn, conn.transaction():
            return (await create_product(conn, cmd, meta)).product_id

    ids: list[uuid.UUID] = []
    for start in range(0, count, 50):
        ids += await asyncio.gather(*(one(i) for i in range(start, min(start + 50, count))))
    return ids


@dataclass
class PlacedOrders:
    """Order ids and positions taken from 201 answers, with when each answer arrived."""

    ids: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)

    def on_response(self, status: int, body: bytes, at: float) -> None:
        if status == 201:
            placed = _decode_placed(body)
            self.ids.append(placed.order_id)
            self.positions.append(placed.position)
            self.answered_at.append(at)


async def place_orders_http(
    port: http_load.Ports, orders: Orders, duration_s: float
) -> tuple[LoadResult, PlacedOrders]:
    placed = PlacedOrders()
    result = await http_load.closed_loop(
        "127.0.0.1", port, CONNECTIONS, duration_s, orders.request, placed.on_response
    )
    return result, placed


async def place_orders_direct(dsn: str, orders: Orders, duration_s: float) -> LoadResult:
    """The handler without HTTP: its transaction exactly as `_run_once` runs it for a POST
    without Idempotency-Key, on a pool of CONNECTIONS, CONNECTIONS workers."""
    pool = await asyncpg.create_pool(dsn, min_size=CONNECTIONS, max_size=CONNECTIONS)
    assert pool is not None
    result = LoadResult()
    cpu0, started = time.process_time(), time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        while (begun := time.perf_counter()) < deadline:
            cmd = orders.command()
            meta = EventMetadata(correlation_id=uuid.uuid4().hex)
            async with pool.acquire() as conn, conn.transaction():
                await place_order(conn, cmd, meta)
            result.latencies.append(time.perf_counter() - begun)
            result.statuses[201] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    finally:
        result.wall_s = time.perf_counter() - started
        result.cpu_s = time.process_time() - cpu0
        await pool.close()
    return result


class PositionWatch:
    """Records when each applied position first became visible to a reader of the app.

    One long poll at a time: `GET <path>?after=<last seen + 1>` answers as soon as the app has
    applied a position past the last one seen (the read-your-writes path users take), and its
    `X-Read-Position` says which. So every batch the projector stores is seen within one
    request's round trip, at the cost of one read by `_id` per batch (polling `meta` every few
    milliseconds instead would load the read store that is being measured)."""

    def __init__(self, port: int, path: str) -> None:
        self._port, self._path = port, path
        self.seen_at: list[float] = []
        self.positions: list[int] = []
        self._changed = asyncio.Event()

    async def run(self) -> None:
        connection = await http_load.Connection.open("127.0.0.1", self._port)
        try:
            while True:
                after = self.positions[-1] + 1 if self.positions else 1
                request = http_load.get(f"{self._path}?after={after}")
                _, head, _ = await connection.exchange(request)
                seen_at = time.perf_counter()
                position = http_load.header_int(head, b"x-read-position")
                if not self.positions or position > self.positions[-1]:
                    self.positions.append(position)
                    self.seen_at.append(seen_at)
                    self._changed.set()
        finally:
            await connection.close()

    async def wait_visible(self, position: int, within_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while self.visible_at(position) is None:
                    self._changed.clear()
                    await self._changed.wait()

    def visible_at(self, position: int) -> float | None:
        index = bisect.bisect_left(self.positions, position)
        return self.seen_at[index] if index < len(self.seen_at) else None


class _Streamed(msgspec.Struct):
    stream_id: str


class BrokerWatch:
    """When each order's event reached the broker's consumers: a side queue (exclusive,
    auto-deleted, no acks) bound to the app's exchange for `OrderPlaced` alone, the first of an
    order's events (its `StockReserved` ones follow it in the same publish). It splits the
    commit-to-visible lag into the relay's part (answer until the broker delivers the event) and
    the rest (the projector's). One event of the ~3 an order makes: bound to all of them, the
    broker's extra deliveries and their decoding here took ~0.1 of a core at half the maximum,
    on a machine the lag run already keeps nearly busy (docs/benchmarks.md)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.arrived: dict[str, float] = {}  # by order id
        self._decode = msgspec.json.Decoder(_Streamed).decode

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[BrokerWatch]:
        connection = await connect_broker(self._settings)
        try:
            channel = await connection.channel()
            # idempotent, as the app's own: a watch started before the app declared its
            # exchange would otherwise fail to bind (NOT_FOUND)
            await declare_topology(channel, self._settings)
            queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).queue
            assert queue is not None
            placed = routing_key("OrderPlaced")
            await channel.queue_bind(queue, self._settings.exchange, routing_key=placed)
            await channel.basic_consume(queue, self._on_message, no_ack=True)
            yield self
        finally:
            await connection.close()

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        self.arrived[self._decode(message.body).stream_id] = time.perf_counter()


@dataclass
class SteadyRun:
    load: LoadResult
    lags_s: list[float]
    never_visible: int
    rss_mib: list[tuple[float, float]]  # (seconds since start, MiB)
    peak_mib: float
    cores: dict[str, float]  # CPU seconds per wall second: the app, the read store, the services
    machine_busy: float  # cores of the whole machine busy meanwhile (every process on it)
    relay_s: list[float]  # per order: from its answer until the broker delivered its OrderPlaced
    fsync_s: list[float]  # the disk's fsyncs meanwhile (bench/disk.py)


async def steady_rate(
    port: http_load.Ports, app: Process, store: LocalStore | None, settings: Settings,
    orders: Orders, rate: float, duration_s: float, tail_s: float,
    watch_port: int | None = None, others: dict[str, int] | None = None,
) -> SteadyRun:  # fmt: skip
    """Open-loop orders at `rate`: the lag from each 201 until the read model has applied its
    position (and until the broker delivered it), the app's RSS sampled every 0.5 s, and the
    CPU the app and the read store (when started here) used and the disk's fsync latency
    (bench/disk.py) while the orders came. An order still invisible `tail_s` after the run
    counts with the lag it had by then (a lower bound) and in `never_visible`. Several ports
    spread the orders over replicas; `watch_port` reads the position from the one whose
    projector is active (default: the first port), `others` names further processes whose CPU
    to report."""
    watch_at = watch_port or http_load.port_list(port)[0]
    watch = PositionWatch(watch_at, f"/products/{orders.product_ids[0]}")
    delivered = BrokerWatch(settings)
    placed = PlacedOrders()
    rss: list[tuple[float, float]] = []
    started = time.perf_counter()

    async def sample_memory() -> None:
        while app.popen.poll() is None:
            rss.append((time.perf_counter() - started, memory_kib(app.pid)["VmRSS"] / 1024))
            await asyncio.sleep(0.5)

    pids = {"app": app.pid} | ({"read store": store.pid} if store else {}) | (others or {})
    watching = asyncio.create_task(watch.run())
    sampling = asyncio.create_task(sample_memory())
    try:
        async with delivered.watching():
            with FsyncProbe(store.storage if store else None) as disk:
                load, cores, busy = await _orders_at(rate, duration_s, port, orders, placed, pids)
            await watch.wait_visible(max(placed.positions, default=0), within_s=tail_s)
        gave_up = time.perf_counter()
    finally:
        for task in (watching, sampling):
            task.cancel()
        await asyncio.gather(watching, sampling, return_exceptions=True)
    lags: list[float] = []
    relay: list[float] = []
    never = 0
    answers = zip(placed.ids, placed.positions, placed.answered_at, strict=True)
    for order_id, position, answered in answers:
        visible = watch.visible_at(position)
        never += visible is None
        lags.append(max(0.0, (gave_up if visible is None else visible) - answered))
        if order_id in delivered.arrived:
            relay.append(max(0.0, delivered.arrived[order_id] - answered))
    if app.popen.poll() is not None:
        raise RuntimeError(f"the app exited during the run:\n{app.output()[-4000:]}")
    peak = memory_kib(app.pid)["VmHWM"] / 1024
    return SteadyRun(load, lags, never, rss, peak, cores, busy, relay, disk.latencies_s)


async def _orders_at(
    rate: float, duration_s: float, port: http_load.Ports, orders: Orders, placed: PlacedOrders,
    pids: dict[str, int],
) -> tuple[LoadResult, dict[str, float], float]:  # fmt: skip
    """The open-loop run, the cores each of `pids` and each service on this machine
    (PostgreSQL, RabbitMQ: `CpuUse`) used meanwhile, and how many of the machine's cores were
    busy (all processes, this one too)."""
    with CpuUse(pids) as cpu:
        load = await http_load.open_loop(
            "127.0.0.1", port, rate, duration_s, orders.request, placed.on_response
        )
    used = cpu.processes | cpu.services
    return load, {name: s / load.wall_s for name, s in used.items()}, cpu.machine_s / load.wall_s


async def get_orders(port: int, order_ids: list[str], duration_s: float) -> LoadResult:
    rng = random.Random(11)  # noqa: S311 - a load shape, not a secret
    requests = [http_load.get(f"/orders/{order_id}") for order_id in order_ids]
    return await http_load.closed_loop(
        "127.0.0.1", port, CONNECTIONS, duration_s, lambda: rng.choice(requests)
    )
