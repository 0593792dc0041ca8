"""The tally of a chaos run: what the clients were told, against the event log and the read
model. Pure: it takes records and returns counts, so tests/unit/test_chaos_tally.py can feed it
made-up histories.

- lost: a command answered 2xx (a key's answers counted once) whose write is not in the log
  (no transaction carries its correlation id, or, for a replayed answer, its Idempotency-Key;
  or the position it was told is not one of that write's), or whose events the read model has
  not applied after catch-up.
- duplicated: an effect applied twice: more than one transaction for one Idempotency-Key or for
  one request, or a position counted twice in an order's status history.
- unexpected: a transaction in the log that no acknowledged or in-doubt request explains (one
  that was rejected with a 4xx, refused at connect, or never sent).
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bench.http_load import percentile

Stream = tuple[str, str]  # (stream_type, stream_id)


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"  # 2xx: the client was told it happened
    REJECTED = "rejected"  # 4xx: the client was told nothing happened
    IN_DOUBT = "in_doubt"  # 5xx, a timeout, a connection lost mid-request: it may have happened
    REFUSED = "refused"  # the connection was refused: the request was never sent


@dataclass
class Attempt:
    """One HTTP command as the client sent it and what it was told."""

    op: str
    correlation_id: str
    idempotency_key: str | None
    started: float  # when it was due (open loop), monotonic seconds
    ended: float | None = None
    status: int | None = None  # None: no answer (timeout, connection error, cancelled)
    refused: bool = False
    replayed: bool = False
    position: int | None = None  # from the 2xx body
    replica: str = ""  # which one it was sent to

    @property
    def outcome(self) -> Outcome:
        if self.refused:
            return Outcome.REFUSED
        if self.status is None or self.status >= 500:
            return Outcome.IN_DOUBT
        return Outcome.ACKNOWLEDGED if 200 <= self.status < 300 else Outcome.REJECTED

    @property
    def failed(self) -> bool:
        """Failed as a user sees it: 5xx, a timeout or a connection error."""
        return self.outcome in (Outcome.IN_DOUBT, Outcome.REFUSED)


@dataclass
class Read:
    """One query with `after=<position>`."""

    started: float
    ended: float | None = None
    status: int | None = None
    stale: bool = False  # answered 200 with a state older than the write it waited for
    refused: bool = False
    replica: str = ""

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500


@dataclass(frozen=True)
class LoggedEvent:
    """One row of the event log with the transaction that wrote it."""

    position: int
    transaction: str  # xmin of the row
    stream: Stream
    stream_version: int
    correlation_id: str | None
    idempotency_key: str | None


@dataclass(frozen=True)
class Document:
    """What the read model holds for one stream."""

    version: int
    history: tuple[int, ...] = ()  # positions in an order's status history


@dataclass
class Tally:
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    in_doubt: int = 0
    rejected: int = 0
    refused: int = 0
    transactions: int = 0
    examples: list[str] = field(default_factory=list)  # the first few findings, for the report
    lost_effects: set[str] = field(default_factory=set)  # a key's (or request's) answers count once

    def note(self, finding: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(finding)


def _transactions(log: Iterable[LoggedEvent]) -> dict[str, list[LoggedEvent]]:
    written: dict[str, list[LoggedEvent]] = defaultdict(list)
    for event in log:
        written[event.transaction].append(event)
    return written


def _applied(events: list[LoggedEvent], documents: Mapping[Stream, Document]) -> bool:
    return all(
        (doc := documents.get(e.stream)) is not None and doc.version >= e.stream_version
        for e in events
    )


def tally(
    attempts: Iterable[Attempt],
    log: Iterable[LoggedEvent],
    documents: Mapping[Stream, Document],
    held: frozenset[Stream] = frozenset(),
) -> Tally:
    """Count lost, duplicated and unexpected effects (module docstring). `documents` is the
    read model after catch-up; streams in `held` are behind a parked event, so their documents
    are not expected to be current (verify reports those)."""
    result = Tally()
    written = _Written(_transactions(log))
    result.transactions = len(written.events)
    explaining: set[str] = set()
    for attempt in attempts:
        outcome = attempt.outcome
        if outcome is Outcome.ACKNOWLEDGED:
            result.acknowledged += 1
            explaining.add(attempt.correlation_id)
            _check_acknowledged(attempt, written, documents, held, result)
        elif outcome is Outcome.IN_DOUBT:
            result.in_doubt += 1
            explaining.add(attempt.correlation_id)
        elif outcome is Outcome.REJECTED:
            result.rejected += 1
        else:
            result.refused += 1
    _count_duplicates(written, documents, result)
    for events in written.events.values():
        if events[0].correlation_id not in explaining:
            result.unexpected += 1
            result.note(f"unexpected: a write no request explains, {_positions(events)}")
    return result


class _Written:
    """The log's transactions, and which of them each request and each key wrote."""

    def __init__(self, events: dict[str, list[LoggedEvent]]) -> None:
        self.events = events
        self.by_request: dict[str, list[str]] = defaultdict(list)
        # one effect each: the key's when the request had one, else the request's own
        self.by_effect: dict[str, list[str]] = defaultdict(list)
        for transaction, rows in events.items():
            correlation, key = rows[0].correlation_id, rows[0].idempotency_key
            if correlation is not None:
                self.by_request[correlation].append(transaction)
            effect = f"key {key}" if key else f"request {correlation or transaction}"
            self.by_effect[effect].append(transaction)

    def of(self, attempt: Attempt) -> list[list[LoggedEvent]]:
        """The writes an acknowledged attempt answers for: a replay, its key's."""
        if attempt.replayed and attempt.idempotency_key is not None:
            transactions = self.by_effect.get(f"key {attempt.idempotency_key}", [])
        else:
            transactions = self.by_request.get(attempt.correlation_id, [])
        return [self.events[t] for t in transactions]


