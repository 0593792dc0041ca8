"""Steady open-loop runs against the running app: waiting for the read model, the figures of
one run, and the lag run at half the maximum with the app's memory samples."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pymongo.asynchronous.database import AsyncDatabase

from app.contracts.readmodel import applied_position
from app.plumbing.localstore import LocalStore
from app.plumbing.settings import Settings
from bench import disk, http_load, scenarios
from bench.http_load import LoadResult
from bench.plan import Plan
from bench.report import progress
from bench.stack import Process, Stack


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def generator(load: LoadResult) -> dict[str, float]:
    """The load generator's own CPU during `load`."""
    return {"cpu_s": round(load.cpu_s, 2), "wall_s": round(load.wall_s, 2),
            "cpu_s_per_s": round(load.cpu_per_wall, 3)}  # fmt: skip


@dataclass(frozen=True)
class Running:
    """The app under test and what the scenarios reach it and its stores with. With `replicas`,
    the commands go to `port` and theirs in turn, the lag is read on `watch_port` (the replica
    whose projector is active) and `others` are further processes whose CPU to report; `app`
    is the one whose memory is sampled."""

    pool: asyncpg.Pool
    db: AsyncDatabase[dict[str, Any]]
    orders: scenarios.Orders
    app: Process
    port: int
    store: LocalStore | None  # the read store's server, when the bench started it
    settings: Settings
    replicas: tuple[int, ...] = ()
    watch_port: int | None = None
    others: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def start(
        cls, st: Stack, pool: asyncpg.Pool, db: AsyncDatabase[dict[str, Any]], split: bool = False
    ) -> Running:
        """Seed the products, then serve: one `python -m app serve` doing everything, or with
        `split` one replica leading the relay (its projector off) and one running the
        projector (its relay off), the commands going to both."""
        progress("seeding products")
        orders = scenarios.Orders(await scenarios.seed_products(pool))
        if not split:
            app, port = await st.serve("app", "serve")
            progress(f"app pid {app.pid} on :{port}")
            return cls(pool, db, orders, app, port, st.store, st.settings)
        app, port = await st.serve("app", "serve", PROJECTOR_ENABLED="false")
        projector, projector_port = await st.serve("app", "serve", RELAY_ENABLED="false")
        progress(f"relay replica pid {app.pid} on :{port}, projector replica pid"
                 f" {projector.pid} on :{projector_port}")  # fmt: skip
        return cls(
            pool, db, orders, app, port, st.store, st.settings, replicas=(projector_port,),
            watch_port=projector_port, others={"projector replica": projector.pid},
        )  # fmt: skip

    @property
    def ports(self) -> tuple[int, ...]:
        """Where the commands go."""
        return (self.port, *self.replicas)

    async def steady_rate(
        self, rate: float, duration_s: float, tail_s: float
    ) -> scenarios.SteadyRun:
        return await scenarios.steady_rate(
            self.ports, self.app, self.store, self.settings, self.orders, rate, duration_s,
            tail_s, watch_port=self.watch_port, others=self.others,
        )  # fmt: skip

    async def catch_up(self, within_s: float) -> int:
        """Wait until the read model has applied the whole log, at most `within_s`; the
        number of events it was still behind then (0: caught up)."""
        head: int = await self.pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
        deadline = time.monotonic() + within_s
        while True:
            applied = await applied_position(self.db)
            if applied >= head or time.monotonic() > deadline:
                return max(0, head - applied)
            await asyncio.sleep(0.05)

    async def drain_rate(self, within_s: float) -> tuple[int, float | None]:
        """Like catch_up, plus the projector's apply rate while it drained the backlog
        (events/s; None when there was nothing to drain): its sustainable rate here."""
        applied_from, started = await applied_position(self.db), time.monotonic()
        behind = await self.catch_up(within_s)
        drained = await applied_position(self.db) - applied_from
        elapsed = time.monotonic() - started
        return behind, (drained / elapsed if drained > 1000 and elapsed > 0.5 else None)


def lag_figures(rate: float, run: scenarios.SteadyRun) -> dict[str, Any]:
    """The figures of one steady run: the lag, the relay's part of it, the cores used (and
    those of the whole machine), the disk's fsyncs."""
    lags, relay, fsyncs = run.lags_s, run.relay_s, run.fsync_s
    return {
        "rate_per_s": round(rate, 1), "achieved_per_s": round(run.load.rate, 1),
        "orders": run.load.ok, "never_visible": run.never_visible,
        "non_2xx": run.load.statuses.total() - run.load.ok, "errors": run.load.errors,
        "p50_ms": ms(http_load.percentile(lags, 50)),
        "p99_ms": ms(http_load.percentile(lags, 99)), "max_ms": ms(max(lags, default=0.0)),
        "relay_p50_ms": ms(http_load.percentile(relay, 50)),
        "relay_p99_ms": ms(http_load.percentile(relay, 99)),
        "cores": {name: round(cores, 2) for name, cores in run.cores.items()},
        "machine_busy_cores": round(run.machine_busy, 2), "machine_cores": os.cpu_count(),
        "fsync_p50_ms": ms(http_load.percentile(fsyncs, 50)),
        "fsync_p99_ms": ms(http_load.percentile(fsyncs, 99)),
        "fsync_max_ms": ms(max(fsyncs, default=0.0)),
        "fsync_stalls": sum(f >= disk.STALL_S for f in fsyncs),
    }  # fmt: skip


async def at_half_max(r: Running, plan: Plan, out: dict[str, Any]) -> None:
    """Commit-to-visible lag at half the maximum order rate, and the app's memory meanwhile;
    then how fast the projector drained what the run left behind."""
    rate = out["place_order"]["http_per_s"] / 2
    progress("waiting for the read model to catch up")
    behind = await r.catch_up(plan.catch_up_s)
    progress(f"steady {rate:.0f} orders/s for {plan.steady_s:.0f} s ({behind} events behind)")
    run = await r.steady_rate(rate, plan.steady_s, plan.tail_s)
    load = run.load
    out["lag"] = lag_figures(rate, run) | {
        "behind_at_start": behind, "http_p50_ms": ms(load.percentile(50)),
        "http_p99_ms": ms(load.percentile(99)), "tail_s": plan.tail_s,
    }  # fmt: skip
    out["memory"] = _memory(run, plan)
    out["load_generator"]["steady rate"] = generator(load)
    progress("waiting for the read model to catch up")
    out["lag"]["behind_after_run"], drain = await r.drain_rate(plan.catch_up_s)
    out["lag"]["projector_drain_events_per_s"] = None if drain is None else round(drain)


def _memory(run: scenarios.SteadyRun, plan: Plan) -> dict[str, Any]:
    start = next(m for t, m in run.rss_mib if t >= plan.growth_from * plan.steady_s)
    end, every = run.rss_mib[-1][1], max(1, len(run.rss_mib) // 60)
    return {
        "duration_s": plan.steady_s, "peak_mib": round(run.peak_mib, 1),
        "rss_from_mib": round(start, 1), "rss_to_mib": round(end, 1),
        "growth_mib": round(end - start, 1),
        "growth_window": f"{plan.growth_from:.0%}..100% of the run",
        "samples": [(round(t), round(m, 1)) for t, m in run.rss_mib[::every]],
    }  # fmt: skip
