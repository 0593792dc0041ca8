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
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvloop
from pymongo import AsyncMongoClient

from bench import read_cache, readstore, rebuild, report, scenarios, steady, sustained, write_side
from bench.http_load import LoadResult
from bench.plan import FULL, QUICK, Plan
from bench.relay_drain import run_bench
from bench.report import progress
from bench.stack import Stack, stack
from bench.steady import Running


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


async def _read_side(st: Stack, port: int, ids: list[str], plan: Plan, out: dict[str, Any]) -> None:
    """The app and the bare endpoint in turn, `plan.read_rounds` times each, so that a machine
    getting busier or quieter during the scenario weighs on both alike."""
    bare, bare_port = await st.serve("bench.bare_app")
    progress("GET /orders/{id}: app and bare Starlette, in turn")
    targets = {"app": port, "bare": bare_port}
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for target in targets.values():
        await scenarios.get_orders(target, ids, 1.0)
    rounds = plan.read_rounds
    for _ in range(rounds):
        for name, target in targets.items():
            result = await scenarios.get_orders(target, ids, plan.read_s / rounds)
            if result.ok == 0:
                raise RuntimeError(f"GET /orders/{{id}} on {name}: {dict(result.statuses)}")
            results[name].append(result)
    bare.stop()
    app, raw = (LoadResult.combined(results[name]) for name in targets)
    out["get_order"] = {
        "app_per_s": round(app.rate, 1), "app_p99_ms": steady.ms(app.percentile(99)),
        "bare_per_s": round(raw.rate, 1), "bare_p99_ms": steady.ms(raw.percentile(99)),
        "app_non_2xx": app.statuses.total() - app.ok, "ratio": round(app.rate / raw.rate, 3),
    }  # fmt: skip
    out["load_generator"]["GET /orders/{id}"] = steady.generator(app)


async def _rebuild(
    st: Stack, mongo: AsyncMongoClient[dict[str, Any]], log: str, plan: Plan, out: dict[str, Any]
) -> None:
    rounds = plan.rebuild_rounds
    progress(f"read-model rebuild from the log, then the raw insert ceiling, {rounds} times")
    figures = await rebuild.run(
        log, mongo, st.scratch_mongo_db("rebuilt"), st.scratch_mongo_db("raw"), rounds
    )
    out["rebuild"] = {
        "events": figures.events, "documents": figures.documents, "rounds": rounds,
        "rebuild_events_per_s": round(figures.rebuild_rate, 1),
        "raw_events_per_s": round(figures.raw_rate, 1), "ratio": round(figures.ratio, 3),
        "round_ratios": list(figures.round_ratios),
    }  # fmt: skip


async def _scenarios(st: Stack, plan: Plan, out: dict[str, Any]) -> None:
    pool = await asyncpg.create_pool(st.settings.database_url, min_size=1, max_size=16)
    assert pool is not None
    st.exits.push_async_callback(pool.close)
    mongo = st.mongo_client()
    st.exits.push_async_callback(mongo.close)
    running = await Running.start(st, pool, mongo[st.settings.mongo_db])
    ids = await write_side.place_order(st, running, plan, out)
    progress("waiting for the read model to catch up")
    out["get_order_behind_at_start"] = await running.catch_up(plan.catch_up_s)
    await _read_side(st, running.port, ids, plan, out)
    await read_cache.run(st, [str(p) for p in running.orders.product_ids], plan, out)
    log = await st.scratch_database("log")  # the rebuild's log: what the scenarios above wrote
    await rebuild.copy_log(st.settings.database_url, log, plan.rebuild_events)
    # The search before the run at half the maximum: the backlog that one leaves behind can
    # take longer to drain than any bound the bench waits.
    await sustained.search(running, plan, out)
    await _read_store(st, mongo, log, plan, out)
    await steady.at_half_max(running, plan, out)
    running.app.stop()  # the rebuild and the relay drain run on a quiet machine
    await _rebuild(st, mongo, log, plan, out)


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
        await _scenarios(st, plan, out)
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
