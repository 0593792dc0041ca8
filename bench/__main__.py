"""`python -m bench` (`make bench`): every figure beside its ceiling, measured in one run.

Brings up a fresh stack (bench.stack), runs the scenarios, removes everything it made (also
on failure or Ctrl-C), then prints one table, writes bench/results/latest.json and ends with
one `ratios:` line. BENCH_QUICK=1 runs a short version (under two minutes).
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvloop
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.contracts.readmodel import applied_position
from app.plumbing.localstore import LocalStore
from app.plumbing.settings import Settings
from bench import http_load, readstore, rebuild, report, scenarios
from bench.http_load import LoadResult
from bench.relay_drain import run_bench
from bench.stack import Process, Stack, stack


@dataclass(frozen=True)
class Plan:
    quick: bool
    warmup_s: float
    write_s: float
    steady_s: float
    growth_from: float  # RSS growth is measured from this fraction of the steady run to its end
    tail_s: float  # how long after the steady run an order may still become visible
    catch_up_s: float  # the longest wait for the read model between scenarios
    read_s: float
    rebuild_events: int
    readstore_events: int
    relay_events: int
    sustain_s: float  # the lag run at a rate the read store keeps up with


QUICK = Plan(True, 2, 6, 20, 0.25, 5, 20, 5, 8_000, 8_000, 20_000, 8)
FULL = Plan(False, 5, 30, 300, 0.2, 10, 120, 20, 60_000, 20_000, 50_000, 60)


@dataclass(frozen=True)
class Running:
    """The app under test and what the scenarios reach it and its stores with."""

    pool: asyncpg.Pool
    db: AsyncDatabase[dict[str, Any]]
    orders: scenarios.Orders
    app: Process
    port: int
    store: LocalStore | None  # the read store's server, when the bench started it
    settings: Settings

    async def steady_rate(
        self, rate: float, duration_s: float, tail_s: float
    ) -> scenarios.SteadyRun:
        return await scenarios.steady_rate(
            self.port, self.app, self.store, self.settings, self.orders, rate, duration_s, tail_s
        )


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _gen(load: LoadResult) -> dict[str, float]:
    return {"cpu_s": round(load.cpu_s, 2), "wall_s": round(load.wall_s, 2),
            "cpu_s_per_s": round(load.cpu_per_wall, 3)}  # fmt: skip


async def _catch_up(pool: asyncpg.Pool, db: AsyncDatabase[dict[str, Any]], within_s: float) -> int:
    """Wait until the read model has applied the whole log, at most `within_s`; the number of
    events it was still behind then (0: caught up)."""
    head: int = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
    deadline = time.monotonic() + within_s
    while True:
        applied = await applied_position(db)
        if applied >= head or time.monotonic() > deadline:
            return max(0, head - applied)
        await asyncio.sleep(0.05)


async def _drain_rate(
    pool: asyncpg.Pool, db: AsyncDatabase[dict[str, Any]], within_s: float
) -> tuple[int, float | None]:
    """Like _catch_up, plus the projector's apply rate while it drained the backlog (events/s;
    None when there was nothing to drain): its sustainable rate on this read store."""
    applied_from, started = await applied_position(db), time.monotonic()
    behind = await _catch_up(pool, db, within_s)
    drained, elapsed = await applied_position(db) - applied_from, time.monotonic() - started
    return behind, (drained / elapsed if drained > 1000 and elapsed > 0.5 else None)


def _lag(rate: float, run: scenarios.SteadyRun) -> dict[str, Any]:
    """The figures of one steady run: the lag, the relay's part of it, the cores used."""
    lags, relay = run.lags_s, run.relay_s
    return {
        "rate_per_s": round(rate, 1), "achieved_per_s": round(run.load.rate, 1),
        "orders": run.load.ok, "never_visible": run.never_visible,
        "p50_ms": _ms(http_load.percentile(lags, 50)),
        "p99_ms": _ms(http_load.percentile(lags, 99)), "max_ms": _ms(max(lags, default=0.0)),
        "relay_p50_ms": _ms(http_load.percentile(relay, 50)),
        "relay_p99_ms": _ms(http_load.percentile(relay, 99)),
        "cores": {name: round(cores, 2) for name, cores in run.cores.items()},
    }  # fmt: skip


