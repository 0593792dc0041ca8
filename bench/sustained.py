"""The sustained rate: the highest steady open-loop order rate the whole pipeline keeps up
with, found by bisection between nothing and the burst maximum (the closed-loop place-order
rate over HTTP). The bisection is geometric (the next step at the geometric mean of the
highest rate kept up with and the lowest one not; half the lowest while none was kept up
with), so each step narrows the rate by the same factor wherever it lies.

A step keeps up when, for the whole step, the commit-to-visible lag p99 stays at most
LAG_P99_S, every order placed is visible within the plan's short tail after the step (the read
model did not fall behind), and the open loop achieved its rate with no failed request.
"""

from __future__ import annotations

from typing import Any

from bench.plan import Plan
from bench.report import progress
from bench.steady import Running, lag_figures

LAG_P99_S = 0.1
_ACHIEVED = 0.95  # the share of the asked rate a step must have placed


def kept_up(figures: dict[str, Any]) -> bool:
    return (
        figures["p99_ms"] <= LAG_P99_S * 1000
        and figures["never_visible"] == 0
        and figures["non_2xx"] == 0
        and figures["errors"] == 0
        and figures["achieved_per_s"] >= _ACHIEVED * figures["rate_per_s"]
    )


async def _step(r: Running, fraction: float, burst: float, plan: Plan) -> dict[str, Any]:
    rate = fraction * burst
    behind = await r.catch_up(plan.catch_up_s)
    progress(f"sustained rate? {rate:.0f} orders/s ({fraction:.3f} of the maximum) for"
             f" {plan.probe_s:.0f} s, {behind} events behind at start")  # fmt: skip
    run = await r.steady_rate(rate, plan.probe_s, plan.probe_tail_s)
    figures = lag_figures(rate, run) | {
        "fraction": round(fraction, 4), "behind_at_start": behind, "tail_s": plan.probe_tail_s,
    }  # fmt: skip
    return figures | {"kept_up": kept_up(figures)}


async def search(r: Running, plan: Plan, out: dict[str, Any]) -> None:
    """`plan.probes` steps of `plan.probe_s`, the first at `plan.probe_start` of the burst
    maximum. The result is the highest rate kept up with (0 when none was), in orders/s and
    as a fraction of the maximum."""
    burst = out["place_order"]["http_per_s"]
    low, high, fraction = 0.0, 1.0, plan.probe_start
    steps: list[dict[str, Any]] = []
    for _ in range(plan.probes):
        step = await _step(r, fraction, burst, plan)
        steps.append(step)
        low, high = (fraction, high) if step["kept_up"] else (low, fraction)
        fraction = (low * high) ** 0.5 if low else high / 2
    best = max((s for s in steps if s["kept_up"]), key=lambda s: s["rate_per_s"], default=None)
    out["sustained"] = {
        "per_s": best["rate_per_s"] if best else 0.0, "ratio": round(low, 4),
        "burst_per_s": burst, "below_per_s": round(high * burst, 1),
        "lag_p99_ms_max": LAG_P99_S * 1000, "step_s": plan.probe_s, "steps": steps,
    }  # fmt: skip
