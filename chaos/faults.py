"""The faults a chaos run injects, one at a time: `inject()` starts one, `heal()` ends it and
returns once the thing is back. Each touches only what the run started (its proxies, replicas,
Mongo store and database) or a service it was explicitly allowed to restart."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
import uuid
from pathlib import Path
from typing import Protocol

import asyncpg

from app.plumbing.localstore import LocalStore
from chaos.proxy import Proxy
from chaos.replicas import Replica, leader


class Fault(Protocol):
    name: str

    async def inject(self) -> None: ...

    async def heal(self) -> None: ...


class Cut:
    """Every connection through a proxy closed, new ones refused."""

    def __init__(self, name: str, proxy: Proxy) -> None:
        self.name = name
        self._proxy = proxy

    async def inject(self) -> None:
        await self._proxy.cut()

    async def heal(self) -> None:
        await self._proxy.restore()


class KillLeader:
    """SIGKILL of the replica whose relay leads, restarted on its port at `heal`."""

    name = "sigkill-relay-leader"

    def __init__(self, replicas: list[Replica]) -> None:
        self._replicas = replicas
        self._killed: Replica | None = None

    async def inject(self) -> None:
        self._killed = await leader(self._replicas)
        self._killed.kill()

    async def heal(self) -> None:
        if self._killed is not None:
            await self._killed.start()


class KillStore:
    """SIGKILL of the Mongo store the run started, restarted on the same storage path."""

    name = "sigkill-mongo-store"

    def __init__(self, store: LocalStore) -> None:
        self._store = store

    async def inject(self) -> None:
        await asyncio.to_thread(self._store.stop, True)

    async def heal(self) -> None:
        await asyncio.to_thread(self._store.start)


_SLOW = """
CREATE FUNCTION chaos_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(random() * {max_s});
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER chaos_slow_commit_trg AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chaos_slow_commit();
"""
_FAST = """
DROP TRIGGER IF EXISTS chaos_slow_commit_trg ON events;
DROP FUNCTION IF EXISTS chaos_slow_commit();
"""


class SlowCommits:
    """A deferred trigger on the run's own `events` table that sleeps at commit: commits
    slow down and land out of position order, the late commits the relay must wait for."""

    name = "slow-commits"

    def __init__(self, dsn: str, max_sleep_s: float = 0.25) -> None:
        self._dsn = dsn
        self._max_sleep_s = max_sleep_s

    async def _run(self, sql: str) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            await conn.execute("SET lock_timeout = '15s'")
            async with conn.transaction():
                await conn.execute(sql)
        finally:
            await conn.close()

    async def inject(self) -> None:
        await self._run(_SLOW.format(max_s=float(self._max_sleep_s)))

    async def heal(self) -> None:
        await self._run(_FAST)


_ROLLED_BACK = """
INSERT INTO events (stream_type, stream_id, stream_version, type, data)
SELECT 'product', $1, n, 'ProductCreated', '{}'::jsonb FROM generate_series(1, $2) AS n
"""


class RolledBackBurst:
    """`count` transactions that draw positions and roll back, some after holding them a
    while, from `workers` sessions on the run's database: gaps the relay must prove empty."""

    name = "rolled-back-burst"

    def __init__(self, dsn: str, count: int, within_s: float, rng: random.Random) -> None:
        self._dsn = dsn
        self._count = count
        self._within_s = within_s
        self._rng = rng
        self._task: asyncio.Task[int] | None = None
        self.rolled_back = 0

    async def inject(self) -> None:
        self._task = asyncio.create_task(self._burst())

    async def heal(self) -> None:
        if self._task is not None:
            self.rolled_back = await asyncio.wait_for(self._task, self._within_s + 30)

    async def _burst(self, workers: int = 6) -> int:
        deadline = time.monotonic() + self._within_s
        each = max(1, self._count // workers)

        async def worker() -> int:
            conn = await asyncpg.connect(self._dsn, timeout=10)
            done = 0
            try:
                while done < each and time.monotonic() < deadline:
                    transaction = conn.transaction()
                    await transaction.start()
                    try:
                        await conn.execute(_ROLLED_BACK, str(uuid.uuid4()), self._rng.randint(1, 3))
                        if self._rng.random() < 0.1:  # a gap held open for a while
                            await asyncio.sleep(self._rng.uniform(0.2, 1.0))
                    finally:
                        await transaction.rollback()
                    done += 1
            finally:
                await conn.close()
            return done

        return sum(await asyncio.gather(*(worker() for _ in range(workers))))


def _run(*command: str, timeout_s: float = 120) -> None:
    """Run a service's own control command; RuntimeError with its output when it fails."""
    done = subprocess.run(  # noqa: S603 - fixed commands, no user input
        command, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")


async def _until(check: tuple[str, ...], within_s: float = 120) -> None:
    """Poll `check` (a command that exits 0 once the service answers), bounded."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        probe = await asyncio.create_subprocess_exec(
            *check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if await probe.wait() == 0:
            return
        await asyncio.sleep(1)
    raise RuntimeError(f"{' '.join(check)} did not succeed within {within_s} s")


class RestartRabbitMQ:
    """A real broker outage, only with CHAOS_RESTART naming rabbitmq: stop_app, start_app."""

    name = "rabbitmq-stop-start"

    async def inject(self) -> None:
        await asyncio.to_thread(_run, "rabbitmqctl", "stop_app")

    async def heal(self) -> None:
        await asyncio.to_thread(_run, "rabbitmqctl", "start_app")
        await _until(("rabbitmq-diagnostics", "-q", "check_port_connectivity"))


class RestartPostgres:
    """A real PostgreSQL restart, only with CHAOS_RESTART naming postgres."""

    name = "postgres-restart"

    def __init__(self, host: str, port: int) -> None:
        self._ready = ("pg_isready", "-q", "-h", host, "-p", str(port))
        versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
        if len(versions) != 1:
            raise RuntimeError(f"expected one PostgreSQL cluster version, found {versions}")
        self._restart = ("pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main")

    async def inject(self) -> None:
        await asyncio.to_thread(_run, *self._restart, "restart")

    async def heal(self) -> None:
        await _until(self._ready)
