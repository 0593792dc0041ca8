"""Unit tests of the relay's pure parts: gap planning, gap proofs, backoff, lock keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app.relay.gaps import GapProof, GapTracker, plan_batch
from app.relay.session import lock_key


@dataclass(frozen=True)
class Row:
    position: int


def rows(*positions: int) -> list[Row]:
    return [Row(p) for p in positions]


def published(plan_rows: list[Row]) -> list[int]:
    return [r.position for r in plan_rows]


def test_a_contiguous_batch_goes_out_whole() -> None:
    plan = plan_batch(3, rows(4, 5, 6), dead_through=0)
    assert published(plan.publish) == [4, 5, 6]
    assert plan.blocked_at is None


def test_a_gap_stops_the_batch_before_it() -> None:
    plan = plan_batch(3, rows(4, 6, 7), dead_through=0)
    assert published(plan.publish) == [4]
    assert plan.blocked_at == 5


def test_a_gap_right_after_the_last_published_blocks_everything() -> None:
    plan = plan_batch(3, rows(5, 6), dead_through=0)
    assert plan.publish == []
    assert plan.blocked_at == 4


def test_dead_positions_are_passed_but_only_up_to_the_proven_horizon() -> None:
    plan = plan_batch(3, rows(5, 7, 9), dead_through=6)
    assert published(plan.publish) == [5, 7]
    assert plan.blocked_at == 8


def test_a_run_of_missing_positions_reaching_past_the_horizon_blocks_at_the_horizon() -> None:
    plan = plan_batch(3, rows(9), dead_through=5)
    assert plan.publish == []
    assert plan.blocked_at == 6


def test_an_empty_read_has_no_gap() -> None:
    plan = plan_batch(3, rows(), dead_through=0)
    assert plan.publish == []
    assert plan.blocked_at is None


def test_a_proof_awaits_xip_and_every_id_from_xmax_to_one_assigned_after() -> None:
    proof = GapProof.seen(horizon=9, xip=[700, 702], xmax=705, assigned_after=708)
    # 705..707 may be running writers that got their ids after the latest completed one.
    assert proof.xids == {700, 702, 705, 706, 707}


def test_a_proof_with_nobody_in_flight_awaits_nothing() -> None:
    assert GapProof.seen(horizon=9, xip=[], xmax=705, assigned_after=705).xids == frozenset()


def test_a_blocking_gap_wants_a_proof_until_one_covers_it() -> None:
    tracker = GapTracker()
    plan = tracker.plan(0, rows(1, 3, 4))
    assert tracker.wants_proof(plan)
    tracker.prove(GapProof(horizon=4, xids=frozenset({700})))
    assert tracker.xids_to_await() == frozenset({700})
    assert not tracker.wants_proof(tracker.plan(1, rows(3, 4, 9)))
    assert tracker.wants_proof(tracker.plan(4, rows(6)))


def test_an_unblocked_plan_wants_no_proof() -> None:
    tracker = GapTracker()
    assert not tracker.wants_proof(tracker.plan(0, rows(1, 2)))


def test_settling_the_proof_lets_the_next_read_pass_what_is_still_missing() -> None:
    tracker = GapTracker()
    tracker.prove(GapProof(horizon=4, xids=frozenset({700})))
    tracker.settle()
    plan = tracker.plan(1, rows(3, 4, 6))
    assert published(plan.publish) == [3, 4]
    assert plan.blocked_at == 5  # beyond the old horizon: needs its own proof
    assert tracker.proof is None


def test_a_late_commit_shows_up_before_the_proof_is_settled() -> None:
    tracker = GapTracker()
    tracker.prove(GapProof(horizon=3, xids=frozenset({700})))
    plan = tracker.plan(1, rows(2, 3))
    assert published(plan.publish) == [2, 3]


def test_without_a_proof_nothing_is_awaited_and_settle_is_a_no_op() -> None:
    tracker = GapTracker()
    assert tracker.xids_to_await() is None
    tracker.settle()
    assert tracker.dead_through == 0


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("main", -8488868382402858526),
        ("test-abc", -7729600652979181003),
        ("", -2800630789234631092),
    ],
)
def test_lock_keys_are_pinned_signed_64_bit(name: str, key: int) -> None:
    """Pinned: replicas of two releases must contend for the same advisory lock, so a change
    of the key derivation would let two relays lead at once during a rolling deploy."""
    assert lock_key(name) == key
    assert -(2**63) <= key < 2**63


def test_different_relay_names_get_different_lock_keys() -> None:
    assert lock_key("a") != lock_key("b")
