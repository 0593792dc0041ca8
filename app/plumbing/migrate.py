"""Migration runner: numbered plain SQL files, applied once, in order, under an advisory lock.

Each file `NNNN_name.sql` in `migrations/` runs in its own transaction and is recorded in
`schema_migrations` with its SHA-256. A recorded file whose content changed stops the start
with an error naming the file: applied migrations are history, add a new one instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parents[2] / "migrations"
_LOCK_KEY: Final = 0x5_4F_50_4D_49_47  # "SHOPMIG": one runner at a time, across processes
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk and the ones recorded in the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; raises MigrationError on a misnamed or
    duplicated version."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        version = int(match[1])
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        migrations[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations; returns the names applied. Safe to run from several
    processes at once: they queue on an advisory lock and the later ones find nothing to do."""
    migrations = discover(directory)
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            return await _apply_pending(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer NOT NULL CONSTRAINT schema_migrations_pkey PRIMARY KEY,"
        " name text NOT NULL, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    recorded = {
        r["version"]: r
        for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    }
    applied: list[str] = []
    for migration in migrations:
        row = recorded.get(migration.version)
        if row is not None:
            if row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"{migration.name} was changed after it was applied (recorded checksum"
                    f" {row['checksum'][:12]}…, file {migration.checksum[:12]}…);"
                    " add a new migration instead of editing an applied one"
                )
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        log.info("applied migration %s", migration.name)
        applied.append(migration.name)
    return applied
