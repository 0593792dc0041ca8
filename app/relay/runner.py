"""The relay (docs/architecture.md §4, §5): publishes the committed event log to the broker in
position order, never skipping a late commit, with windowed publisher confirms; one leader per
relay name.

Shape of a run: elect (advisory lock on a dedicated PostgreSQL session) → lead: connect to the
broker, declare the topology, then loop read → plan (app.relay.gaps) → publish → checkpoint.
A broker failure reconnects and republishes from the last confirmed position; a failure of the
PostgreSQL session gives up leadership and elects again. Duplicates across a failure are
allowed, loss and reordering are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.abc
import aiormq.exceptions

from app.contracts.topology import Topology, declare_topology
from app.plumbing.backoff import Backoff
from app.plumbing.resources import BrokerConnect, PostgresConnect, close_broker
from app.relay.gaps import GapProof, GapTracker
from app.relay.publisher import ConfirmWindow, PublishFailed
from app.relay.session import RelaySession, SessionFailed

log = logging.getLogger(__name__)

ELECTION_INTERVAL_S = 1.0  # how often a non-leader retries the lock
WATCH_INTERVAL_S = 1.0  # how often the leader proves its lock session is alive
# A leader whose session died waits this long before electing again, so a healthy replica
# (retrying every ELECTION_INTERVAL_S) takes over instead of the one that just failed.
HANDOVER_GRACE_S = 2.5
# At most one checkpoint save per interval, under load and at rest alike: a save per confirm
# put a PostgreSQL commit beside every order at low rates. A successor republishes at most
# that much more (duplicates are allowed, loss is not); a save owed is made when it ends.
CHECKPOINT_INTERVAL_S = 0.1

_BROKER_ERRORS = (
    OSError,
    TimeoutError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    PublishFailed,
)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The relay's knobs (RELAY_* settings); `timeout_s` bounds its session's connect and
    queries, so a hung leader is noticed."""

    name: str
    topology: Topology
    batch_size: int = 1000
    confirm_window: int = 256
    poll_interval_s: float = 0.2
    timeout_s: float = 10.0


