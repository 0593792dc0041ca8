"""PostgreSQL databases of the tests' own on the server at DATABASE_URL, and the broker URL."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.plumbing.migrate import migrate

ADMIN_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def dsn_for(database: str) -> str:
    return urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{database}"))


async def create_empty_database(template: str = "template1") -> tuple[str, str]:
    """A new database copied from `template` (by default one with no tables); its name and
    DSN. Nobody may be connected to `template` meanwhile."""
    name = f"shop_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return name, dsn_for(name)


async def create_database(template: str | None = None) -> tuple[str, str]:
    """A new migrated database: a copy of `template` (migrated already; copying takes a third
    of the time of migrating) when given, else migrated here. Its name and DSN."""
    if template is not None:
        return await create_empty_database(template)
    name, dsn = await create_empty_database()
    await migrate(dsn)
    return name, dsn


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