def _positions(events: list[LoggedEvent]) -> str:
    return "positions " + ",".join(str(e.position) for e in events)


def _check_acknowledged(
    attempt: Attempt,
    written: _Written,
    documents: Mapping[Stream, Document],
    held: frozenset[Stream],
    result: Tally,
) -> None:
    """A 2xx answer must name a position of its own write (for a replay, the write of its
    key), and the read model must hold every event of that write."""
    effect = attempt.idempotency_key or attempt.correlation_id  # its answers count once
    write = next((w for w in written.of(attempt) if attempt.position in _own(w)), None)
    if write is None:
        problem = f"lost: {attempt.op} {attempt.correlation_id} told {attempt.position}"
    elif not _applied([e for e in write if e.stream not in held], documents):
        problem = f"lost in the read model: {attempt.op} told {attempt.position}"
    else:
        return
    if effect not in result.lost_effects:
        result.lost_effects.add(effect)
        result.lost += 1
        result.note(problem)


def _own(write: list[LoggedEvent]) -> set[int]:
    return {e.position for e in write}


def _count_duplicates(
    written: _Written, documents: Mapping[Stream, Document], result: Tally
) -> None:
    for effect, transactions in written.by_effect.items():
        if len(transactions) > 1:
            result.duplicated += len(transactions) - 1
            result.note(f"duplicated: {effect} written {len(transactions)} times")
    for stream, document in documents.items():
        if (repeats := len(document.history) - len(set(document.history))) > 0:
            result.duplicated += repeats
            result.note(f"duplicated: {stream} counts a position twice in its history")


@dataclass(frozen=True)
class Window:
    """One fault: injected at `started`, healed at `healed`, the next one began at `ended`."""

    name: str
    started: float
    healed: float
    ended: float


@dataclass(frozen=True)
class Impact:
    """How a fault showed to the clients."""

    requests: int
    failed: int
    failing_s: float  # first failure's start to last failure's end, in the fault and recovery
    failures: dict[str, int]  # by kind: "503", "timeout", "refused", ...
    p99_s: float | None  # latency of the requests started during the fault itself (None: none)


def impact(window: Window, requests: Iterable[Attempt | Read]) -> Impact:
    """What the requests answered between the fault and the next one went through (by when
    they were answered, so one sent just before a fault and failed by it counts for it; an
    unanswered one by when it was sent). The p99 is of the ones sent during the fault."""
    requests = list(requests)
    inside = [r for r in requests if window.started <= _settled(r) < window.ended]
    failed = [r for r in inside if r.failed]
    span = max(_settled(r) for r in failed) - min(r.started for r in failed) if failed else 0.0
    during = [
        (r.ended if r.ended is not None else window.ended) - r.started
        for r in requests
        if window.started <= r.started < window.healed
    ]
    kinds = Counter(_failure(r) for r in failed)
    p99 = percentile(during, 99) if during else None
    return Impact(len(inside), len(failed), span, dict(sorted(kinds.items())), p99)


def _settled(request: Attempt | Read) -> float:
    return request.ended if request.ended is not None else request.started


def _failure(request: Attempt | Read) -> str:
    if request.refused:
        return "refused"
    return "no answer" if request.status is None else str(request.status)
