"""One bad event holds one stream, never the read side (docs/architecture.md §6).

`GuardedStore.store` applies a run of events as one batch. When the batch fails for a reason
retrying will not fix (anything but a connection, timeout or server-unavailable error), the
events are applied one at a time to find the culprit; the culprit is retried a bounded number of
times with backoff, then parked and its stream held (app/projector/holds.py), and the rest of
the run continues: later events of a held stream are parked behind it, every other stream is
applied, and the applied position moves past them all. Transient failures are raised for the
caller to retry the whole run, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import asyncpg
from pymongo.errors import (
    BulkWriteError,
    ClientBulkWriteException,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    WTimeoutError,
)

from app.contracts.generations import ReadModel
from app.plumbing.backoff import Backoff
from app.plumbing.failures import POSTGRES_FAILURES
from app.projector import holds, readmodel
from app.projector.counters import ProjectorCounters
from app.projector.deliveries import Decoded

log = logging.getLogger(__name__)

# MongoDB server codes that mean "not now" rather than "never": shutting down, stepped down,
# interrupted, out of time, unreachable peers.
_TRANSIENT_CODES: Final = frozenset({6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same writes later can succeed (a dependency is down or slow)."""
    if isinstance(exc, (BulkWriteError, ClientBulkWriteException)):  # one or all collections
        details = exc.details or {}
        codes = {e.get("code") for e in details.get("writeErrors", [])}
        return bool(details.get("writeConcernErrors")) or (
            bool(codes) and codes <= _TRANSIENT_CODES
        )
    if isinstance(exc, OperationFailure) and not isinstance(exc, ExecutionTimeout):
        return exc.code in _TRANSIENT_CODES
    return isinstance(
        exc,
        (
            ConnectionFailure,
            ExecutionTimeout,
            WTimeoutError,
            readmodel.ReadModelLost,
            *POSTGRES_FAILURES,
        ),
    )


class GuardedStore:
    """The projector's writes to the read model (the generation `model` names at the time of
    each write), with the poison policy above."""

    def __init__(
        self,
        model: ReadModel,
        pool: asyncpg.Pool,
        counters: ProjectorCounters,
        attempts: int,
        backoff: tuple[float, float],
        *,
        holds_streams: bool = True,
    ) -> None:
        self._model, self._pool, self._counters = model, pool, counters
        self._attempts = attempts
        self._backoff = backoff
        # False for a rebuild's catch-up: a failure of the new code stops the rebuild
        # (ProjectionFailed) rather than hold the stream for the live projector too
        self._holds_streams = holds_streams
        self._known = readmodel.KnownDocuments()

    async def store(self, events: Sequence[Decoded], expected: int | None) -> None:
        """Apply `events` (ascending, after `expected`) and store the last one's position as
        applied, parking what cannot be applied. Raises only transient failures."""
        if not events:
            return
        through = events[-1].position
        pending, position = list(events), expected
        while True:
            pending = await self._park_held(pending)
            try:
                await readmodel.apply_events(
                    self._model.db, pending, position, through, self._known
                )
                return
            except Exception as exc:
                if is_transient(exc):
                    raise
                pending, position = await self._isolate(pending, position)

    async def _isolate(
        self, pending: list[Decoded], position: int | None
    ) -> tuple[list[Decoded], int | None]:
        """Apply `pending` one event at a time up to the first that fails for good, which is
        held; returns the events after it and the position applied."""
        for index, event in enumerate(pending):
            if await self._apply_one(event, position):
                position = event.position
                continue
            return pending[index + 1 :], position
        return [], position

    async def _apply_one(self, event: Decoded, position: int | None) -> bool:
        """True once `event` is applied; False when it failed every attempt and was held."""
        backoff, first_failed_at = Backoff(*self._backoff), datetime.now(UTC)
        attempts = 1 if event.skipped == "invalid-data" else self._attempts  # never changes
        for attempt in range(1, attempts + 1):
            try:
                await readmodel.apply_events(self._model.db, [event], position, known=self._known)
                return True
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc
            if attempt < attempts:
                await asyncio.sleep(backoff.next_delay())
        if not self._holds_streams:
            raise readmodel.ProjectionFailed(event.position, error)
        async with self._pool.acquire() as conn:
            await holds.hold(conn, event, error, attempts, first_failed_at)
        self._counters.parkings += 1
        log.warning(
            "projector parked event %d (%s %s:%s) after %d attempts, holding its stream: %r",
            event.position,
            event.envelope.type,
            *holds.stream_of(event),
            attempts,
            error,
            extra={"position": event.position, "correlation_id": event.envelope.correlation_id},
        )
        return False

    async def _park_held(self, pending: list[Decoded]) -> list[Decoded]:
        """Park the events of `pending` whose streams are held; returns the others."""
        if not pending:
            return pending
        while True:
            async with self._pool.acquire() as conn:
                held = await holds.held_streams(conn)
                behind = [e for e in pending if holds.stream_of(e) in held]
                try:
                    await holds.park_behind(conn, behind)
                except holds.HoldReleased:
                    continue  # released meanwhile: read the holds again
            break
        for event in behind:
            self._counters.parkings += 1
            log.warning(
                "projector parked event %d (%s %s:%s): its stream is held",
                event.position,
                event.envelope.type,
                *holds.stream_of(event),
                extra={"position": event.position, "correlation_id": event.envelope.correlation_id},
            )
        return [e for e in pending if holds.stream_of(e) not in held]
