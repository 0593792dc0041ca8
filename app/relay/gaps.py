"""Deciding which missing log positions the relay may pass, as pure state
(docs/architecture.md §4).

A position is drawn inside a transaction that already owns a transaction id (the events
trigger takes it before `nextval`), and the sequence hands positions out in time order. So when
a snapshot S shows a row at position q but not at p < q, the writer of p got its id before S
was taken: either it had already ended (then p is visible in S if it committed, so it rolled
back) or it was still running. A running writer is in S's `xip` only if its id is below S's
`xmax`, which is one past the latest *completed* id, not the next id to hand out: a writer that
got a higher id than every finished one is running but absent from `xip`. So the writers that
could still fill p are `xip(S)` plus every id from `xmax(S)` up to (excluding) an id assigned
after S. Once all of them have ended, a read under any later snapshot shows every position
<= q that will ever exist; the ones it still lacks are dead for good. No timer is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Positioned(Protocol):
    @property
    def position(self) -> int: ...


E = TypeVar("E", bound=Positioned)


@dataclass(frozen=True, slots=True)
class GapProof:
    """Seen under one snapshot: positions <= `horizon` missing from it can only be filled by
    one of `xids` (that snapshot's in-progress transactions)."""

    horizon: int
    xids: frozenset[int]

    @classmethod
    def seen(cls, horizon: int, xip: Sequence[int], xmax: int, assigned_after: int) -> GapProof:
        """The proof for a gap below `horizon` seen under a snapshot with `xip` and `xmax`;
        `assigned_after` is a transaction id assigned after that snapshot was taken."""
        return cls(horizon=horizon, xids=frozenset(xip).union(range(xmax, assigned_after)))


@dataclass(frozen=True, slots=True)
class Plan(Generic[E]):
    publish: list[E]
    blocked_at: int | None  # the first missing position not yet proven dead, if any


def plan_batch(last: int, events: Sequence[E], dead_through: int) -> Plan[E]:
    """The events of `events` (ascending positions > `last`, one snapshot) that may go out
    now: a contiguous run after `last`, passing only missing positions <= `dead_through`."""
    publish: list[E] = []
    expected = last + 1
    for event in events:
        if event.position > expected and event.position - 1 > dead_through:
            # The run of missing positions reaches past what is proven dead.
            return Plan(publish, max(expected, dead_through + 1))
        publish.append(event)
        expected = event.position + 1
    return Plan(publish, None)


class GapTracker:
    """What the relay knows about missing positions between reads; lives in memory only (a
    restarted relay simply proves its gaps again)."""

    def __init__(self) -> None:
        self.dead_through = 0
        self.proof: GapProof | None = None

    def xids_to_await(self) -> frozenset[int] | None:
        """The xids that must all have ended before the pending proof may be settled."""
        return None if self.proof is None else self.proof.xids

    def settle(self) -> None:
        """Call once every xid of the proof has ended, *before* taking the next snapshot:
        positions up to its horizon missing from any later read are dead."""
        if self.proof is not None:
            self.dead_through = max(self.dead_through, self.proof.horizon)
            self.proof = None

    def plan(self, last: int, events: Sequence[E]) -> Plan[E]:
        """Plan a batch of ascending positions > `last`, all read under one snapshot."""
        return plan_batch(last, events, self.dead_through)

    def wants_proof(self, plan: Plan[E]) -> bool:
        """Whether `plan` is blocked by a gap no pending proof covers yet (an older pending
        proof covering it is kept: its writers are a subset of any later one's)."""
        return plan.blocked_at is not None and (
            self.proof is None or self.proof.horizon < plan.blocked_at
        )

    def prove(self, proof: GapProof) -> None:
        self.proof = proof
