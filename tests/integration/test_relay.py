"""The relay against real PostgreSQL and RabbitMQ: order, late commits, rollbacks, broker
cuts, restarts and leader fail-over, each checked from a consumer's side."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import aiormq
import aiormq.abc
import asyncpg
import msgspec
import pytest

from app.contracts.eventlog import settled_position
from app.contracts.events import Envelope
from app.contracts.topology import declare_topology, delete_topology
from app.main import relay_for
from app.plumbing.settings import Settings
from app.relay import runner
from app.relay.runner import Relay
from app.relay.session import RelaySession
from tests.support.waiting import eventually

_INSERT = (
    "INSERT INTO events (stream_type, stream_id, stream_version, type, data)"
    " VALUES ('product', $1::text, $2::int, 'ProductRestocked',"
    " jsonb_build_object('product_id', $1::text, 'quantity', 1, 'stock', $2::int))"
    " RETURNING position"
)
_INSERT_MANY = (
    "INSERT INTO events (stream_type, stream_id, stream_version, type, data)"
    " SELECT 'product', $1::text, v, 'ProductRestocked',"
    " jsonb_build_object('product_id', $1::text, 'quantity', 1, 'stock', v)"
    " FROM generate_series($2::int, $3::int) AS v ORDER BY v"
    " RETURNING position"
)


@dataclass(frozen=True)
class Received:
    envelope: Envelope
    message_id: str | None
    type: str | None
    content_type: str | None
    delivery_mode: int | None


class Consumer:
    """An exclusive queue bound with '#' to the test's exchange, collecting every delivery."""

    def __init__(self) -> None:
        self.messages: list[Received] = []

    async def start(self, settings: Settings) -> None:
        self._connection = await aiormq.connect(settings.amqp_url.split("?")[0])
        channel = await self._connection.channel()
        await declare_topology(channel, settings)
        declared = await channel.queue_declare(exclusive=True, auto_delete=True)
        assert declared.queue is not None
        await channel.queue_bind(declared.queue, settings.exchange, routing_key="#")
        await channel.basic_consume(declared.queue, self._on_message, no_ack=True)
        self._channel = channel

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        self.messages.append(
            Received(
                envelope=msgspec.json.decode(message.body, type=Envelope),
                message_id=props.message_id,
                type=props.message_type,
                content_type=props.content_type,
                delivery_mode=props.delivery_mode,
            )
        )

    def first_positions(self) -> list[int]:
        return list(dict.fromkeys(m.envelope.position for m in self.messages))

    async def stop(self, settings: Settings) -> None:
        await delete_topology(self._channel, settings)
        await self._connection.close()


def assert_delivered(messages: list[Received], committed: list[int]) -> None:
    """First occurrences are exactly the committed positions in order, chained by
    prev_position; a repeat is only a contiguous re-publish restarting at a published one."""
    seen: set[int] = set()
    highest = previous = 0
    for m in messages:
        env = m.envelope
        assert m.message_id == str(env.event_id)
        assert m.type == env.type
        assert (m.content_type, m.delivery_mode) == ("application/json", 2)
        if env.position > highest:
            assert env.prev_position == highest, f"broken chain at {env.position}"
            highest = env.position
        else:
            assert env.position in seen, f"{env.position} first published out of order"
            assert env.prev_position == previous or env.prev_position in seen | {0}
        seen.add(env.position)
        previous = env.position
    assert list(dict.fromkeys(m.envelope.position for m in messages)) == sorted(committed)


@pytest.fixture
async def relay_settings(settings: Settings, fresh_database_url: str) -> Settings:
    # The connection name lets a test find the relay's own connection on the broker.
    return replace(
        settings,
        database_url=fresh_database_url,
        amqp_url=f"{settings.amqp_url}?name=relay-{settings.relay_name}",
        relay_poll_interval_s=0.1,
    )


@pytest.fixture
async def consumer(relay_settings: Settings) -> AsyncIterator[Consumer]:
    consumer = Consumer()
    await consumer.start(relay_settings)
    yield consumer
    await consumer.stop(relay_settings)


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=2, max_size=24)
    assert pool is not None
    yield pool
    await pool.close()


StartRelay = Callable[[], tuple[Relay, asyncio.Event, asyncio.Task[None]]]


@pytest.fixture
async def start_relay(relay_settings: Settings, consumer: Consumer) -> AsyncIterator[StartRelay]:
    """Relays of this test, all stopped before the consumer removes the broker objects."""
    tasks: list[asyncio.Task[None]] = []

    def start() -> tuple[Relay, asyncio.Event, asyncio.Task[None]]:
        wakeup = asyncio.Event()
        relay = relay_for(relay_settings, wakeup)
        task = asyncio.create_task(relay.run())
        tasks.append(task)
        return relay, wakeup, task

    yield start
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results


