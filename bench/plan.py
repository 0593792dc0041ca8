"""How long each scenario runs and how much it handles: the full plan and the quick one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    quick: bool
    warmup_s: float
    write_s: float  # each place-order run: over HTTP, the handler, pgbench
    steady_s: float  # the lag run at half the maximum, with the memory samples
    growth_from: float  # RSS growth is measured from this fraction of the steady run to its end
    tail_s: float  # how long after the steady run an order may still become visible
    catch_up_s: float  # the longest wait for the read model between scenarios
    read_s: float
    read_rounds: int  # GET /orders/{id}: the app and the bare endpoint run in turn this often
    rebuild_events: int
    rebuild_rounds: int  # the rebuild and its raw-insert ceiling run in turn this often
    readstore_events: int
    relay_events: int
    probe_s: float  # each step of the sustained-rate search
    probes: int  # how many steps it takes
    probe_tail_s: float  # the read model must have caught up this long after a step
    probe_start: float  # the first step's rate, as a fraction of the maximum


QUICK = Plan(True, 1, 4, 10, 0.25, 3, 20, 3, 2, 8_000, 2, 5_000, 8_000, 15, 2, 2, 0.25)
FULL = Plan(False, 5, 30, 300, 0.2, 10, 120, 20, 4, 60_000, 3, 20_000, 50_000, 60, 4, 3, 0.25)
