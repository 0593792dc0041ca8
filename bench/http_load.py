"""A minimal, low-overhead HTTP/1.1 keep-alive load generator on asyncio streams.

Closed loop: N connections, each sends its next request as soon as the previous answer is
read. Open loop: requests are due at a fixed rate whatever the answers do; latency is taken
from the moment a request was due, so a stalled server cannot hide its queue (no coordinated
omission). Only Content-Length framed answers are understood (all the app sends). The
generator reports its own CPU time next to the wall time, so it can be shown not to be the
bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

RequestFactory = Callable[[], bytes]
# one server's port, or several replicas' ports: the connections are spread over them in turn
Ports = int | Sequence[int]


def port_list(ports: Ports) -> list[int]:
    """`ports` as a list (one port: a list of it)."""
    return [ports] if isinstance(ports, int) else list(ports)


# status, body, the perf_counter time the answer was complete
ResponseHook = Callable[[int, bytes, float], None]


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def post(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class LoadResult:
    """What one load run measured: latencies in seconds, answers by status, own CPU use."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_per_wall(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    @classmethod
    def combined(cls, runs: list[LoadResult]) -> LoadResult:
        """Several runs as one: times, answers and latencies added up."""
        total = cls()
        for run in runs:
            total.wall_s += run.wall_s
            total.cpu_s += run.cpu_s
            total.latencies += run.latencies
            total.statuses += run.statuses
            total.errors += run.errors
        return total


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Connection:
    """One keep-alive connection; `request` sends raw bytes and reads one answer."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        self._reader, self._writer = reader, writer
        self.port = port

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, port)

    @classmethod
    async def open_spread(cls, host: str, ports: Ports, count: int) -> list[Connection]:
        """`count` connections, spread over `ports` in turn."""
        spread = port_list(ports)
        return [await cls.open(host, spread[i % len(spread)]) for i in range(count)]

    async def request(self, data: bytes) -> tuple[int, bytes]:
        status, _, body = await self.exchange(data)
        return status, body

    async def exchange(self, data: bytes) -> tuple[int, bytes, bytes]:
        """Send `data`, read one answer: its status, its head (status line and headers, as
        sent) and its body."""
        self._writer.write(data)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = header_int(head, b"content-length")
        body = await self._reader.readexactly(length) if length else b""
        return status, head, body

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def header_int(head: bytes, name: bytes) -> int:
    """The integer value of header `name` (lower case) in a response head; 0 when absent."""
    start = head.lower().find(b"\r\n" + name + b":")
    if start < 0:
        return 0
    end = head.index(b"\r\n", start + 2)
    return int(head[start + len(name) + 3 : end])


class _Run:
    """Book-keeping shared by the workers of one run."""

    def __init__(self, on_response: ResponseHook | None) -> None:
        self.result = LoadResult()
        self.on_response = on_response

    def record(self, status: int, body: bytes, due: float) -> None:
        now = time.perf_counter()
        self.result.latencies.append(now - due)
        self.result.statuses[status] += 1
        if self.on_response is not None:
            self.on_response(status, body, now)


async def closed_loop(
    host: str,
    port: Ports,
    connections: int,
    duration_s: float,
    make_request: RequestFactory,
    on_response: ResponseHook | None = None,
) -> LoadResult:
    """`connections` workers, each sending back to back until `duration_s` has passed."""
    run = _Run(on_response)
    opened = await Connection.open_spread(host, port, connections)
    cpu0, started = time.process_time(), time.perf_counter()
    deadline = started + duration_s

    async def worker(connection: Connection) -> None:
        while (due := time.perf_counter()) < deadline:
            try:
                status, body = await connection.request(make_request())
            except (OSError, asyncio.IncompleteReadError, ValueError):
                run.result.errors += 1
                return
            run.record(status, body, due)

    try:
        await asyncio.gather(*(worker(c) for c in opened))
    finally:
        run.result.wall_s = time.perf_counter() - started
        run.result.cpu_s = time.process_time() - cpu0
        for connection in opened:
            await connection.close()
    return run.result


async def open_loop(
    host: str,
    port: Ports,
    rate: float,
    duration_s: float,
    make_request: RequestFactory,
    on_response: ResponseHook | None = None,
    connections: int = 64,
) -> LoadResult:
    """One request due every 1/`rate` seconds for `duration_s`, on up to `connections`
    connections; a request waits for a free connection, and that wait counts as latency. Over
    several ports a request takes the connection idle longest, whichever replica it leads to
    (as a least-busy balancer would)."""
    run = _Run(on_response)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    opened = await Connection.open_spread(host, port, connections)
    for connection in opened:
        idle.put_nowait(connection)
    cpu0, started = time.process_time(), time.perf_counter()
    total = int(rate * duration_s)
    in_flight: set[asyncio.Task[None]] = set()

    broken: list[BaseException] = []

    async def one(due: float) -> None:
        connection = await idle.get()
        try:
            status, body = await connection.request(make_request())
        except (OSError, asyncio.IncompleteReadError, ValueError):
            run.result.errors += 1
            try:  # replace the broken connection; a server that refuses it ends the run
                connection = await Connection.open(host, connection.port)
                opened.append(connection)
            except OSError as exc:
                broken.append(exc)
                return
            idle.put_nowait(connection)
            return
        idle.put_nowait(connection)
        run.record(status, body, due)

    try:
        for i in range(total):
            if broken:
                raise ConnectionError(f"the server went away: {broken[0]!r}")
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        async with asyncio.timeout(30):
            await asyncio.gather(*in_flight)
    finally:
        for task in in_flight:
            task.cancel()
        run.result.wall_s = time.perf_counter() - started
        run.result.cpu_s = time.process_time() - cpu0
        for connection in opened:
            await connection.close()
    return run.result
