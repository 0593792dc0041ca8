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


def test_each_delay_is_drawn_from_the_upper_half_of_its_ceiling() -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0)
    ceilings = [min(2.0, 0.1 * 2.0**attempt) for attempt in range(20)]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling


def test_replicas_do_not_retry_in_step() -> None:
    sequences = [[b.next_delay() for _ in range(20)] for b in (Backoff(), Backoff())]
    assert sequences[0] != sequences[1]
    # spread over the whole upper half, not bunched: 200 replicas' first delays in [0.05, 0.1]
    firsts = [Backoff(base_s=0.1).next_delay() for _ in range(200)]
    assert min(firsts) < 0.0625
    assert max(firsts) > 0.0875
    assert len(set(firsts)) == len(firsts)