async def _sustainable(r: Running, plan: Plan, out: dict[str, Any]) -> None:
    """Commit-to-visible lag at a quarter of the rate the read store absorbs the projector's
    writes by themselves (at most half the maximum): the pipeline's own latency where the read
    store, sharing the machine with everything else, keeps up."""
    events = await r.pool.fetchval("SELECT count(*) FROM events")
    placed = max(1, await r.pool.fetchval("SELECT count(*) FROM orders"))
    rate = min(out["place_order"]["http_per_s"] / 2, out["read_store"]["orders_per_s"] / 4)
    progress("waiting for the read model to catch up")
    behind = await _catch_up(r.pool, r.db, plan.catch_up_s)
    progress(f"steady {rate:.0f} orders/s for {plan.sustain_s:.0f} s (the read store's pace)")
    run = await r.steady_rate(rate, plan.sustain_s, plan.tail_s)
    out["lag_sustainable"] = _lag(rate, run) | {
        "behind_at_start": behind, "events_per_order": round(events / placed, 2),
    }  # fmt: skip


async def _read_store(
    st: Stack, mongo: AsyncMongoClient[dict[str, Any]], log: str, plan: Plan, out: dict[str, Any]
) -> None:
    batch_size = st.settings.projector_batch_size
    progress(f"the read store's capacity: raw writes of {plan.readstore_events} events")
    figures = await readstore.run(
        log, mongo, st.scratch_mongo_db("store"), plan.readstore_events, batch_size
    )
    out["read_store"] = {
        "events": figures.events, "orders": figures.orders, "batch_size": batch_size,
        "events_per_s": round(figures.events_per_s, 1),
        "orders_per_s": round(figures.orders_per_s, 1),
    }  # fmt: skip


async def _write_side(
    st: Stack, pool: asyncpg.Pool, plan: Plan, out: dict[str, Any]
) -> tuple[scenarios.Orders, list[str], Process, int]:
    progress("seeding products")
    orders = scenarios.Orders(await scenarios.seed_products(pool))
    app, port = await st.serve("app", "serve")
    progress(f"app pid {app.pid} on :{port}; place order over HTTP")
    await http_load.closed_loop("127.0.0.1", port, 32, plan.warmup_s, orders.request)
    http, placed = await scenarios.place_orders_http(port, orders, plan.write_s)
    if http.ok == 0:
        raise RuntimeError(f"no order placed: {dict(http.statuses)}\n{app.output()[-3000:]}")
    progress(f"{http.rate:.0f} orders/s; the ceiling: the handler on asyncpg, own database")
    dsn = await st.scratch_database("ceiling")
    ceiling_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=16)
    assert ceiling_pool is not None
    async with ceiling_pool:
        same = scenarios.Orders(await scenarios.seed_products(ceiling_pool))
    direct = await scenarios.place_orders_direct(dsn, same, plan.write_s)
    out["place_order"] = {
        "http_per_s": round(http.rate, 1), "http_p50_ms": _ms(http.percentile(50)),
        "http_p99_ms": _ms(http.percentile(99)), "http_non_2xx": http.statuses.total() - http.ok,
        "http_errors": http.errors, "ceiling_per_s": round(direct.rate, 1),
        "ceiling_p50_ms": _ms(direct.percentile(50)), "ceiling_p99_ms": _ms(direct.percentile(99)),
        "ratio": round(http.rate / direct.rate, 3), "duration_s": plan.write_s,
    }  # fmt: skip
    out["load_generator"] = {"place order": _gen(http)}
    return orders, placed.ids, app, port


