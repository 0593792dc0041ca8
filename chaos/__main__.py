"""`python -m chaos` (`make chaos`): two replicas under steady traffic while faults are injected
in turn, then the tally of what the clients were told against the log and the read model.

CHAOS_QUICK=1 runs a short version (about a minute). The broker and PostgreSQL outages are cuts
of TCP proxies the run starts, so the shared servers keep serving everyone else; with
CHAOS_RESTART=rabbitmq,postgres (either or both) those services are really stopped and started
instead. CHAOS_SEED fixes the traffic's random choices; CHAOS_LOGS=DIR keeps each replica's output
there. `--json PATH` writes the results.
Exit 1 when anything was lost, duplicated or unexpected, or the read model differs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import uvloop

from chaos import report
from chaos.run import FULL, QUICK, RESTARTABLE, Findings, progress, run


def _restart() -> frozenset[str]:
    named = frozenset(
        n.strip() for n in os.environ.get("CHAOS_RESTART", "").split(",") if n.strip()
    )
    if unknown := named - RESTARTABLE:
        raise ValueError(
            f"CHAOS_RESTART: unknown {sorted(unknown)}; may name {sorted(RESTARTABLE)}"
        )
    return named


async def _main(quick: bool, restart: frozenset[str], seed: int, logs: Path | None) -> Findings:
    current = asyncio.current_task()
    assert current is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
    return await run(QUICK if quick else FULL, restart, seed, logs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    quick = os.environ.get("CHAOS_QUICK", "") not in ("", "0")
    try:
        restart = _restart()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs = Path(os.environ["CHAOS_LOGS"]) if os.environ.get("CHAOS_LOGS") else None
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))  # noqa: S311 - a load shape
    progress(f"{'quick' if quick else 'full'} run, seed {seed} (CHAOS_SEED={seed} repeats it)")
    if restart:
        progress(f"will really restart: {', '.join(sorted(restart))}")
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            found = runner.run(_main(quick, restart, seed, logs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted; everything it made has been removed")
        return 130
    except Exception:  # the run could not finish: say why, after everything was removed
        traceback.print_exc()
        print("chaos: FAILED: the run did not finish (above); everything it made was removed")
        return 1
    out = report.results(found, time.monotonic() - started)
    for line in report.lines(out):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    reasons = report.failed(out)
    verdict = f"; FAILED: {', '.join(reasons)}" if reasons else ""
    print(f"({out['mode']} run, {out['wall_s']} s{verdict})")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
