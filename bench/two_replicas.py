"""`python -m bench.two_replicas`: the whole pipeline's scenarios of `make bench` with the work
split over two processes on this machine, then the same in one process, each measured in the
same run.

Two processes: one replica leads the relay (PROJECTOR_ENABLED=false), the other runs the
active projector (RELAY_ENABLED=false) and answers the lag watcher's reads; both serve the
commands, the load generator spreading its connections over the two in turn (an open-loop order
takes the connection idle longest, as a least-busy balancer would). One process: `python -m app
serve` doing everything, as `make bench` measures it.

Per layout, on a fresh stack of its own: place order over HTTP beside pgbench running the
handler's SQL (bench.write_side), the sustained rate (bench.sustained) and the lag at half the
maximum with the memory samples (bench.steady), with the plan of `make bench` (BENCH_QUICK=1:
the quick one). Prints each layout's table and one `two:`/`one:` line of ratios, and writes
bench/results/two-replicas.json. The single process stays the headline (`make bench`); this
shows what a second core's worth of app buys, on a machine whose two cores PostgreSQL,
RabbitMQ, the read store and the load generator share too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import asyncpg
import uvloop

from bench import report, steady, sustained, write_side
from bench.plan import FULL, QUICK, Plan
from bench.report import progress
from bench.stack import memory_kib, stack

RESULTS = report.RESULTS.with_name("two-replicas.json")


async def _layout(plan: Plan, split: bool) -> dict[str, Any]:
    name = "two" if split else "one"
    out: dict[str, Any] = {"layout": name}
    async with stack(name) as st:
        pool = await asyncpg.create_pool(st.settings.database_url, min_size=1, max_size=16)
        assert pool is not None
        st.exits.push_async_callback(pool.close)
        mongo = st.mongo_client()
        st.exits.push_async_callback(mongo.close)
        r = await steady.Running.start(st, pool, mongo[st.settings.mongo_db], split)
        await write_side.place_order(st, r, plan, out)
        await sustained.search(r, plan, out)
        await steady.at_half_max(r, plan, out)
        out["others_peak_mib"] = {  # the sampled app's peak is in out["memory"]
            process: round(memory_kib(pid)["VmHWM"] / 1024, 1) for process, pid in r.others.items()
        }
    return out


async def run(plan: Plan) -> list[dict[str, Any]]:
    return [await _layout(plan, split=True), await _layout(plan, split=False)]


def main() -> int:
    plan = QUICK if os.environ.get("BENCH_QUICK", "") not in ("", "0") else FULL
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            layouts = runner.run(run(plan))
    except KeyboardInterrupt:
        progress("interrupted; everything it made has been removed")
        return 130
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(layouts, indent=2) + "\n", encoding="utf-8")
    for r in layouts:
        peaks = "".join(f"; {k} peak {v} MiB" for k, v in r["others_peak_mib"].items())
        print(f"\n{r['layout']} process(es){peaks}")
        print(report.pipeline_table(r))
    print()
    for r in layouts:
        print(f"{r['layout']}: {report.pipeline_ratios(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
