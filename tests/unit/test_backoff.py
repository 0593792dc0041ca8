"""Retry delays grow, stay capped, are jittered and reset."""

from __future__ import annotations

from app.plumbing.backoff import Backoff


def test_backoff_grows_stays_capped_and_resets() -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 2.0 for d in delays)
    assert delays[-1] >= 1.0
    backoff.reset()
    assert backoff.next_delay() <= 0.1