async def _steady(r: Running, plan: Plan, out: dict[str, Any]) -> None:
    rate = out["place_order"]["http_per_s"] / 2
    progress("waiting for the read model to catch up")
    behind = await _catch_up(r.pool, r.db, plan.catch_up_s)
    progress(f"steady {rate:.0f} orders/s for {plan.steady_s:.0f} s ({behind} events behind)")
    run = await r.steady_rate(rate, plan.steady_s, plan.tail_s)
    load = run.load
    out["lag"] = _lag(rate, run) | {
        "behind_at_start": behind, "http_p50_ms": _ms(load.percentile(50)),
        "http_p99_ms": _ms(load.percentile(99)), "tail_s": plan.tail_s,
    }  # fmt: skip
    start = next(m for t, m in run.rss_mib if t >= plan.growth_from * plan.steady_s)
    end, every = run.rss_mib[-1][1], max(1, len(run.rss_mib) // 60)
    out["memory"] = {
        "duration_s": plan.steady_s, "peak_mib": round(run.peak_mib, 1),
        "rss_from_mib": round(start, 1), "rss_to_mib": round(end, 1),
        "growth_mib": round(end - start, 1),
        "growth_window": f"{plan.growth_from:.0%}..100% of the run",
        "samples": [(round(t), round(m, 1)) for t, m in run.rss_mib[::every]],
    }  # fmt: skip
    out["load_generator"]["steady rate"] = _gen(load)


async def _read_side(st: Stack, port: int, ids: list[str], plan: Plan, out: dict[str, Any]) -> None:
    """The app and the bare endpoint in turn, twice each, so that a machine getting busier or
    quieter during the scenario weighs on both alike."""
    bare, bare_port = await st.serve("bench.bare_app")
    progress("GET /orders/{id}: app and bare Starlette, in turn")
    targets = {"app": port, "bare": bare_port}
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for target in targets.values():
        await scenarios.get_orders(target, ids, 1.0)
    for _ in range(2):
        for name, target in targets.items():
            result = await scenarios.get_orders(target, ids, plan.read_s / 2)
            if result.ok == 0:
                raise RuntimeError(f"GET /orders/{{id}} on {name}: {dict(result.statuses)}")
            results[name].append(result)
    bare.stop()
    app, raw = (LoadResult.combined(results[name]) for name in targets)
    out["get_order"] = {
        "app_per_s": round(app.rate, 1), "app_p99_ms": _ms(app.percentile(99)),
        "bare_per_s": round(raw.rate, 1), "bare_p99_ms": _ms(raw.percentile(99)),
        "app_non_2xx": app.statuses.total() - app.ok, "ratio": round(app.rate / raw.rate, 3),
    }  # fmt: skip
    out["load_generator"]["GET /orders/{id}"] = _gen(app)


async def run(plan: Plan) -> dict[str, Any]:
    current = asyncio.current_task()
    assert current is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
    out: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
    }
    async with stack() as st:
        pool = await asyncpg.create_pool(st.settings.database_url, min_size=1, max_size=16)
        assert pool is not None
        st.exits.push_async_callback(pool.close)
        mongo = st.mongo_client()
        st.exits.push_async_callback(mongo.close)
        db = mongo[st.settings.mongo_db]
        orders, ids, app, port = await _write_side(st, pool, plan, out)
        running = Running(pool, db, orders, app, port, st.store, st.settings)
        progress("waiting for the read model to catch up")
        out["get_order_behind_at_start"] = await _catch_up(pool, db, plan.catch_up_s)
        await _read_side(st, port, ids, plan, out)
        log = await st.scratch_database("log")
        await rebuild.copy_log(st.settings.database_url, log, plan.rebuild_events)
        await _read_store(st, mongo, log, plan, out)
        # The short run at the read store's pace first: after the long one at half the
        # maximum, the backlog can take longer to drain than any bound the bench waits.
        await _sustainable(running, plan, out)
        await _steady(running, plan, out)
        progress("waiting for the read model to catch up")
        out["lag"]["behind_after_run"], drain = await _drain_rate(pool, db, plan.catch_up_s)
        out["lag"]["projector_drain_events_per_s"] = None if drain is None else round(drain)
        app.stop()  # the rebuild and the relay drain run on a quiet machine
        progress("read-model rebuild from the log, then the raw insert ceiling")
        figures = await rebuild.run(
            log, mongo, st.scratch_mongo_db("rebuilt"), st.scratch_mongo_db("raw")
        )
        out["rebuild"] = {
            "events": figures.events, "documents": figures.documents,
            "rebuild_events_per_s": round(figures.rebuild_rate, 1),
            "raw_events_per_s": round(figures.raw_rate, 1), "ratio": round(figures.ratio, 3),
        }  # fmt: skip
    progress(f"relay drain of {plan.relay_events} events")
    out["relay"] = await run_bench(plan.relay_events)
    return out


def main() -> int:
    plan = QUICK if os.environ.get("BENCH_QUICK", "") not in ("", "0") else FULL
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(run(plan))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted; everything it made has been removed")
        return 130
    results["wall_s"] = round(time.monotonic() - started, 1)
    report.write(results)
    print(report.table(results))
    print(f"({results['mode']} run, {results['wall_s']} s; figures in {report.RESULTS})")
    print(report.ratios_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
