"""The place-order ceiling that is PostgreSQL's limit: pgbench running one place-order's SQL.

The script is written from what `app.commands.orders.place_order` itself sends: the handler
runs on a connection that records its statements and their arguments (`_Recorder`), the
arguments are rendered as literals, and the values that vary per order become pgbench
variables. So the ceiling cannot drift from the handler's SQL: whatever the handler sends, the
script sends, wrapped in BEGIN/COMMIT like `conn.transaction()`.
"""

from __future__ import annotations

import asyncio
import re
import resource
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from app.commands.order_rules import LineRequest, PlaceOrder
from app.commands.orders import place_order
from app.commands.outbox import EventMetadata
from bench import http_load
from bench.stack import CpuUse

# Product ids pgbench can name: this prefix and 12 decimal digits (valid hex), first 10**11.
_ID_PREFIX = "00000000-0000-4000-8000-"
_FIRST_ID = 10**11
_VERSION_STRIDE = 20_000_000  # per client: product versions no two clients can both write

# Values the handler is fed or computes; each stands for a pgbench variable in the script.
_PRODUCT_A = uuid.UUID("feedface-0000-4000-8000-00000000000a")
_PRODUCT_B = uuid.UUID("feedface-0000-4000-8000-00000000000b")
_CUSTOMER = "cust-feedface"
_VERSION = 1_987_654_320  # so the new version the handler writes is 1987654321


class _Recorder:
    """Stands in for the connection the handler runs on: records what it sends, answers the
    product lock with `rows` and the event append with one position."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.sent.append((sql, args))
        return self.rows if len(self.sent) == 1 else [{"position": 1}]


def _literal(value: Any) -> str:
    """`value` as an SQL literal of the type asyncpg would have sent it as."""
    if isinstance(value, list):
        return f"ARRAY[{', '.join(_literal(v) for v in value)}]"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return f"'{value}'::uuid"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no literal for {type(value).__name__} {value!r}")


def _with_literals(sql: str, args: tuple[Any, ...]) -> str:
    return re.sub(r"\$(\d+)", lambda m: _literal(args[int(m.group(1)) - 1]), sql).strip()


async def _recorded() -> tuple[list[str], dict[str, str]]:
    """The handler's statements for one two-line order, with literal arguments; and which
    literal text stands for which pgbench variable."""
    stock = 10**11
    rows = [
        {"product_id": p, "sku": f"BENCH-{i:05d}", "name": f"Bench product {i}",
         "price_cents": 100 + i, "stock": stock, "version": _VERSION}
        for i, p in enumerate((_PRODUCT_A, _PRODUCT_B))
    ]  # fmt: skip
    cmd = PlaceOrder(
        customer_id=_CUSTOMER,
        lines=(LineRequest(product_id=_PRODUCT_A, quantity=2),
               LineRequest(product_id=_PRODUCT_B, quantity=2)),
    )  # fmt: skip
    conn = _Recorder(rows)
    result = await place_order(conn, cmd, EventMetadata(correlation_id=uuid.uuid4().hex))
    placed_at = next(a for _, args in conn.sent for a in args if isinstance(a, datetime))
    variables = {
        str(_PRODUCT_A): f"{_ID_PREFIX}:p1", str(_PRODUCT_B): f"{_ID_PREFIX}:p2",
        _CUSTOMER: "cust-:customer", str(result.order_id): ":order_id",
        str(_VERSION + 1): ":version", _literal(placed_at): "now()",
    }  # fmt: skip
    return [_with_literals(sql, args) for sql, args in conn.sent], variables


def _substituted(statement: str, variables: dict[str, str]) -> str:
    for text, variable in variables.items():
        statement = statement.replace(text, variable)
    return statement


async def script(products: int, customers: int) -> str:
    """The pgbench script of one place-order: two distinct random products among the
    `products` numbered by `number_products`, a random customer, a new order id from
    gen_random_uuid(), product versions unique per client (`-D n=0`)."""
    statements, variables = await _recorded()
    missing = [t for t in variables if not any(t in s for s in statements)]
    if missing:
        raise RuntimeError(f"the handler's SQL no longer carries {missing}: update the bench")
    body = [_substituted(s, variables) for s in statements]
    return "\n".join([
        f"\\set i random(0, {products - 1})",
        f"\\set j (:i + random(1, {products - 1})) % {products}",
        f"\\set p1 {_FIRST_ID} + :i",
        f"\\set p2 {_FIRST_ID} + :j",
        f"\\set customer random(0, {customers - 1})",
        "\\set n :n + 1",
        f"\\set version 2 + :client_id * {_VERSION_STRIDE} + :n",
        "BEGIN \\; SELECT gen_random_uuid() AS order_id \\gset",
        *(f"{s};" for s in body),
        "COMMIT;",
        "",
    ])  # fmt: skip


async def number_products(dsn: str) -> int:
    """Give the products of the database at `dsn` the ids the script draws (in sku order, so
    product i of the seed is product i of the script); how many there are."""
    conn = await asyncpg.connect(dsn)
    try:
        status = await conn.execute(
            "UPDATE products AS p SET product_id = ($1 || (r.n + $2)::text)::uuid"
            " FROM (SELECT product_id, row_number() OVER (ORDER BY sku) - 1 AS n"
            " FROM products) AS r WHERE p.product_id = r.product_id",
            _ID_PREFIX,
            _FIRST_ID,
        )
    finally:
        await conn.close()
    return int(status.split()[-1])


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    cpu_s: float  # pgbench's own CPU time (the load generator's, for the table)
    wall_s: float
    latencies: list[float] = field(default_factory=list)  # seconds, one per transaction
    # the whole machine's busy CPU meanwhile: pgbench, its PostgreSQL backends, anything else
    machine_cpu_s: float = 0.0

    def percentile(self, q: float) -> float:
        return http_load.percentile(self.latencies, q)


async def _pgbench(*args: str) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            "pgbench", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        raise RuntimeError("the bench needs pgbench (PostgreSQL's client tools)") from None


def _children_cpu_s() -> float:
    """CPU time of the bench's children that have ended (the app's are still running)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _latencies(directory: Path) -> list[float]:
    """Seconds per transaction from pgbench's per-transaction logs (`-l`) in `directory`."""
    return [
        int(line.split()[2]) / 1e6
        for log in directory.glob("log.*")
        for line in log.read_text(encoding="ascii").splitlines()
    ]


