"""The migration runner against real PostgreSQL: once, in order, locked, checksummed."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from app.plumbing.migrate import MIGRATIONS_DIR, MigrationError, discover, migrate
from tests.support.databases import create_empty_database, drop_database


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    name, dsn = await create_empty_database()
    yield dsn
    await drop_database(name)


async def _recorded(dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [(r["version"], r["name"]) for r in rows]


async def test_applies_every_file_once_in_order(empty_database_url: str) -> None:
    applied = await migrate(empty_database_url)
    assert applied == [m.name for m in discover()]
    assert await migrate(empty_database_url) == []
    assert await _recorded(empty_database_url) == [(m.version, m.name) for m in discover()]


async def test_concurrent_runners_apply_once(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(discover())]


async def test_an_edited_applied_migration_is_named(
    empty_database_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    await migrate(empty_database_url, directory)
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=re.escape(first.name)):
        await migrate(empty_database_url, directory)


async def test_a_misnamed_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"1_bad\.sql"):
        discover(tmp_path)


async def test_a_failing_migration_leaves_no_trace(empty_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE b (x int); SELECT nope;")
    with pytest.raises(asyncpg.UndefinedColumnError):
        await migrate(empty_database_url, tmp_path)
    assert await _recorded(empty_database_url) == [(1, "0001_ok.sql")]
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('b')") is None
    finally:
        await conn.close()
