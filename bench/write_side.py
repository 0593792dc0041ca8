"""Place order over HTTP against the app, beside two figures measured in the same run on
copies of the same seeded products while the app is idle: pgbench running the handler's own
SQL (the ceiling; bench.pgbench_ceiling) and the handler itself on an asyncpg pool in the
bench process (what asyncpg and the handler's Python leave of it)."""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from bench import http_load, pgbench_ceiling, scenarios
from bench.plan import Plan
from bench.report import progress
from bench.stack import CpuUse, Stack
from bench.steady import Running, generator, ms


async def _ceilings(
    st: Stack, r: Running, plan: Plan
) -> tuple[http_load.LoadResult, pgbench_ceiling.PgbenchResult, str]:
    """The handler on asyncpg and pgbench, each on its own copy of the same seeded products,
    the app idle meanwhile; and the pgbench script."""
    handler_dsn = await st.scratch_database("handler")
    pool = await asyncpg.create_pool(handler_dsn, min_size=1, max_size=16)
    assert pool is not None
    async with pool:
        same = scenarios.Orders(await scenarios.seed_products(pool))
    sql_dsn = await st.scratch_copy(handler_dsn, "pgbench")
    products = await pgbench_ceiling.number_products(sql_dsn)
    behind = await r.catch_up(plan.catch_up_s)  # the projector applying the app's seed
    progress(f"the ceilings ({behind} events behind): the handler on asyncpg, then pgbench")
    handler = await scenarios.place_orders_direct(handler_dsn, same, plan.write_s)
    script = await pgbench_ceiling.script(products, scenarios.CUSTOMERS)
    sql = await pgbench_ceiling.run(sql_dsn, script, scenarios.CONNECTIONS, plan.write_s)
    return handler, sql, script


async def place_order(st: Stack, r: Running, plan: Plan, out: dict[str, Any]) -> list[str]:
    """The place-order figures into `out`: the two ceilings first, on a quiet machine, then
    over HTTP with the app's relay and projector running. The ids of the orders placed."""
    handler, sql, script = await _ceilings(st, r, plan)
    progress(f"{sql.tps:.0f} transactions/s; place order over HTTP")
    await http_load.closed_loop("127.0.0.1", r.ports, 32, plan.warmup_s, r.orders.request)
    with CpuUse(_processes(r)) as cpu:
        http, placed = await scenarios.place_orders_http(r.ports, r.orders, plan.write_s)
    if http.ok == 0:
        raise RuntimeError(f"no order placed: {dict(http.statuses)}\n{r.app.output()[-3000:]}")
    progress(f"{http.rate:.0f} orders/s over HTTP")
    out["place_order"] = {
        "http_per_s": round(http.rate, 1), "http_p50_ms": ms(http.percentile(50)),
        "http_p99_ms": ms(http.percentile(99)), "http_non_2xx": http.statuses.total() - http.ok,
        "http_errors": http.errors, "ceiling_per_s": round(sql.tps, 1),
        "ceiling_p50_ms": ms(sql.percentile(50)), "ceiling_p99_ms": ms(sql.percentile(99)),
        "ratio": round(http.rate / sql.tps, 3), "handler_per_s": round(handler.rate, 1),
        "handler_p50_ms": ms(handler.percentile(50)),
        "handler_p99_ms": ms(handler.percentile(99)),
        "handler_ratio": round(handler.rate / sql.tps, 3),
        "http_of_handler": round(http.rate / handler.rate, 3), "duration_s": plan.write_s,
        "pgbench_transactions": sql.transactions, "pgbench_script": script,
        **_cpu_per_order(cpu, http.ok, sql),
    }  # fmt: skip
    out["load_generator"] = {"place order": generator(http), "pgbench": {
        "cpu_s": round(sql.cpu_s, 2), "wall_s": round(sql.wall_s, 2),
        "cpu_s_per_s": round(sql.cpu_s / sql.wall_s, 3),
    }}  # fmt: skip
    return placed.ids


def _processes(r: Running) -> dict[str, int]:
    """The processes of the run by name: the app's, the read store's when started here, and
    the bench's own (the load generator)."""
    store = {"read store": r.store.pid} if r.store else {}
    return {"app": r.app.pid, **r.others, **store, "bench": os.getpid()}


def _cpu_per_order(cpu: CpuUse, orders: int, sql: pgbench_ceiling.PgbenchResult) -> dict[str, Any]:
    """The CPU one order cost the whole machine over HTTP (and each process and service of
    it), beside what one transaction of pgbench cost it: on a machine whose cores are all
    busy in both runs, their ratio is about the ratio of the rates."""
    per_order = _ms_each(cpu.machine_s, orders)
    per_transaction = _ms_each(sql.machine_cpu_s, sql.transactions)
    return {
        "http_cpu_ms": round(per_order, 3), "ceiling_cpu_ms": round(per_transaction, 3),
        "cpu_ratio": round(per_transaction / per_order, 3) if per_order else None,
        "http_cpu_ms_processes": _ms_each_by(cpu.processes, orders),
        "http_cpu_ms_services": _ms_each_by(cpu.services, orders),
    }  # fmt: skip


def _ms_each(seconds: float, count: int) -> float:
    return seconds / max(1, count) * 1000


def _ms_each_by(seconds: dict[str, float], count: int) -> dict[str, float]:
    return {name: round(_ms_each(s, count), 3) for name, s in seconds.items()}
