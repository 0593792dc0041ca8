"""The chaos run's tally (chaos/tally.py) counts what it claims to: a lost, a duplicated and an
unexpected effect are each seen, and a clean history counts none."""

from __future__ import annotations

import itertools

import pytest

from chaos.tally import Attempt, Document, LoggedEvent, Read, Stream, Window, impact, tally

_positions = itertools.count(1)
_transactions = itertools.count(1000)

ORDER: Stream = ("order", "o-1")
PRODUCT: Stream = ("product", "p-1")


def _attempt(
    correlation: str, status: int | None, position: int | None = None, **more: object
) -> Attempt:
    attempt = Attempt("place_order", correlation, None, started=0.0, ended=0.1, status=status)
    attempt.position = position
    for name, value in more.items():
        setattr(attempt, name, value)
    return attempt


def _write(
    correlation: str, *streams: tuple[Stream, int], key: str | None = None
) -> list[LoggedEvent]:
    """One transaction appending an event to each (stream, stream version)."""
    transaction = str(next(_transactions))
    return [
        LoggedEvent(next(_positions), transaction, stream, version, correlation, key)
        for stream, version in streams
    ]


def _clean() -> tuple[list[Attempt], list[LoggedEvent], dict[Stream, Document]]:
    """A product created, an order placed with a key (answered, then replayed), and a
    refused payment that wrote nothing: every effect explained and applied."""
    created = _write("c-create", (PRODUCT, 1))
    placed = _write("c-place", (ORDER, 1), (PRODUCT, 2), key="k-1")
    attempts = [
        _attempt("c-create", 201, created[-1].position),
        _attempt("c-place", 201, placed[-1].position, idempotency_key="k-1"),
        _attempt("c-retry", 201, placed[-1].position, idempotency_key="k-1", replayed=True),
        _attempt("c-refused", 409),
    ]
    documents = {ORDER: Document(1, (placed[0].position,)), PRODUCT: Document(2)}
    return attempts, [*created, *placed], documents


def test_a_clean_history_counts_nothing() -> None:
    attempts, log, documents = _clean()
    counted = tally(attempts, log, documents)
    assert (counted.acknowledged, counted.rejected, counted.transactions) == (3, 1, 2)
    assert (counted.lost, counted.duplicated, counted.unexpected) == (0, 0, 0)


def test_an_acknowledged_command_missing_from_the_log_is_lost() -> None:
    attempts, log, documents = _clean()
    attempts.append(_attempt("c-vanished", 201, 999))
    counted = tally(attempts, log, documents)
    assert (counted.lost, counted.duplicated, counted.unexpected) == (1, 0, 0)
    assert counted.examples == ["lost: place_order c-vanished told 999"]


def test_a_position_the_read_model_never_applied_is_lost_unless_its_stream_is_held() -> None:
    attempts, log, documents = _clean()
    behind = {**documents, PRODUCT: Document(1)}  # the order's reservation never applied
    assert tally(attempts, log, behind).lost == 1
    assert tally(attempts, log, {ORDER: documents[ORDER]}).lost == 2
    assert tally(attempts, log, behind, held=frozenset({PRODUCT})).lost == 0


def test_a_retry_that_wrote_again_is_duplicated() -> None:
    attempts, log, documents = _clean()
    again = _write("c-retry-2", (ORDER, 2), key="k-1")
    attempts.append(_attempt("c-retry-2", None, idempotency_key="k-1"))  # timed out
    counted = tally(attempts, [*log, *again], documents)
    assert (counted.lost, counted.duplicated, counted.unexpected) == (0, 1, 0)


def test_a_position_counted_twice_in_a_document_is_duplicated() -> None:
    attempts, log, documents = _clean()
    twice = {**documents, ORDER: Document(1, (log[1].position, log[1].position))}
    assert tally(attempts, log, twice).duplicated == 1


@pytest.mark.parametrize(
    ("correlation", "status", "refused"),
    [
        ("c-refused", 409, False),  # rejected, yet it wrote
        ("c-never-sent", None, True),  # the connection was refused, yet it wrote
        ("c-stranger", None, False),  # nobody sent it
    ],
)
def test_a_write_no_acknowledged_or_in_doubt_request_explains_is_unexpected(
    correlation: str, status: int | None, refused: bool
) -> None:
    attempts, log, documents = _clean()
    if correlation != "c-stranger":
        attempts.append(_attempt(correlation, status, refused=refused))
    stray = _write(correlation, (PRODUCT, 3))
    documents[PRODUCT] = Document(3)
    counted = tally(attempts, [*log, *stray], documents)
    assert (counted.lost, counted.duplicated, counted.unexpected) == (0, 0, 1)


def test_a_write_of_an_in_doubt_request_is_explained() -> None:
    attempts, log, documents = _clean()
    attempts.append(_attempt("c-timed-out", None))
    attempts.append(_attempt("c-503", 503))
    written = [*_write("c-timed-out", (PRODUCT, 3)), *_write("c-503", (PRODUCT, 4))]
    documents[PRODUCT] = Document(4)
    counted = tally(attempts, [*log, *written], documents)
    assert (counted.in_doubt, counted.unexpected, counted.lost) == (2, 0, 0)


def test_impact_counts_what_failed_in_the_fault_and_the_p99_of_what_was_sent_in_it() -> None:
    window = Window("cut", started=10.0, healed=13.0, ended=20.0)
    requests = [
        Read(started=9.0, ended=9.5, status=503),  # answered before the fault: not its doing
        Read(started=9.9, ended=10.4, status=None),  # sent just before, cut by it: its doing
        Read(started=10.5, ended=11.0, status=200),
        Read(started=11.0, ended=16.0, status=503),
        Read(started=14.0, ended=14.1, status=200),  # sent in the recovery: not in the p99
    ]
    found = impact(window, requests)
    assert (found.requests, found.failed, found.failing_s) == (4, 2, 6.1)
    assert found.failures == {"503": 1, "no answer": 1}
    assert found.p99_s == 5.0
    assert impact(Window("none", 30.0, 31.0, 32.0), requests).p99_s is None
