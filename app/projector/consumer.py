"""The projector: consumes the event queue and applies it to the read model in log order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import aiormq
import aiormq.abc
import asyncpg
from opentelemetry.trace import SpanKind
from prometheus_client import Histogram
from pymongo.errors import PyMongoError

from app.contracts.eventlog import settled_position
from app.contracts.generations import ReadModel
from app.contracts.readmodel import ensure_indexes
from app.contracts.topology import Topology
from app.plumbing.backoff import Backoff
from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import BrokerConnect, close_broker
from app.plumbing.tracing import start_span
from app.projector import readmodel
from app.projector.applied import AppliedPosition
from app.projector.counters import ProjectorCounters
from app.projector.deliveries import Decoded, Gap, plan, read_gap
from app.projector.inbox import Message, decode, park, subscribe, take
from app.projector.poison import GuardedStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# Mongo or PostgreSQL unavailable or slow: the batch is retried, its messages stay unacked.
_TRANSIENT: Final = (PyMongoError, *POSTGRES_FAILURES, readmodel.ReadModelLost)
# The AMQP channel or connection is gone: reconnect; the broker redelivers what was unacked.
_DISCONNECTED: Final = (aiormq.AMQPError, aiormq.ChannelInvalidStateError, ConnectionError)


_GAP_CHUNK: Final = 5000  # positions read from the log and applied at a time
_LAG_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Awaited after events are stored and before readers are woken for them, with the read-model
# database written, the ids of the products they may have changed, and the last position
# stored (the read cache's invalidation: app/queries/cache.py). It must not raise.
OnStored = Callable[[str, frozenset[str], int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProjectorConfig:
    """The projector's knobs (PROJECTOR_* settings). `relay_name` names the relay checkpoint
    that says how far the log is settled (app/contracts/eventlog.py)."""

    topology: Topology
    relay_name: str
    batch_size: int = 256
    prefetch: int = 512
    idle_check_s: float = 1.0
    poison_attempts: int = 3  # tries of an event that fails for good before it is parked


class Projector:
    """Single active consumer of `config.topology.projector_queue` maintaining the read model.

    Status for health and metrics: `connected`, `position` (applied) and `counters`.
    """

    def __init__(
        self,
        config: ProjectorConfig,
        pool: asyncpg.Pool,
        model: ReadModel,
        connect_broker: BrokerConnect,
        applied: AppliedPosition,
        *,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        on_stored: OnStored | None = None,
    ) -> None:
        self._config, self._pool, self._model = config, pool, model
        self._on_stored = on_stored
        self._connect_broker = connect_broker
        self.applied = applied
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._position: int | None = None
        self._reload = False
        self._idle_position = -1
        self.connected = False
        self.counters = ProjectorCounters()
        # unregistered: the app's metrics collector exports it (app/operations/metrics.py)
        self.lag_seconds = Histogram(
            "shop_read_model_lag_seconds",
            "From an event's transaction time to the projector storing it.",
            buckets=_LAG_BUCKETS,
            registry=None,
        )
        self._guard = GuardedStore(
            model, pool, self.counters, config.poison_attempts, (backoff_initial_s, backoff_max_s)
        )
        # reset only once a batch is stored: a consumer that connects and fails at once must
        # not reconnect in a tight loop
        self._reconnect = Backoff(backoff_initial_s, backoff_max_s)

    @property
    def position(self) -> int:
        return self.applied.current

    async def run(self) -> None:
        """Run until cancelled: load the applied position, then consume, reconnecting with
        backoff whenever the broker connection is lost. Closes its connection on the way out."""
        self._position = await self._retry(self._start)
        self.applied.advance(self._position)
        while True:
            try:
                await self._consume()
            except _DISCONNECTED as exc:
                log.warning("projector lost the broker, reconnecting: %r", exc)
            except Exception:
                # A bug or a surprise from a library must not stop the read model for good:
                # the messages stay unacked and come back after the reconnect.
                log.exception("projector failed unexpectedly, reconnecting")
            self.counters.reconnects += 1
            await asyncio.sleep(self._reconnect.next_delay())

    async def _start(self) -> int:
        await self._model.refresh()
        await ensure_indexes(self._model.db)
        return await self._model.position()

    async def _consume(self) -> None:
        connection = await self._connect_broker()
        try:
            channel = await connection.channel()
            inbox = await subscribe(channel, self._config.topology, self._config.prefetch)
            self.connected = True
            limit, idle_s = self._config.batch_size, self._config.idle_check_s
            while True:
                batch = await take(inbox, limit, idle_s)
                if batch:
                    await self._handle(channel, batch)
                else:
                    await self._retry(self._repair_stall)
        finally:
            self.connected = False
            await close_broker(connection)

    async def _handle(self, channel: aiormq.abc.AbstractChannel, batch: list[Message]) -> None:
        """Apply the batch (retrying until it is stored) and wake the readers waiting for it,
        park the undecodable, then ack it all."""
        decoded, parked = decode(batch)
        await self._retry(lambda: self._apply(decoded))
        self.counters.batches += 1
        assert self._position is not None
        self.applied.advance(self._position)  # stored: readers need not wait for the acks
        for message, reason in parked:
            await self._park(channel, message, reason)
        last_tag = max(m.delivery_tag or 0 for m in batch)
        await channel.basic_ack(last_tag, multiple=True)
        self._reconnect.reset()

    async def _apply(self, deliveries: list[Decoded]) -> None:
        if self._reload:
            await self._reload_position()
        assert self._position is not None
        steps = plan(self._position, deliveries)
        ready: list[Decoded] = []
        for step in steps:
            if isinstance(step, Gap):
                await self._store(ready)  # what precedes the gap goes first
                ready = []
                await self._fill(step)
            else:
                ready.append(step)
        await self._store(ready)
        self.counters.duplicates += len(deliveries) - sum(not isinstance(s, Gap) for s in steps)

    async def _store(self, events: list[Decoded]) -> None:
        """Apply `events` (in order, after the applied position) and move past them. Raises
        ReadModelLost when the store no longer holds what this projector applied."""
        if not events:
            return
        spans = [  # one per traced event: its projection, as a span of the command's trace
            start_span(e.traceparent, f"project {e.envelope.type}", SpanKind.CONSUMER)
            for e in events
            if e.traceparent is not None
        ]
        try:
            await self._guard.store(events, expected=self._position)
        finally:
            for span in spans:
                span.end()
        self._position = events[-1].position
        if self._on_stored is not None:
            products = {e.envelope.stream_id for e in events if e.envelope.stream_type == "product"}
            await self._on_stored(self._model.db.name, frozenset(products), self._position)
        stored_at = time.time()
        for event in events:
            self.lag_seconds.observe(stored_at - event.envelope.occurred_at.timestamp())
            if event.skipped == "invalid-data":
                self.counters.invalid_events += 1
            elif event.skipped == "unknown-type":
                self.counters.unknown_events += 1

    async def _fill(self, gap: Gap) -> None:
        """Read the positions of `gap` from the log and apply them, a bounded chunk at a time
        (a read model dropped and refilled from position 0 is one big gap)."""
        log.info("projector repairs positions %d..%d from the log", gap.after + 1, gap.through)
        async for events in read_gap(self._pool, gap, _GAP_CHUNK):
            await self._store(events)
            self.counters.repaired += len(events)

    async def _repair_stall(self) -> None:
        """Idle: a lost delivery is normally revealed by the next one's `prev_position`, but
        the last ones of a burst have no successor. So when the stored position stood still
        for two idle checks in a row below the relay's checkpoint (everything up to it is
        published or proven dead), read the missing events from the log."""
        stored = await self._stored_position()
        if stored is None:
            return
        stalled, self._idle_position = stored == self._idle_position, stored
        if self._position is None or stored > self._position:
            self._position = stored  # another replica's projector applied them
            self.applied.advance(stored)
        elif stored < self._position:
            await self._reset_to(stored)
        if not stalled:
            return
        async with self._pool.acquire() as conn:
            settled = await settled_position(conn, self._config.relay_name)
        if settled > stored:
            await self._fill(Gap(stored, settled))
            self.applied.advance(self._position)

    async def _reload_position(self) -> None:
        """After a storage failure trust the store, not memory: `meta` is written last, so it
        never claims a write the store does not hold. (Writes are journaled and the embedded
        store syncs each commit, so a crash keeps what it acknowledged; a store that lost
        acknowledged writes would have had the next batch written on top of the older
        documents before `meta` told, and their fences refuse the lost events: rebuild then.)"""
        stored = await self._stored_position()
        if stored is None:
            return
        if self._position is not None and stored < self._position:
            await self._reset_to(stored)
        self._position, self._reload = stored, False

    async def _stored_position(self) -> int | None:
        """The applied position stored in the current generation; None when a rebuild switched
        the read model to another generation, whose position is then taken as applied (it
        holds at least what the old one did when it was frozen; a gap after it is read from
        the log when the next delivery shows it)."""
        before = self._model.db.name
        await self._model.refresh()
        stored = await self._model.position()  # follows a superseded generation too
        if self._model.db.name == before:
            return stored
        log.info("projector follows the read model to %s at %d", self._model.db.name, stored)
        self._position, self._reload, self._idle_position = stored, False, -1
        return None

    async def _reset_to(self, stored: int) -> None:
        """The store went back to `stored` (restored, or it lost writes): re-apply from there,
        exact as long as nothing was written on top of the older documents meanwhile. A store
        with no position at all was dropped: whatever a batch wrote since is not a prefix (a
        customer created from its latest order only), so start from empty."""
        if stored == 0:
            log.warning("the read model was dropped: refilling it from the log")
            await readmodel.drop(self._model.db)
            await ensure_indexes(self._model.db)
        else:
            log.warning(
                "the read model went back to position %d: re-applying from there (unless it"
                " was restored, the store lost acknowledged writes: verify it, and rebuild it"
                " if it differs)",
                stored,
            )
        self._position = stored

    async def _park(
        self, channel: aiormq.abc.AbstractChannel, message: Message, reason: str
    ) -> None:
        await park(channel, message, reason, self._config.topology.parked_queue)
        self.counters.parked += 1
        log.warning("projector parked message %s: %s", message.header.properties.message_id, reason)

    async def _retry(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds; transient storage failures back off and retry
        (never skip: the messages stay unacked meanwhile)."""
        backoff = Backoff(*self._backoff)
        while True:
            try:
                return await attempt()
            except _TRANSIENT as exc:
                self.counters.retries += 1
                self._reload = True
                log.warning("projector storage failure, retrying: %r", exc)
            await asyncio.sleep(backoff.next_delay())
