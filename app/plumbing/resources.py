"""The connections every entry point opens, each with one set of options: the PostgreSQL pool,
the MongoDB client, and factories for broker connections and dedicated PostgreSQL sessions.

`serve` (app/main.py), `verify`, `rebuild` and every later command take them from here, so a
timeout or a pool option is set in one place. The relay and the projector get the factories,
never the settings they are made from.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiormq
import aiormq.abc
import asyncpg
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.plumbing.settings import Settings

log = logging.getLogger(__name__)

BrokerConnect = Callable[[], Awaitable[aiormq.abc.AbstractConnection]]
# a dedicated PostgreSQL session (not pooled), bounded by the given connect timeout in seconds
PostgresConnect = Callable[[float], Awaitable[asyncpg.Connection]]

MONGO_SERVER_SELECTION_TIMEOUT_MS: Final = 5000


# aiormq hands frames from its socket reader to each channel, and from the channels to its
# socket writer, through queues of 10 frames by default. A full queue parks the side filling it
# until the next event-loop iteration, so with HTTP and the projector sharing the loop
# (iterations of a few milliseconds) the relay's publishes and confirms crossed 10 frames an
# iteration: its confirm window stayed full and the relay fell seconds behind the write side
# (docs/benchmarks.md). What these queues hold is bounded by our own windows anyway: the
# relay's RELAY_CONFIRM_WINDOW messages and their confirms, the projector's PROJECTOR_PREFETCH
# deliveries (three frames each) and its acks.
FRAME_BUFFER: Final = 8192


class _Connection(aiormq.Connection):
    """aiormq's connection with FRAME_BUFFER-frame queues, for itself and its channels."""

    FRAME_BUFFER_SIZE = FRAME_BUFFER

    async def channel(self, *args: Any, **kwargs: Any) -> aiormq.abc.AbstractChannel:
        kwargs.setdefault("frame_buffer_size", FRAME_BUFFER)
        channel: aiormq.abc.AbstractChannel = await super().channel(*args, **kwargs)
        return channel


async def connect_broker(settings: Settings) -> aiormq.abc.AbstractConnection:
    """One AMQP connection (its channels with FRAME_BUFFER-frame queues); raises
    aiormq.AMQPConnectionError or OSError when unreachable."""
    connection = _Connection(settings.amqp_url)
    await connection.connect()
    return connection


BROKER_CLOSE_TIMEOUT_S: Final = 5.0
_CLOSE_FAILURES: Final = (
    OSError,
    TimeoutError,
    RuntimeError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
)


async def close_broker(connection: aiormq.abc.AbstractConnection) -> None:
    """Close a connection being given up: at most BROKER_CLOSE_TIMEOUT_S for the broker's
    Close-Ok (a broker that never answers must not hold a shutdown or a reconnect), and a
    failure is logged, not raised."""
    try:
        await asyncio.wait_for(connection.close(), BROKER_CLOSE_TIMEOUT_S)
    except _CLOSE_FAILURES as exc:
        log.debug("closing the broker connection failed: %r", exc)


async def connect_postgres(settings: Settings, timeout_s: float) -> asyncpg.Connection:
    """One PostgreSQL session of its own; raises OSError or asyncpg errors when unreachable."""
    conn: asyncpg.Connection = await asyncpg.connect(settings.database_url, timeout=timeout_s)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (unlock advisory locks, CLOSE ALL, UNLISTEN,
    RESET ALL): pooled connections never take session state, and that query was one more round
    trip per command. asyncpg still rolls back a transaction left open."""


async def open_pool(
    settings: Settings, *, min_size: int | None = None, max_size: int | None = None
) -> asyncpg.Pool:
    """The PostgreSQL pool (DB_POOL_MIN/DB_POOL_MAX unless a command needs fewer)."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max if max_size is None else max_size,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


def mongo_client(settings: Settings) -> AsyncMongoClient[dict[str, Any]]:
    """The MongoDB client: aware datetimes, an unreachable server noticed within seconds, and
    writes acknowledged only once journaled (`j: true`). The projector must never write onto
    documents that lost writes it was told were done: their version fences would then refuse
    the lost events for good (docs/architecture.md §6)."""
    return AsyncMongoClient(
        settings.mongo_url,
        tz_aware=True,
        serverSelectionTimeoutMS=MONGO_SERVER_SELECTION_TIMEOUT_MS,
        journal=True,
    )


@dataclass(frozen=True, slots=True)
class Resources:
    """What an entry point works with; `db` is the read model database of the settings."""

    settings: Settings
    pool: asyncpg.Pool
    mongo: AsyncMongoClient[dict[str, Any]]
    db: AsyncDatabase[dict[str, Any]]
    connect_broker: BrokerConnect


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, *, pool_min: int | None = None, pool_max: int | None = None
) -> AsyncIterator[Resources]:
    """Open the pool and the Mongo client, yield them with the connection factories, and close
    both on the way out (in reverse)."""
    pool = await open_pool(settings, min_size=pool_min, max_size=pool_max)
    try:
        mongo = mongo_client(settings)
        try:
            yield Resources(
                settings=settings,
                pool=pool,
                mongo=mongo,
                db=mongo[settings.mongo_db],
                connect_broker=functools.partial(connect_broker, settings),
            )
        finally:
            await mongo.close()
    finally:
        await pool.close()