async def insert_many(db: asyncpg.Pool, count: int, stream_id: str | None = None) -> list[int]:
    stream = stream_id or str(uuid.uuid4())
    async with db.acquire() as conn:
        rows = await conn.fetch(_INSERT_MANY, stream, 1, count)
    return [r["position"] for r in rows]


async def test_publishes_the_log_in_order_with_the_message_contract(
    start_relay: StartRelay, consumer: Consumer, db: asyncpg.Pool
) -> None:
    committed = await insert_many(db, 50)
    relay, _, _ = start_relay()
    await eventually(lambda: len(consumer.messages) >= 50, what="50 messages")
    assert_delivered(consumer.messages, committed)
    assert consumer.messages[0].envelope.prev_position == 0
    await eventually(lambda: relay.published_position == committed[-1], what="confirms")
    async with db.acquire() as conn:
        checkpoint = await conn.fetchval("SELECT position FROM relay_checkpoints")
    assert checkpoint == committed[-1]
    assert relay.is_leader
    assert relay.connected


async def _hold_position(db: asyncpg.Pool) -> tuple[asyncpg.Connection, asyncpg.Transaction, int]:
    """Transaction A: draws a position and stays open."""
    conn = await db.acquire()
    tx = conn.transaction()
    await tx.start()
    position: int = await conn.fetchval(_INSERT, str(uuid.uuid4()), 1)
    return conn, tx, position


async def _commit_one(db: asyncpg.Pool) -> int:
    async with db.acquire() as conn, conn.transaction():
        position: int = await conn.fetchval(_INSERT, str(uuid.uuid4()), 1)
        return position


async def test_a_late_commit_holds_back_everything_after_it(
    start_relay: StartRelay, consumer: Consumer, db: asyncpg.Pool
) -> None:
    relay, wakeup, _ = start_relay()
    first = await _commit_one(db)
    wakeup.set()
    await eventually(lambda: consumer.first_positions() == [first], what="first event")
    conn, tx_a, p = await _hold_position(db)
    q = await _commit_one(db)
    assert q == p + 1
    wakeup.set()
    await eventually(lambda: relay.waiting_on_gap == p, what="the relay to see the gap")
    assert consumer.first_positions() == [first]
    await tx_a.commit()
    await db.release(conn)
    wakeup.set()
    await eventually(lambda: consumer.first_positions() == [first, p, q], what="p, then q")
    assert_delivered(consumer.messages, [first, p, q])


async def test_a_rolled_back_position_is_passed_promptly(
    start_relay: StartRelay, consumer: Consumer, db: asyncpg.Pool
) -> None:
    relay, wakeup, _ = start_relay()
    first = await _commit_one(db)
    wakeup.set()
    await eventually(lambda: consumer.first_positions() == [first], what="first event")
    conn, tx_a, p = await _hold_position(db)
    q = await _commit_one(db)
    wakeup.set()
    await eventually(lambda: relay.waiting_on_gap == p, what="the relay to see the gap")
    assert consumer.first_positions() == [first]
    started = time.monotonic()
    await tx_a.rollback()  # no wakeup: a rollback signals nothing, polling must find it
    await db.release(conn)
    await eventually(lambda: consumer.first_positions() == [first, q], within_s=1.0, what="q")
    assert time.monotonic() - started < 1.0
    assert_delivered(consumer.messages, [first, q])