async def run(dsn: str, text: str, clients: int, duration_s: float) -> PgbenchResult:
    """pgbench -c `clients` -j 2 -T `duration_s` of the script `text` on `dsn` (simple query
    protocol: literal arguments), with a per-transaction log for the latencies. Raises
    RuntimeError when a transaction failed."""
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as tmp:
        directory = Path(tmp)
        (directory / "place_order.sql").write_text(text, encoding="utf-8")
        children, started = _children_cpu_s(), time.perf_counter()
        with CpuUse({}) as machine:
            process = await _pgbench(
                "-n", "-f", str(directory / "place_order.sql"), "-c", str(clients), "-j", "2",
                "-T", str(max(1, round(duration_s))), "-D", "n=0",
                "-l", "--log-prefix", str(directory / "log"), dsn,
            )  # fmt: skip
            out, err = await process.communicate()
        cpu_s, wall_s = _children_cpu_s() - children, time.perf_counter() - started
        report = out.decode()
        failed = re.search(r"number of failed transactions: (\d+)", report)
        if process.returncode != 0 or failed is None or int(failed.group(1)):
            raise RuntimeError(f"pgbench failed ({process.returncode}):\n{report}{err.decode()}")
        latencies = _latencies(directory)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", report)
    assert tps is not None, report
    return PgbenchResult(
        float(tps.group(1)), len(latencies), cpu_s, wall_s, latencies, machine.machine_s
    )
