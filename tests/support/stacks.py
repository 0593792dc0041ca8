"""A whole stack of a test's own (PostgreSQL database, broker names, Mongo database) and the one
teardown that removes it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from pymongo import AsyncMongoClient

from app.contracts.topology import delete_topology
from app.plumbing.resources import connect_broker
from app.plumbing.settings import Settings
from tests.support.databases import create_database, drop_database


@contextlib.asynccontextmanager
async def fresh_stack(
    settings: Settings, template: str | None = None, **overrides: Any
) -> AsyncIterator[Settings]:
    """`settings` (their broker names and Mongo database) on a new migrated PostgreSQL
    database (a copy of `template` when given), with `overrides`; everything removed by
    `remove_stack` afterwards."""
    name, dsn = await create_database(template)
    stack = replace(settings, database_url=dsn, **overrides)
    try:
        yield stack
    finally:
        await remove_stack(stack, database=name)


async def remove_stack(settings: Settings, database: str | None = None) -> None:
    """Delete the broker topology and the Mongo database named in `settings` and, when given,
    the PostgreSQL `database`. Idempotent; every step runs even when an earlier one fails."""
    async with contextlib.AsyncExitStack() as steps:
        if database is not None:
            steps.push_async_callback(drop_database, database)
        steps.push_async_callback(_drop_mongo_database, settings)
        steps.push_async_callback(_delete_topology, settings)


async def _delete_topology(settings: Settings) -> None:
    connection = await connect_broker(settings)
    try:
        await delete_topology(await connection.channel(), settings)
    finally:
        await connection.close()


async def _drop_mongo_database(settings: Settings) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    try:
        generations = f"{settings.mongo_db}_g"  # a rebuild's (app/contracts/generations.py)
        for name in await client.list_database_names():
            if name == settings.mongo_db or name.startswith(generations):
                await client.drop_database(name)
    finally:
        await client.close()
