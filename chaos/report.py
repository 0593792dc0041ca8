"""What a chaos run prints (one line per fault, then the tally line) and writes with --json."""

from __future__ import annotations

from typing import Any

from chaos.run import Findings


def results(found: Findings, wall_s: float) -> dict[str, Any]:
    t, report, traffic = found.tally, found.report, found.traffic
    return {
        "mode": "quick" if found.plan.quick else "full",
        "seed": found.seed,
        "wall_s": round(wall_s, 1),
        "rate_per_s": found.plan.rate,
        "restarted_services": sorted(found.restart),
        "tally": {
            "acknowledged": t.acknowledged, "lost": t.lost, "duplicated": t.duplicated,
            "unexpected": t.unexpected, "read_model_diff": len(report.differences),
            "held_streams": len(report.held), "in_doubt": t.in_doubt, "rejected": t.rejected,
            "refused": t.refused, "transactions": t.transactions, "shed": traffic.shed,
        },
        "reads": {
            "with_after": len(traffic.reads),
            "failed": sum(r.failed for r in traffic.reads),
            "stale": sum(r.stale for r in traffic.reads),
        },
        "verify": {
            "log_position": report.log_position, "read_position": report.read_position,
            "caught_up": report.caught_up, "checked": report.checked,
        },
        "faults": found.impacts(),
        "not_ready_after": found.unready,
        "findings": t.examples,
        "failed_requests": _failed_requests(found),
        "differences": [
            f"{d.collection}/{d.id} {d.field}: expected {d.expected!r}, found {d.actual!r}"
            for d in report.differences[:20]
        ],
    }  # fmt: skip


def failed(out: dict[str, Any]) -> list[str]:
    """Why the run fails: a non-zero lost, duplicated, unexpected or read_model_diff, a stale
    read-your-writes answer, a read model that never caught up, or a replica that was not
    ready again within a minute of a fault."""
    reasons = [
        k for k in ("lost", "duplicated", "unexpected", "read_model_diff") if out["tally"][k]
    ]
    if out["reads"]["stale"]:
        reasons.append("stale reads")
    if not out["verify"]["caught_up"]:
        reasons.append("the read model did not catch up")
    reasons += [f"a replica not ready again after {fault}" for fault in out["not_ready_after"]]
    return reasons


def lines(out: dict[str, Any]) -> list[str]:
    printed = []
    for row in out["faults"]:
        printed.append(
            f"chaos: {row['fault']:<20} {row['spell_s']:>4} s: commands {_impact(row['commands'])};"
            f" reads {_impact(row['reads'])}"
        )
    t, reads = out["tally"], out["reads"]
    printed.append(
        f"chaos: {t['transactions']} writes in the log; in doubt {t['in_doubt']}, rejected"
        f" {t['rejected']}, refused {t['refused']}, shed {t['shed']}; reads with after="
        f" {reads['with_after']}, failed {reads['failed']}, stale {reads['stale']};"
        f" log {out['verify']['log_position']}, read model {out['verify']['read_position']}"
    )
    printed += [f"chaos: finding: {f}" for f in out["findings"]]
    printed += [f"chaos: difference: {d}" for d in out["differences"]]
    printed.append(
        f"chaos: acknowledged={t['acknowledged']} lost={t['lost']} duplicated={t['duplicated']}"
        f" unexpected={t['unexpected']} read_model_diff={t['read_model_diff']}"
        f" held_streams={t['held_streams']}"
    )
    return printed


def _impact(found: dict[str, Any]) -> str:
    kinds = ", ".join(f"{kind} x{n}" for kind, n in found["failures"].items())
    p99 = "-" if found["p99_ms"] is None else f"{found['p99_ms']} ms"
    failed = f"{found['failed']}/{found['requests']} failed"
    return f"{failed}{f' ({kinds})' if kinds else ''} over {found['failing_s']} s, p99 {p99}"


def _failed_requests(found: Findings, limit: int = 500) -> list[dict[str, Any]]:
    """The failed commands and reads (the first `limit`), each with the replica it went to
    and when, in seconds from the first request: what to look at when a fault hurt."""
    traffic = found.traffic
    first = min((a.started for a in traffic.attempts), default=0.0)
    failed: list[dict[str, Any]] = [
        {"at_s": round(a.started - first, 2), "command": a.op, "status": a.status,
         "refused": a.refused, "replica": a.replica}
        for a in traffic.attempts if a.failed
    ]  # fmt: skip
    failed += [
        {"at_s": round(r.started - first, 2), "read": True, "status": r.status,
         "replica": r.replica}
        for r in traffic.reads if r.failed
    ]  # fmt: skip
    return sorted(failed, key=lambda f: float(f["at_s"]))[:limit]
