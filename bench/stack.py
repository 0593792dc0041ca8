"""The stack a benchmark runs against, built fresh and removed afterwards.

A migrated PostgreSQL database of its own, unique broker names, a Mongo database of its own
(on MONGO_URL when set, else on a SecantusDB server started here), and `python -m app serve`
subprocesses. Everything is registered on an AsyncExitStack as it is created, so a failure or
Ctrl-C at any point removes exactly what exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pymongo import AsyncMongoClient

from app.contracts import topology as broker
from app.plumbing.localstore import LocalStore, free_port
from app.plumbing.migrate import migrate
from app.plumbing.resources import connect_broker
from app.plumbing.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# the stores are the stack's own; the read cache is opted into per process (bench.read_cache)
_NOT_INHERITED = ("DATABASE_", "MONGO_", "REDIS_", "CACHE_")


async def wait_for_port(port: int, process: subprocess.Popen[bytes], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {within_s} s")


class Process:
    """A child in its own session (Ctrl-C reaches only the bench, which stops it in order),
    its output in a temporary file shown when it fails."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            args, env=dict(env), cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.log.closed:
            return
        if self.popen.poll() is not None:  # it ended on its own: show why
            print(f"{self.popen.args!r} exited with {self.popen.returncode}:", file=sys.stderr)
            print(self.output()[-4000:], file=sys.stderr)
        else:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid` in KiB, from /proc."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return _stat_cpu_s(stat.read())


def _stat_cpu_s(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# the shared services on this machine, by process name: all their processes count
SERVICES: Final = {"postgres": "PostgreSQL", "beam.smp": "RabbitMQ"}


def services_cpu_s() -> dict[int, tuple[str, float]]:
    """Each running process of the SERVICES: its pid, the service and its CPU so far."""
    found: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except OSError:  # it ended meanwhile
            continue
        service = SERVICES.get(text[text.find("(") + 1 : text.rfind(")")])
        if service is not None:
            found[int(entry.name)] = (service, _stat_cpu_s(text))
    return found


class CpuUse:
    """The CPU seconds used inside a `with` block: by each process of `pids` (by name), by
    each service of SERVICES (all its processes: one that started meanwhile counts whole, one
    that ended meanwhile does not count), and by the whole machine (`machine_busy_s`)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self.processes: dict[str, float] = {}
        self.services: dict[str, float] = {}
        self.machine_s = 0.0

    def __enter__(self) -> CpuUse:
        self._own = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._services = services_cpu_s()
        self._busy = machine_busy_s()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:  # a process may be gone: leave the block's own error alone
            return
        self.machine_s = machine_busy_s() - self._busy
        self.processes = {
            name: cpu_seconds(pid) - self._own[name] for name, pid in self._pids.items()
        }
        self.services = {}
        for pid, (service, cpu_s) in services_cpu_s().items():
            before = self._services.get(pid, (service, 0.0))[1]
            self.services[service] = self.services.get(service, 0.0) + cpu_s - before


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has been busy so far, from /proc/stat: all but
    idle and iowait (steal included: a core the hypervisor gave away ran nothing of ours)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:9]]  # user .. steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stack:
    """Settings of the benchmark's own databases and broker names, and the means to serve."""

    settings: Settings
    admin_dsn: str
    exits: contextlib.AsyncExitStack
    store: LocalStore | None  # the SecantusDB server started here; None on MONGO_URL

    def mongo_client(self) -> AsyncMongoClient[dict[str, Any]]:
        """A new client of the stack's Mongo server; the caller closes it."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.settings.mongo_url, tz_aware=True
        )
        return client

    def scratch_mongo_db(self, suffix: str) -> str:
        """A further Mongo database name, dropped at the end with the stack."""
        name = f"{self.settings.mongo_db}_{suffix}"
        self.exits.push_async_callback(_drop_mongo, self.settings.mongo_url, name)
        return name

    async def scratch_database(self, suffix: str) -> str:
        """A further migrated PostgreSQL database; its DSN. Dropped at the end."""
        name = f"{urlsplit(self.settings.database_url).path.lstrip('/')}_{suffix}"
        await _create_database(self.admin_dsn, name)
        self.exits.push_async_callback(_drop_database, self.admin_dsn, name)
        dsn = _dsn(self.admin_dsn, name)
        await migrate(dsn)
        return dsn

    async def scratch_copy(self, dsn: str, suffix: str) -> str:
        """A further PostgreSQL database copied from the one at `dsn` (which nobody may be
        connected to); its DSN. Dropped at the end."""
        name = f"{urlsplit(self.settings.database_url).path.lstrip('/')}_{suffix}"
        await _create_database(self.admin_dsn, name, template=urlsplit(dsn).path.lstrip("/"))
        self.exits.push_async_callback(_drop_database, self.admin_dsn, name)
        return _dsn(self.admin_dsn, name)

    def app_env(self, port: int, **extra: str) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
        env.update({
            "DATABASE_URL": s.database_url, "AMQP_URL": s.amqp_url, "MONGO_URL": s.mongo_url,
            "MONGO_DB": s.mongo_db, "EXCHANGE": s.exchange, "PROJECTOR_QUEUE": s.projector_queue,
            "PARKED_QUEUE": s.parked_queue, "RELAY_NAME": s.relay_name, "HOST": "127.0.0.1",
            "PORT": str(port), "LOG_LEVEL": "warning", **extra,
        })  # fmt: skip
        return env

    async def serve(self, module: str, *args: str, **extra: str) -> tuple[Process, int]:
        """`python -m <module> <args>` with the stack's environment on a free port, once it
        listens. Stopped by `stop_process` or at the end."""
        port = free_port()
        process = Process([sys.executable, "-m", module, *args], self.app_env(port, **extra))
        self.exits.callback(process.stop)
        try:
            await wait_for_port(port, process.popen, within_s=60)
        except RuntimeError:
            print(process.output()[-4000:], file=sys.stderr)
            raise
        return process, port


async def _drop_mongo(url: str, name: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


def _dsn(admin_dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{database}"))


async def _create_database(admin_dsn: str, name: str, template: str | None = None) -> None:
    """Create database `name`, as a copy of `template` when given. The backends of a pool
    just closed on the template may take a moment to go: retried for up to 5 s meanwhile."""
    sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
    conn = await asyncpg.connect(admin_dsn)
    try:
        for attempt in range(50):
            try:
                await conn.execute(sql)
                return
            except asyncpg.ObjectInUseError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _delete_topology(settings: Settings) -> None:
    connection = await connect_broker(settings)
    try:
        await broker.delete_topology(await connection.channel(), settings)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def stack(kind: str = "bench") -> AsyncIterator[Stack]:
    """A fresh stack for one benchmark (or `kind`, e.g. chaos) run, its names tagged with
    `kind`; everything it made is gone when it exits."""
    base = Settings.from_env()
    tag = uuid.uuid4().hex[:10]
    database = f"shop_{kind}_{tag}"
    async with contextlib.AsyncExitStack() as exits:
        store: LocalStore | None = None
        mongo_url = os.environ.get("MONGO_URL", "")
        if not mongo_url:
            store = LocalStore()
            await asyncio.to_thread(store.start)
            exits.callback(store.close)
            mongo_url = store.url
        settings = replace(
            base,
            database_url=_dsn(base.database_url, database),
            mongo_url=mongo_url,
            mongo_db=f"shop_{kind}_{tag}",
            exchange=f"{kind}.{tag}.events",
            projector_queue=f"{kind}.{tag}.projector",
            parked_queue=f"{kind}.{tag}.projector.parked",
            relay_name=f"{kind}-{tag}",
        )
        await _create_database(base.database_url, database)
        exits.push_async_callback(_drop_database, base.database_url, database)
        await migrate(settings.database_url)
        # popped in reverse: the topology and Mongo go after the app processes have stopped
        exits.push_async_callback(_delete_topology, settings)
        exits.push_async_callback(_drop_mongo, mongo_url, settings.mongo_db)
        yield Stack(settings=settings, admin_dsn=base.database_url, exits=exits, store=store)