class Relay:
    """Publishes the log to `config.topology.exchange` until cancelled.

    `wakeup` is set by the write side after each local commit; without it the relay polls
    every `config.poll_interval_s` (commits from other replicas). Status for health
    and metrics: `is_leader`, `connected` (to the broker, while leading), `published_position`
    (highest position confirmed by the broker with all its predecessors; while the broker
    answers, reported only once saved as the checkpoint), `waiting_on_gap`
    (the missing position it is proving, if any), `published` and `in_flight` (messages)."""

    def __init__(
        self,
        config: RelayConfig,
        connect_postgres: PostgresConnect,
        connect_broker: BrokerConnect,
        wakeup: asyncio.Event,
    ) -> None:
        self._config = config
        self._connect_postgres = connect_postgres
        self._connect_broker = connect_broker
        self._wakeup = wakeup
        self.is_leader = False
        self.connected = False
        self.published_position = 0
        self.waiting_on_gap: int | None = None
        self.lock_session_pid: int | None = None  # the backend holding (or seeking) the lock
        self.broker_connection: aiormq.abc.AbstractConnection | None = None
        self._window: ConfirmWindow | None = None
        self._published_before = 0  # confirmed on earlier channels
        self._saved_position = 0
        self._saved_at = -math.inf  # loop time of the last checkpoint save
        self._lost_lead = False

    async def run(self) -> None:
        """Run until cancelled; every failure is logged and retried with backoff, never raised.
        Cancellation closes the broker connection and the lock session."""
        backoff = Backoff()
        while True:
            try:
                await self._elect_and_lead(backoff)
            except SessionFailed as exc:
                log.warning("relay %s: PostgreSQL failed, will retry: %s", self._name, exc)
            except Exception:
                # A bug must not silently end publishing for the life of the process.
                log.exception("relay %s: unexpected failure, will retry", self._name)
            delay = backoff.next_delay()
            await asyncio.sleep(max(delay, HANDOVER_GRACE_S) if self._lost_lead else delay)

    @property
    def published(self) -> int:
        """Messages the broker confirmed since this relay started."""
        current = self._window.confirmed_count if self._window is not None else 0
        return self._published_before + current

    @property
    def in_flight(self) -> int:
        """Messages published and not yet confirmed."""
        return self._window.in_flight if self._window is not None else 0

    @property
    def _name(self) -> str:
        return self._config.name

    async def _elect_and_lead(self, backoff: Backoff) -> None:
        self._lost_lead = False
        session = await RelaySession.open(
            self._connect_postgres, self._name, self._config.timeout_s
        )
        self.lock_session_pid = session.pid
        try:
            await _acquire_lock(session)
            backoff.reset()
            self.is_leader = True
            log.info("relay %s: leader (PostgreSQL backend %d)", self._name, session.pid)
            await _first_failure(self._watch(session), self._lead(session))
        finally:
            if self.is_leader:
                self._lost_lead = True
                task = asyncio.current_task()
                stopping = task is not None and task.cancelling() > 0
                log.log(
                    logging.INFO if stopping else logging.WARNING,
                    "relay %s: leadership given up",
                    self._name,
                )
            self.is_leader = False
            self.waiting_on_gap = None
            self.lock_session_pid = None
            await session.close()

    async def _watch(self, session: RelaySession) -> None:
        """Raise SessionFailed as soon as the lock session is gone: at once when the
        connection drops, within a watch interval plus the query timeout when it hangs."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.lost.wait(), WATCH_INTERVAL_S)
            await session.ping()

    async def _lead(self, session: RelaySession) -> None:
        self._saved_position = self.published_position = await session.load_checkpoint()
        tracker = GapTracker()
        backoff = Backoff()
        while True:
            try:
                await self._publish_via_broker(session, tracker, backoff)
            except _BROKER_ERRORS as exc:
                log.warning("relay %s: broker failed, will reconnect: %r", self._name, exc)
            await asyncio.sleep(backoff.next_delay())

    async def _publish_via_broker(
        self, session: RelaySession, tracker: GapTracker, backoff: Backoff
    ) -> None:
        connection = await self._connect_broker()
        self.broker_connection = connection
        try:
            channel = await connection.channel(publisher_confirms=True)
            await declare_topology(channel, self._config.topology)
            self.connected = True
            backoff.reset()
            window = ConfirmWindow(
                channel, self._config.topology.exchange, self._config.confirm_window
            )
            window.confirmed = self.published_position
            self._window = window
            try:
                await self._pump(session, connection, window, tracker)
            finally:
                self.published_position = window.confirmed
                self._published_before += window.confirmed_count
                self._window = None
                window.abandon()
        finally:
            self.connected = False
            self.broker_connection = None
            await close_broker(connection)

    async def _pump(
        self,
        session: RelaySession,
        connection: aiormq.abc.AbstractConnection,
        window: ConfirmWindow,
        tracker: GapTracker,
    ) -> None:
        """Publish whatever the log allows, forever; returns only by raising.

        Confirms are not waited for before the next read: a commit that arrives while the
        broker confirms the previous messages is read and sent at once (the window bounds
        what is unconfirmed). The checkpoint follows the confirms while the relay rests."""
        last = self.published_position
        size = self._config.batch_size
        while True:
            self._wakeup.clear()
            xids = tracker.xids_to_await()
            # Checked before the read below, so that read's snapshot is taken after it.
            if xids is not None and await session.all_ended(xids):
                tracker.settle()
            batch = await session.read(last, size)
            plan = tracker.plan(last, batch.events)
            if tracker.wants_proof(plan):
                assigned_after = await session.assign_xid()
                horizon = batch.events[-1].position
                tracker.prove(GapProof.seen(horizon, batch.xip, batch.xmax, assigned_after))
            self.waiting_on_gap = plan.blocked_at
            for event in plan.publish:
                await window.publish(event, last)
                last = event.position
            if len(batch.events) == size and plan.blocked_at is None:
                await self._checkpoint(session, window)
                continue
            if plan.blocked_at is not None and tracker.xids_to_await() == frozenset():
                continue  # nobody was in flight: the gap is settled on the next read
            await self._rest(session, connection, window)

    def _next_save_at(self) -> float:
        """The loop time from which the next checkpoint save may be made."""
        return self._saved_at + CHECKPOINT_INTERVAL_S

    async def _checkpoint(self, session: RelaySession, window: ConfirmWindow) -> None:
        """Save the confirmed position, then report it: while leading, `published_position`
        never runs ahead of the checkpoint a successor would resume from. At most one save per
        CHECKPOINT_INTERVAL_S (`_next_save_at`): a save per read (under steady commits) or per
        confirm (at rest) would put a PostgreSQL commit beside every few orders."""
        confirmed = window.confirmed
        if confirmed <= self._saved_position:
            self.published_position = confirmed
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_save_at():
            return
        await session.save_checkpoint(confirmed)
        self._saved_position, self._saved_at = confirmed, loop.time()
        self.published_position = confirmed

    async def _rest(
        self,
        session: RelaySession,
        connection: aiormq.abc.AbstractConnection,
        window: ConfirmWindow,
    ) -> None:
        """Until a local commit or the poll interval, saving the checkpoint once what was sent
        is confirmed, at most once per CHECKPOINT_INTERVAL_S (a save that has to wait for it is
        made when it ends); raises PublishFailed when the broker connection closes or refused
        a message. A commit that came meanwhile ends it at once."""
        await self._checkpoint(session, window)
        loop = asyncio.get_running_loop()
        until = loop.time() + self._config.poll_interval_s
        while not self._wakeup.is_set():
            waits: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._wakeup.wait()),
                connection.closing,  # a new observer each time: cancel it, or it piles up
            ]
            if window.in_flight:
                waits.append(window.settled())
            wake_at = until
            if window.confirmed > self._saved_position:  # a save is owed: when it may be made
                wake_at = min(wake_at, self._next_save_at())
            try:
                done, _ = await asyncio.wait(
                    waits,
                    timeout=max(0.0, wake_at - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waits:
                    waiter.cancel()
            if connection.is_closed:
                raise PublishFailed("the broker connection closed")
            window.raise_failure()
            # confirmed, or a save's interval passed: save if it may be made now
            await self._checkpoint(session, window)
            if not done and loop.time() >= until:
                return  # the poll interval: look at the log for other replicas' commits


async def _acquire_lock(session: RelaySession) -> None:
    """Return once `session` holds the leadership lock, retrying about once a second."""
    while True:
        if await session.try_lead():
            return
        await asyncio.sleep(ELECTION_INTERVAL_S * random.uniform(0.8, 1.2))  # noqa: S311


async def _first_failure(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run never-ending coroutines side by side until the first one raises; cancel the rest
    and re-raise that error."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()
