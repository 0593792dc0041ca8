"""The relay's PostgreSQL session: leadership lock, checkpoint, snapshot reads, xid status.

One dedicated connection does all of it. The advisory lock is session-level, so the lock lives
exactly as long as this connection: every read and every checkpoint write goes through the
same session, and a session that died can neither read nor move the checkpoint any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable

import asyncpg

from app.contracts.eventlog import (
    SnapshotBatch,
    advance_checkpoint,
    fetch_after_in_snapshot,
    settled_position,
)
from app.plumbing.failures import POSTGRES_FAILURES
from app.plumbing.resources import PostgresConnect


def lock_key(relay_name: str) -> int:
    """A stable signed 64-bit advisory lock key for one relay name."""
    digest = hashlib.blake2b(f"shop.relay:{relay_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SessionFailed(Exception):
    """The relay's PostgreSQL session ended or a query on it failed. Either way the relay
    drops the session, and with it any leadership it held, and starts over."""


_ALL_ENDED = (
    "SELECT coalesce(bool_and(pg_xact_status(x::text::xid8) IS DISTINCT FROM 'in progress'),"
    " true) FROM unnest($1::bigint[]) AS x"
)


class RelaySession:
    """One connection of the relay; its queries are serialized (an asyncpg connection runs one
    at a time) and bounded by `timeout_s`, so a silent network failure surfaces as an error."""

    def __init__(self, conn: asyncpg.Connection, relay_name: str, timeout_s: float) -> None:
        self._conn = conn
        self._name = relay_name
        self._timeout = timeout_s
        self._busy = asyncio.Lock()
        self.lost = asyncio.Event()
        conn.add_termination_listener(lambda _: self.lost.set())

    @classmethod
    async def open(
        cls, connect: PostgresConnect, relay_name: str, timeout_s: float
    ) -> RelaySession:
        """Connect; raises SessionFailed when PostgreSQL is unreachable."""
        try:
            conn = await connect(timeout_s)
        except POSTGRES_FAILURES as exc:
            raise SessionFailed(f"cannot connect to PostgreSQL: {exc!r}") from exc
        return cls(conn, relay_name, timeout_s)

    @property
    def pid(self) -> int:
        pid: int = self._conn.get_server_pid()
        return pid

    async def close(self) -> None:
        """Close the session, releasing the lock; a session that will not close politely is
        terminated. Only cancellation propagates."""
        try:
            await asyncio.wait_for(self._conn.close(), self._timeout)
        except POSTGRES_FAILURES:
            self._conn.terminate()
        except asyncio.CancelledError:
            self._conn.terminate()
            raise

    @contextlib.asynccontextmanager
    async def _use(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._busy:
            if self.lost.is_set() or self._conn.is_closed():
                raise SessionFailed("the relay's PostgreSQL session is gone")
            try:
                yield self._conn
            except POSTGRES_FAILURES as exc:
                raise SessionFailed(f"the relay's PostgreSQL session failed: {exc!r}") from exc

    async def try_lead(self) -> bool:
        """Try to take the relay's leadership lock; True while this session holds it."""
        async with self._use() as conn:
            got: bool = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", lock_key(self._name), timeout=self._timeout
            )
            return got

    async def ping(self) -> None:
        """Raise SessionFailed unless the session answers within the timeout."""
        async with self._use() as conn:
            await conn.fetchval("SELECT 1", timeout=self._timeout)

    async def load_checkpoint(self) -> int:
        async with self._use() as conn:
            return await settled_position(conn, self._name, self._timeout)

    async def save_checkpoint(self, position: int) -> None:
        """Move the checkpoint forward to `position`; idempotent, never moves it back."""
        async with self._use() as conn:
            await advance_checkpoint(conn, self._name, position, self._timeout)

    async def read(self, after: int, limit: int) -> SnapshotBatch:
        async with self._use() as conn:
            return await fetch_after_in_snapshot(conn, after, limit, self._timeout)

    async def assign_xid(self) -> int:
        """A transaction id assigned now, in a transaction of its own: an upper bound for
        every id assigned before this call."""
        async with self._use() as conn:
            xid: int = await conn.fetchval(
                "SELECT pg_current_xact_id()::text::bigint", timeout=self._timeout
            )
            return xid

    async def all_ended(self, xids: Iterable[int]) -> bool:
        """True when none of `xids` is still in progress (a forgotten xid counts as ended)."""
        ids = list(xids)
        if not ids:
            return True
        async with self._use() as conn:
            ended: bool = await conn.fetchval(_ALL_ENDED, ids, timeout=self._timeout)
            return ended
