"""`python -m bench.two_replicas`: the commit-to-visible lag with the work split over two
processes on this machine, beside one process doing it all.

One replica serves the commands and leads the relay (PROJECTOR_ENABLED=false); the other runs
the projector (RELAY_ENABLED=false) and answers the lag watcher's reads. Then the same steps
with one process doing everything. Each step is an open-loop run of BENCH_RATES orders/s
(default 120,240,360) for BENCH_STEP_S seconds (default 15), the read model caught up before
each. Prints, per layout and rate, the lag p50/p99, the relay's part, and the cores each
process used.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import asyncpg

from bench import scenarios, steady
from bench.stack import Stack, stack

RATES = [float(r) for r in os.environ.get("BENCH_RATES", "120,240,360").split(",")]
STEP_S = float(os.environ.get("BENCH_STEP_S", "15"))


async def _steps(
    st: Stack, pool: asyncpg.Pool, orders: scenarios.Orders, split: bool
) -> list[dict[str, Any]]:
    if split:
        app, port = await st.serve("app", "serve", PROJECTOR_ENABLED="false")
        projector, watch_port = await st.serve("app", "serve", RELAY_ENABLED="false")
        others = {"projector replica": projector.pid}
    else:
        app, port = await st.serve("app", "serve")
        watch_port, others, projector = port, {}, None
    db = st.mongo_client()[st.settings.mongo_db]
    running = steady.Running(pool, db, orders, app, port, st.store, st.settings)
    results = []
    try:
        for rate in RATES:
            await running.catch_up(60)
            run = await scenarios.steady_rate(
                port, app, st.store, st.settings, orders, rate, STEP_S, 10.0,
                watch_port=watch_port, others=others,
            )  # fmt: skip
            figures = steady.lag_figures(rate, run)
            results.append({"layout": "two" if split else "one", "rate": rate, **figures})
            print(json.dumps(results[-1]), flush=True)
    finally:
        app.stop()
        if projector is not None:
            projector.stop()
        await db.client.close()
    return results


async def main() -> list[dict[str, Any]]:
    async with stack("two") as st:
        pool = await asyncpg.create_pool(st.settings.database_url, min_size=1, max_size=8)
        assert pool is not None
        st.exits.push_async_callback(pool.close)
        orders = scenarios.Orders(await scenarios.seed_products(pool))
        return [*await _steps(st, pool, orders, True), *await _steps(st, pool, orders, False)]


if __name__ == "__main__":
    for row in asyncio.run(main()):
        print(
            f"{row['layout']} process(es) @ {row['rate']:.0f}/s: lag p50 {row['p50_ms']} "
            f"p99 {row['p99_ms']} ms; cores {row['cores']}"
        )
