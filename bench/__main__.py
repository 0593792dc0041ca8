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
from pymongo.asynchronous.database import AsyncDatabase

from bench import http_load, rebuild, report, scenarios
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
    relay_events: int
    sustain_s: float  # the second lag run, at a rate the read store keeps up with


QUICK = Plan(True, 2, 6, 20, 0.25, 5, 20, 5, 8_000, 10_000, 8)
FULL = Plan(False, 5, 30, 300, 0.2, 10, 120, 20, 60_000, 50_000, 60)


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
        meta = await db["meta"].find_one({"_id": "projection"})
        applied = int(meta["position"]) if meta else 0
        if applied >= head or time.monotonic() > deadline:
            return max(0, head - applied)
        await asyncio.sleep(0.05)


async def _drain_rate(
    pool: asyncpg.Pool, db: AsyncDatabase[dict[str, Any]], within_s: float
) -> tuple[int, float | None]:
    """Like _catch_up, plus the projector's apply rate while it drained the backlog (events/s;
    None when there was nothing to drain): its sustainable rate on this read store."""
    meta = await db["meta"].find_one({"_id": "projection"})
    applied_from, started = (int(meta["position"]) if meta else 0), time.monotonic()
    behind = await _catch_up(pool, db, within_s)
    meta = await db["meta"].find_one({"_id": "projection"})
    drained, elapsed = (
        (int(meta["position"]) if meta else 0) - applied_from,
        time.monotonic() - started,
    )
    return behind, (drained / elapsed if drained > 1000 and elapsed > 0.5 else None)


async def _sustainable(
    pool: asyncpg.Pool, db: AsyncDatabase[dict[str, Any]], orders: scenarios.Orders, app: Process,
    port: int, plan: Plan, out: dict[str, Any], drain_rate: float | None,
) -> None:  # fmt: skip
    """Commit-to-visible lag at 70 % of the rate the projector drained at (at most half the
    maximum): the pipeline's own latency when the read store is not the bottleneck."""
    events = await pool.fetchval("SELECT count(*) FROM events")
    placed = max(1, await pool.fetchval("SELECT count(*) FROM orders"))
    half = out["place_order"]["http_per_s"] / 2
    rate = half if drain_rate is None else min(half, 0.7 * drain_rate / (events / placed))
    progress(f"steady {rate:.0f} orders/s for {plan.sustain_s:.0f} s (read store's pace)")
    run = await scenarios.steady_rate(port, app, db, orders, rate, plan.sustain_s, plan.tail_s)
    lags = run.lags_s
    out["lag_sustainable"] = {
        "rate_per_s": round(rate, 1), "achieved_per_s": round(run.load.rate, 1),
        "projector_drain_events_per_s": None if drain_rate is None else round(drain_rate),
        "events_per_order": round(events / placed, 2), "orders": run.load.ok,
        "never_visible": run.never_visible, "p50_ms": _ms(http_load.percentile(lags, 50)),
        "p99_ms": _ms(http_load.percentile(lags, 99)), "max_ms": _ms(max(lags, default=0.0)),
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


async def _steady(
    pool: asyncpg.Pool, db: AsyncDatabase[dict[str, Any]], orders: scenarios.Orders, app: Process,
    port: int, plan: Plan, out: dict[str, Any],
) -> None:  # fmt: skip
    rate = out["place_order"]["http_per_s"] / 2
    progress("waiting for the read model to catch up")
    behind = await _catch_up(pool, db, plan.catch_up_s)
    progress(f"steady {rate:.0f} orders/s for {plan.steady_s:.0f} s ({behind} events behind)")
    run = await scenarios.steady_rate(port, app, db, orders, rate, plan.steady_s, plan.tail_s)
    lags, load = run.lags_s, run.load
    out["lag"] = {
        "rate_per_s": round(rate, 1), "achieved_per_s": round(load.rate, 1),
        "orders": load.ok, "never_visible": run.never_visible, "behind_at_start": behind,
        "p50_ms": _ms(http_load.percentile(lags, 50)),
        "p99_ms": _ms(http_load.percentile(lags, 99)),
        "max_ms": _ms(max(lags, default=0.0)), "http_p50_ms": _ms(load.percentile(50)),
        "http_p99_ms": _ms(load.percentile(99)), "poll_interval_ms": 3, "tail_s": plan.tail_s,
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
    bare, bare_port = await st.serve("bench.bare_app")
    progress("GET /orders/{id}: app, then bare Starlette")
    results: dict[str, LoadResult] = {}
    for name, target in (("app", port), ("bare", bare_port)):
        await scenarios.get_orders(target, ids, 1.0)
        results[name] = await scenarios.get_orders(target, ids, plan.read_s)
        if results[name].ok == 0:
            raise RuntimeError(f"GET /orders/{{id}} on {name}: {dict(results[name].statuses)}")
    bare.stop()
    app, raw = results["app"], results["bare"]
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
        await _steady(pool, db, orders, app, port, plan, out)
        progress("waiting for the read model to catch up")
        out["lag"]["behind_after_run"], drain_rate = await _drain_rate(pool, db, plan.catch_up_s)
        await _sustainable(pool, db, orders, app, port, plan, out, drain_rate)
        await _read_side(st, port, ids, plan, out)
        app.stop()  # the rebuild and the relay drain run on a quiet machine
        progress("read-model rebuild from the log, then the raw insert ceiling")
        log = await st.scratch_database("log")
        await rebuild.copy_log(st.settings.database_url, log, plan.rebuild_events)
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
