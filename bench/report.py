"""The benchmark's one table, its JSON file and its final `ratios:` line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import disk

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

Row = tuple[str, str, str, str, str]


def progress(message: str) -> None:
    """One progress line on stderr (the table and the ratios go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _read_store_rows(r: dict[str, Any]) -> list[Row]:
    store = r.get("read_store")
    if store is None:
        return []
    return [
        (
            "  read store, raw projector writes",
            f"{store['orders_per_s']:.0f} orders/s ({store['events_per_s']:.0f} events/s)",
            f"batches of {store['batch_size']} events, {store['orders']} orders",
            "",
            f"needs {r['lag']['rate_per_s']:.0f}/s",
        )
    ]


def _step_outcome(step: dict[str, Any]) -> str:
    unseen, tail, behind = step["never_visible"], step["tail_s"], step["behind_at_start"]
    seen = f"{unseen} unseen {tail} s after" if unseen else f"all seen within {tail} s"
    late = f", {behind} events behind at start" if behind else ""
    stalls = step.get("fsync_stalls")
    stalled = f"; {stalls} disk stall{'s' if stalls > 1 else ''}" if stalls else ""
    return f"{seen}; achieved {step['achieved_per_s']:.0f}/s{late}{stalled}"


def _step_verdict(step: dict[str, Any], limit_ms: float) -> str:
    if step["kept_up"]:
        return "kept up"
    if step["never_visible"]:
        return "fell behind"
    if step["p99_ms"] > limit_ms:
        return f"p99 > {limit_ms:.0f} ms"
    return "requests failed" if step["non_2xx"] or step["errors"] else "rate not reached"


def _sustained_rows(r: dict[str, Any]) -> list[Row]:
    """The sustained rate, each step of its search, and where the lag went at the best step."""
    sus = r.get("sustained")
    if sus is None:
        return []
    limit, below = sus["lag_p99_ms_max"], sus["below_per_s"]
    missed = f"; missed at {below:.0f}/s" if below < sus["burst_per_s"] else ""
    rows: list[Row] = [(
        f"sustained rate, lag p99 <= {limit:.0f} ms",
        f"{sus['per_s']:.0f} orders/s" if sus["per_s"] else f"< {below:.0f} orders/s",
        f"{sus['burst_per_s']:.0f} orders/s (place order above){missed}",
        f"{sus['ratio']:.2f}",
        f"{len(sus['steps'])} steps of {sus['step_s']:.0f} s",
    )]  # fmt: skip
    for step in sus["steps"]:
        rows.append((
            f"  step @ {step['rate_per_s']:.0f}/s ({step['fraction']:.3f})",
            _lags(step),
            _step_outcome(step),
            "",
            _step_verdict(step, limit),
        ))  # fmt: skip
    kept = [s for s in sus["steps"] if s["kept_up"]]
    shown = max(kept, key=lambda s: s["rate_per_s"]) if kept else sus["steps"][-1]
    return rows + _where_rows(shown, f" @ {shown['rate_per_s']:.0f}/s")


def _lags(lag: dict[str, Any]) -> str:
    """p50, p99, max of a steady run; `>=` where some orders never became visible."""
    bound = ">=" if lag["never_visible"] else ""
    p50, p99, top = lag["p50_ms"], lag["p99_ms"], lag["max_ms"]
    return f"p50 {p50:.1f}  p99 {bound}{p99:.1f}  max {bound}{top:.1f} ms"


def _drained(lag: dict[str, Any]) -> str:
    drained = lag.get("projector_drain_events_per_s")
    return f"; backlog then drained at {drained} events/s" if drained else ""


def _lag_target(lag: dict[str, Any]) -> str:
    return f"p99 <= 100 ms {_verdict(lag['p99_ms'] <= 100 and lag['never_visible'] == 0)}"


def _where_rows(lag: dict[str, Any], at: str = "") -> list[Row]:
    """Where a steady run's lag went, and what the app and the read store used meanwhile."""
    relay = f"p50 {lag['relay_p50_ms']:.1f}  p99 {lag['relay_p99_ms']:.1f} ms"
    return [
        (f"    answer -> broker delivery{at}", relay, "", "", ""),
        (f"    CPU there{at}", _cores(lag), _machine(lag), "", ""),
        *_disk_rows(lag, at),
    ]


def _disk_rows(lag: dict[str, Any], at: str) -> list[Row]:
    """The disk's fsync latency during a steady run (bench/disk.py), when it was probed."""
    if "fsync_p50_ms" not in lag:
        return []
    p50, p99, top = lag["fsync_p50_ms"], lag["fsync_p99_ms"], lag["fsync_max_ms"]
    figures = f"p50 {p50:.1f}  p99 {p99:.1f}  max {top:.1f} ms"
    stalls = f"{lag['fsync_stalls']} of them >= {disk.STALL_S * 1000:.0f} ms"
    return [(f"    disk fsync there{at}", figures, stalls, "", "")]


def _cores(lag: dict[str, Any]) -> str:
    """The cores the app, the read store and the services used during a steady run."""
    return ", ".join(f"{name} {cores:.2f}" for name, cores in lag.get("cores", {}).items())


def _machine(lag: dict[str, Any]) -> str:
    """How much of the whole machine was busy meanwhile (every process on it, the bench's own
    included): near all of it, every process waits for a core, and latency grows with it."""
    if "machine_busy_cores" not in lag:
        return ""
    return f"the machine: {lag['machine_busy_cores']:.2f} of {lag['machine_cores']} cores busy"


def _place_order_rows(po: dict[str, Any]) -> list[Row]:
    """Over HTTP beside pgbench running the handler's SQL; then the handler without HTTP."""
    return [
        (
            "place order, HTTP, 32 conn",
            f"{po['http_per_s']:.0f} orders/s",
            f"{po['ceiling_per_s']:.0f} tps (pgbench, the handler's SQL)",
            f"{po['ratio']:.2f}",
            f">= 0.50 {_verdict(po['ratio'] >= 0.5)}",
        ),
        (
            "  latency p50 / p99",
            f"{po['http_p50_ms']:.1f} / {po['http_p99_ms']:.1f} ms",
            f"{po['ceiling_p50_ms']:.1f} / {po['ceiling_p99_ms']:.1f} ms",
            "",
            "",
        ),
        *_cpu_rows(po),
        (
            "  the handler on asyncpg, no HTTP",
            f"{po['handler_per_s']:.0f} orders/s, p50 {po['handler_p50_ms']:.1f}"
            f" / p99 {po['handler_p99_ms']:.1f} ms",
            f"HTTP is {po['http_of_handler']:.2f} of it",
            f"{po['handler_ratio']:.2f}",
            "",
        ),
    ]


def _cpu_rows(po: dict[str, Any]) -> list[Row]:
    """What one order cost the machine's cores, and who spent it, beside one pgbench
    transaction: where the cores are the limit, the rate ratio follows this one."""
    if po.get("cpu_ratio") is None:
        return []

    def spent(by: dict[str, float]) -> str:
        return ", ".join(f"{name} {ms:.2f}" for name, ms in by.items()) + " ms"

    return [
        (
            "  CPU per order, the whole machine",
            f"{po['http_cpu_ms']:.2f} ms",
            f"{po['ceiling_cpu_ms']:.2f} ms per transaction",
            f"{po['cpu_ratio']:.2f}",
            "",
        ),
        ("    of it, our processes", spent(po["http_cpu_ms_processes"]), "", "", ""),
        ("    of it, the services", spent(po["http_cpu_ms_services"]), "", "", ""),
    ]


def _lag_rows(r: dict[str, Any]) -> list[Row]:
    """The lag at half the maximum rate, the latency there and where the lag went."""
    lag = r["lag"]
    return [
        (
            f"commit-to-visible lag @ {lag['rate_per_s']:.0f}/s",
            _lags(lag),
            f"{lag['orders']} orders, {lag['never_visible']} unseen {lag['tail_s']} s after",
            "",
            _lag_target(lag),
        ),
        (
            "  place order latency there",
            f"p50 {lag['http_p50_ms']:.1f}  p99 {lag['http_p99_ms']:.1f} ms",
            f"achieved {lag['achieved_per_s']:.0f}/s" + _drained(lag),
            "",
            "",
        ),
        *_where_rows(lag),
    ]


def _memory_rows(r: dict[str, Any]) -> list[Row]:
    """The app's memory during the lag run, then the load generator's own CPU."""
    mem, lag = r["memory"], r["lag"]
    lines: list[Row] = [(
        f"app memory, {mem['duration_s']:.0f} s @ {lag['rate_per_s']:.0f}/s",
        f"peak {mem['peak_mib']:.0f} MiB",
        f"RSS {mem['rss_from_mib']:.0f} -> {mem['rss_to_mib']:.0f} MiB"
        f" ({mem['growth_mib']:+.1f}, {mem['growth_window']})",
        "",
        f"<= 250 MiB {_verdict(mem['peak_mib'] <= 250)}",
    )]  # fmt: skip
    for name, figures in r["load_generator"].items():
        lines.append((
            f"load generator CPU, {name}",
            f"{figures['cpu_s_per_s']:.2f} s/s ({figures['cpu_s_per_s'] * 100:.0f}% of a core)",
            "", "", "",
        ))  # fmt: skip
    return lines


def rows(r: dict[str, Any]) -> list[Row]:
    """(scenario, measured, ceiling, ratio, target) per line of the table."""
    relay, rb, go = r["relay"], r["rebuild"], r["get_order"]
    return [
        *_place_order_rows(r["place_order"]),
        *_lag_rows(r),
        *_read_store_rows(r),
        *_sustained_rows(r),
        (
            "relay drain",
            f"{relay['relay_events_per_s']} events/s",
            f"{relay['raw_publish_events_per_s']} events/s (raw aiormq)",
            f"{relay['ratio']:.2f}",
            f">= 0.90 {_verdict(relay['ratio'] >= 0.9)}",
        ),
        (
            "read-model rebuild",
            f"{rb['rebuild_events_per_s']:.0f} events/s",
            f"{rb['raw_events_per_s']:.0f} events/s (insert_many); rounds "
            + " ".join(f"{x:.2f}" for x in rb.get("round_ratios", ())),
            f"{rb['ratio']:.2f}",
            f">= 0.70 {_verdict(rb['ratio'] >= 0.7)}",
        ),
        (
            "GET /orders/{id}, 32 conn",
            f"{go['app_per_s']:.0f} req/s, p99 {go['app_p99_ms']:.1f} ms",
            f"{go['bare_per_s']:.0f} req/s, p99 {go['bare_p99_ms']:.1f} ms (bare)",
            f"{go['ratio']:.2f}",
            f">= 0.85 {_verdict(go['ratio'] >= 0.85)}",
        ),
        *_product_cache_rows(r),
        *_memory_rows(r),
    ]


def pipeline_table(r: dict[str, Any]) -> str:
    """The rows of the scenarios that run the whole pipeline: place order, the lag at half the
    maximum, the sustained rate, memory (`python -m bench.two_replicas`, per layout)."""
    return render([
        *_place_order_rows(r["place_order"]), *_lag_rows(r), *_sustained_rows(r),
        *_memory_rows(r),
    ])  # fmt: skip


def pipeline_ratios(r: dict[str, Any]) -> str:
    """The `ratios:` line's figures that `pipeline_table` has."""
    return (
        f"place_order={r['place_order']['ratio']:.2f} lag_p99_ms={round(r['lag']['p99_ms'])}"
        f" sustained={r['sustained']['ratio']:.2f}"
    )


def _product_cache_rows(r: dict[str, Any]) -> list[Row]:
    """GET /products/{id} on a read replica with the Redis cache, beside one without it."""
    pc = r.get("product_cache")
    if pc is None:
        return []
    name = "GET /products/{id}, 32 conn, cached"
    if "skipped" in pc:
        return [(name, f"skipped: {pc['skipped']}", "", "", "")]
    return [(
        name,
        f"{pc['cached_per_s']:.0f} req/s, p99 {pc['cached_p99_ms']:.1f} ms,"
        f" hit rate {pc['hit_rate'] * 100:.1f}%"
        + (f", {pc['fallbacks']:.0f} fallbacks" if pc["fallbacks"] else ""),
        f"{pc['uncached_per_s']:.0f} req/s, p99 {pc['uncached_p99_ms']:.1f} ms (no REDIS_URL)",
        f"{pc['ratio']:.2f}",
        "",
    )]  # fmt: skip


def product_cache_table(r: dict[str, Any]) -> str:
    """The table of `python -m bench.read_cache`: its one row."""
    return render(_product_cache_rows(r))


def table(r: dict[str, Any]) -> str:
    return render(rows(r))


def render(body: list[Row]) -> str:
    header: Row = ("scenario", "measured", "ceiling (same run)", "ratio", "target")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *body]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratios_line(r: dict[str, Any]) -> str:
    return (
        f"ratios: place_order={r['place_order']['ratio']:.2f} relay={r['relay']['ratio']:.2f}"
        f" rebuild={r['rebuild']['ratio']:.2f} get_order={r['get_order']['ratio']:.2f}"
        f" lag_p99_ms={round(r['lag']['p99_ms'])} sustained={r['sustained']['ratio']:.2f}"
    ) + product_cache_ratio(r)


def product_cache_ratio(r: dict[str, Any]) -> str:
    """` product_cache=<cached / uncached>`, when the run had a Redis to measure it with."""
    ratio = r.get("product_cache", {}).get("ratio")
    return "" if ratio is None else f" product_cache={ratio:.2f}"


def write(r: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