async def test_at_rest_the_checkpoint_is_saved_once_per_interval_and_never_left_behind(
    start_relay: StartRelay,
    consumer: Consumer,
    db: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Commits spaced out, each published and confirmed before the next one comes (a low
    order rate): the checkpoint is saved at most once per CHECKPOINT_INTERVAL_S, not once per
    confirm, and the last save owed is made once the interval allows, with nothing new."""
    saves: list[int] = []
    save = RelaySession.save_checkpoint

    async def counted(session: RelaySession, position: int) -> None:
        saves.append(position)
        await save(session, position)

    monkeypatch.setattr(RelaySession, "save_checkpoint", counted)
    relay, wakeup, _ = start_relay()
    await eventually(lambda: relay.is_leader and relay.connected, what="the relay to lead")
    started = time.monotonic()
    committed = []
    for _ in range(20):
        committed.append(await _commit_one(db))
        wakeup.set()
        await eventually(lambda: len(consumer.first_positions()) == len(committed), what="it")
        await asyncio.sleep(0.01)
    await eventually(lambda: relay.published_position == committed[-1], what="the last save")
    elapsed = time.monotonic() - started
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT position FROM relay_checkpoints") == committed[-1]
    assert saves == sorted(saves)
    assert len(saves) <= elapsed / runner.CHECKPOINT_INTERVAL_S + 2, (len(saves), elapsed)
    assert_delivered(consumer.messages, committed)


async def _random_writer(
    db: asyncpg.Pool, rng: random.Random, wakeup: asyncio.Event, committed: list[int]
) -> None:
    stream, version = str(uuid.uuid4()), 0
    for _ in range(6):
        async with db.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            positions = []
            for k in range(rng.randint(1, 3)):
                positions.append(await conn.fetchval(_INSERT, stream, version + k + 1))
                await asyncio.sleep(rng.uniform(0, 0.02))
            await asyncio.sleep(rng.uniform(0, 0.05))
            if rng.random() < 0.25:
                await tx.rollback()
                continue
            await tx.commit()
            version += len(positions)
            committed.extend(positions)
            wakeup.set()


async def test_concurrent_writers_with_late_commits_and_rollbacks(
    start_relay: StartRelay, consumer: Consumer, db: asyncpg.Pool, test_seed: int
) -> None:
    _, wakeup, _ = start_relay()
    committed: list[int] = []
    await asyncio.gather(
        *(_random_writer(db, random.Random(test_seed + i), wakeup, committed) for i in range(20))
    )
    expected = sorted(committed)
    await eventually(lambda: consumer.first_positions() == expected, what="all commits")
    assert_delivered(consumer.messages, committed)


def _relay_connection_pids(name: str) -> list[str]:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    )
    rows = [line.split("\t", 1) for line in listing.stdout.splitlines()[1:]]
    return [pid for pid, properties in rows if f'"{name}"' in properties]


async def _cut_broker_connection(relay: Relay, settings: Settings) -> None:
    """Close the relay's own AMQP connection from the broker side when rabbitmqctl is at
    hand (as a network failure or an operator would), else from the client side."""
    connection = relay.broker_connection
    assert connection is not None
    if shutil.which("rabbitmqctl") is None:
        await connection.close(ConnectionResetError("cut by the test"))
        return
    for pid in await asyncio.to_thread(_relay_connection_pids, f"relay-{settings.relay_name}"):
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "close_connection", pid, "cut by the test"],
            check=True,
            capture_output=True,
        )


@pytest.mark.slow
async def test_a_cut_broker_connection_loses_nothing_and_keeps_order(
    start_relay: StartRelay, consumer: Consumer, db: asyncpg.Pool, relay_settings: Settings
) -> None:
    committed = await insert_many(db, 10_000)
    relay, wakeup, _ = start_relay()
    await eventually(lambda: len(consumer.messages) >= 200, what="the stream to flow")
    cut_connection = relay.broker_connection
    await _cut_broker_connection(relay, relay_settings)
    await eventually(
        lambda: relay.connected and relay.broker_connection is not cut_connection,
        what="a reconnect",
    )
    assert len(consumer.first_positions()) < len(committed), "cut too late to test anything"
    committed += await insert_many(db, 100)
    wakeup.set()
    await eventually(lambda: consumer.first_positions() == committed, within_s=30, what="all")
    assert_delivered(consumer.messages, committed)


async def test_a_restarted_relay_continues_from_its_checkpoint(
    start_relay: StartRelay, consumer: Consumer, db: asyncpg.Pool, relay_settings: Settings
) -> None:
    committed = await insert_many(db, 10)
    relay, _, task = start_relay()
    await eventually(lambda: relay.published_position == committed[-1], what="first run")
    async with db.acquire() as conn:  # reported only once saved
        assert await settled_position(conn, relay_settings.relay_name) == committed[-1]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not relay.connected
    committed += await insert_many(db, 5)
    start_relay()
    await eventually(lambda: consumer.first_positions() == committed, what="second run")
    assert len(consumer.messages) == len(committed)  # drained checkpoint: no repeats
    assert_delivered(consumer.messages, committed)


@pytest.mark.slow
async def test_one_leader_publishes_and_a_dead_lock_session_hands_over(
    start_relay: StartRelay, consumer: Consumer, db: asyncpg.Pool
) -> None:
    first, wake_first, _ = start_relay()
    await eventually(lambda: first.is_leader, what="a leader")
    second, wake_second, _ = start_relay()
    await eventually(lambda: second.lock_session_pid is not None, what="a second candidate")
    committed = await insert_many(db, 100)
    wake_first.set()
    wake_second.set()
    await eventually(lambda: consumer.first_positions() == committed, what="first leader")
    assert not second.is_leader
    assert len(consumer.messages) == len(committed)  # nobody else published

    async with db.acquire() as conn:
        await conn.execute("SELECT pg_terminate_backend($1)", first.lock_session_pid)
    await eventually(lambda: not first.is_leader, within_s=1.0, what="the old leader to stop")
    await eventually(lambda: second.is_leader, within_s=5.0, what="the other to take over")
    committed += await insert_many(db, 100)
    wake_second.set()
    await eventually(lambda: consumer.first_positions() == committed, what="new leader")
    assert_delivered(consumer.messages, committed)
    assert not first.is_leader
