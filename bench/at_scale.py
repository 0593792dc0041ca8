"""`python -m bench.at_scale` (`make bench-scale`): the operator commands on a large log.

Writes a consistent log of BENCH_SCALE_ORDERS orders (default 1,000,000; bench/large_log.py)
into a fresh stack, then runs, each as its own `python -m app` process, and reports its peak
RSS (the kernel's, from wait4) and its wall time:

1. `rebuild --offline` (the generation in use, in place), then `verify`;
2. `rebuild --json` online: a new generation built, caught up, compared with the first
   document by document, and switched to; then `verify` of the new generation.

The claim it checks: peak RSS of rebuild, compare and verify does not grow with the number of
orders (target: at most 250 MB at a million orders). The online rebuild's rate beside the
offline one's is the price of building beside a serving generation and comparing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from app.plumbing.localstore import free_port
from bench.large_log import make_large_log
from bench.stack import ROOT, Stack, stack

ORDERS = int(os.environ.get("BENCH_SCALE_ORDERS", "1000000"))


def _run(st: Stack, *args: str) -> dict[str, Any]:
    """`python -m app <args>` with the stack's environment: exit code, seconds, peak RSS."""
    env = st.app_env(port=free_port())  # not served: the commands only check it
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            [sys.executable, "-m", "app", *args], env=env, cwd=ROOT, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "command": " ".join(args),
            "exit": process.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "output": out.read().decode(),
            "errors": err.read().decode()[-2000:],
        }


async def main() -> dict[str, Any]:
    async with stack("scale") as st:
        print(f"writing a log of {ORDERS:,} orders", flush=True)
        started = time.perf_counter()
        events = await make_large_log(st.settings.database_url, ORDERS)
        print(f"  {events:,} events in {time.perf_counter() - started:.0f} s", flush=True)
        runs = []
        for args in (["rebuild", "--offline"], ["verify"], ["rebuild", "--json"], ["verify"]):
            print(f"python -m app {' '.join(args)}", flush=True)
            run = await asyncio.to_thread(_run, st, *args)
            print(f"  exit {run['exit']}, {run['seconds']} s, peak RSS {run['peak_rss_mib']} MiB")
            if run["exit"] != 0:
                print(run["errors"], file=sys.stderr)
            runs.append(run)
        offline, _, online, _ = runs
        summary = json.loads(online["output"].strip().splitlines()[-1])
        result = {
            "orders": ORDERS,
            "events": events,
            "runs": [
                {k: r[k] for k in ("command", "exit", "seconds", "peak_rss_mib")} for r in runs
            ],
            "online_phases": summary.get("phases", []),
            "offline_events_per_s": round(events / offline["seconds"], 1),
            "online_events_per_s": round(events / online["seconds"], 1),
        }
        result["online_vs_offline"] = round(
            result["online_events_per_s"] / result["offline_events_per_s"], 3
        )
        return result


if __name__ == "__main__":
    figures = asyncio.run(main())
    print(json.dumps(figures, indent=2))
    peak = max(r["peak_rss_mib"] for r in figures["runs"])
    failed = [r["command"] for r in figures["runs"] if r["exit"] != 0]
    print(
        f"at scale: orders={figures['orders']} events={figures['events']} "
        f"peak_rss_mib={peak} online_vs_offline={figures['online_vs_offline']}"
        + (f" failed={failed}" if failed else "")
    )
    sys.exit(1 if failed else 0)
