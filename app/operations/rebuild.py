"""`python -m app rebuild`: the read model rebuilt from the event log, for operators.

It refuses while a projector consumes the queue (the projector and the rebuild would both write
the read model); the rebuild itself is app/projector/rebuild.py.
"""

from __future__ import annotations

import asyncio
import sys

import aiormq
from pymongo.errors import PyMongoError

from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import BrokerConnect, connect_broker, open_resources
from app.plumbing.settings import Settings
from app.projector.rebuild import rebuild


def run(settings: Settings) -> int:
    """CLI: rebuild `settings.mongo_db` from the log; 0 when done, 2 when a projector is
    running (stop the service, or run it with PROJECTOR_ENABLED=false, first), 1 when a
    store failed."""
    try:
        consumers = asyncio.run(
            _projector_consumers(lambda: connect_broker(settings), settings.projector_queue)
        )
    except (aiormq.AMQPError, OSError) as exc:
        print(f"cannot tell whether a projector is running (RabbitMQ): {exc!r}", file=sys.stderr)
        return 1
    if consumers:
        print(
            f"{consumers} projector(s) consume {settings.projector_queue!r}: stop them "
            "(or run the service with PROJECTOR_ENABLED=false) before rebuilding",
            file=sys.stderr,
        )
        return 2
    try:
        position = asyncio.run(_rebuild(settings))
    except (*POSTGRES_FAILURES, PyMongoError) as exc:
        print(
            f"rebuild failed: {exc!r}; run it again (a read model left halfway claims no"
            " position, so a projector started on it re-applies the log from 0)",
            file=sys.stderr,
        )
        return 1
    print(f"read model {settings.mongo_db!r} rebuilt up to log position {position}")
    return 0


async def _projector_consumers(connect: BrokerConnect, queue: str) -> int:
    connection = await connect()
    try:
        channel = await connection.channel()
        try:
            declared = await channel.queue_declare(queue, passive=True)
        except aiormq.ChannelNotFoundEntity:
            return 0  # never declared: no projector ever ran against this broker
        return declared.consumer_count or 0
    finally:
        await connection.close()


async def _rebuild(settings: Settings) -> int:
    async with open_resources(settings, pool_min=1, pool_max=2) as resources:
        return await rebuild(resources.pool, resources.db)
