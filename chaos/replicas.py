"""The replicas of a chaos run: `python -m app serve` processes, each on a port of its own that
it keeps across a SIGKILL and restart, and the one whose relay leads, as /metrics says."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import httpx

from app.plumbing.localstore import free_port
from bench.stack import Process

_LEADER_LINE = "shop_relay_leader 1.0"


class Replica:
    """One replica; `env_of(port)` is its environment."""

    def __init__(self, name: str, env_of: Callable[[int], dict[str, str]]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = env_of(self.port)
        self._process: Process | None = None
        self.outputs: list[str] = []  # of each run of it that ended, in order

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, within_s: float = 60) -> None:
        """Start it (migrating first, as `serve` does) and return once /health/live answers;
        RuntimeError with its output if it exits or does not answer in time."""
        self.stop()
        process = self._process = Process([sys.executable, "-m", "app", "serve"], self._env)
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            while time.monotonic() < deadline:
                if process.popen.poll() is not None:
                    break
                try:
                    if (await http.get("/health/live")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        output = process.output()[-4000:]
        self.stop()
        raise RuntimeError(f"replica {self.name} did not start; its output:\n{output}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or closed."""
        if self._process is not None:
            self._process.popen.kill()
            self._process.popen.wait(timeout=30)
            self.outputs.append(self._process.output())
            self._process.log.close()  # so stop() does not report the kill as a failure
            self._process = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; shows its output if it had ended on its own."""
        if self._process is not None:
            if not self._process.log.closed:
                self.outputs.append(self._process.output())
            self._process.stop()
            self._process = None

    def check_alive(self) -> None:
        """RuntimeError, with its output, when it ended without being told to (a crash)."""
        if self._process is not None and (code := self._process.popen.poll()) is not None:
            output = self._process.output()[-6000:]
            self.outputs.append(self._process.output())
            self._process.log.close()
            self._process = None
            raise RuntimeError(f"replica {self.name} exited by itself ({code}):\n{output}")

    async def leads(self, http: httpx.AsyncClient) -> bool:
        try:
            response = await http.get(f"{self.url}/metrics")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and _LEADER_LINE in response.text.splitlines()

    async def ready(self, http: httpx.AsyncClient) -> bool:
        try:
            return (await http.get(f"{self.url}/health/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    async def readiness(self, http: httpx.AsyncClient) -> str:
        try:
            response = await http.get(f"{self.url}/health/ready")
        except httpx.HTTPError as exc:
            return repr(exc)
        return f"{response.status_code} {response.text[:500]}"


async def leader(replicas: list[Replica], within_s: float = 30) -> Replica:
    """The one replica whose relay publishes; RuntimeError if none (or several) in time."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            leading = [r for r in replicas if await r.leads(http)]
            if len(leading) == 1:
                return leading[0]
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no single relay leader among the replicas within {within_s} s")


async def all_ready(replicas: list[Replica], within_s: float) -> list[str]:
    """Wait until every replica's /health/ready is 200; the ones still not ready after
    `within_s`, each with what its /health/ready said. RuntimeError if one has exited."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            for replica in replicas:
                replica.check_alive()
            if all([await r.ready(http) for r in replicas]):
                return []
            if time.monotonic() > deadline:
                return [f"{r.name}: {await r.readiness(http)}" for r in replicas]
            await asyncio.sleep(0.2)
