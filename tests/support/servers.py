"""The app over real HTTP: in this event loop (`Server`) or as a `python -m app serve`
process (`AppProcess`), each on a free port."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import certifi
import httpx
import uvicorn
from starlette.types import ASGIApp

from app.main import create_app
from app.plumbing.localstore import free_port
from app.plumbing.settings import Settings
from tests.support.waiting import eventually

# the stores are the test's own; the read cache is opted into per test
_NOT_INHERITED = ("DATABASE_", "MONGO_", "REDIS_", "CACHE_")

__all__ = ["AppProcess", "Server", "ServerFactory", "app_env", "free_port", "http_client"]


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def http_client(base_url: str, **options: Any) -> httpx.AsyncClient:
    """An HTTP client of `base_url`. All share one TLS context: httpx would load the CA bundle
    for each (55 ms, seconds over a run) though the tests speak plain HTTP."""
    return httpx.AsyncClient(base_url=base_url, verify=_tls(), **options)


class Server:
    """A real uvicorn server for one ASGI app (by default the whole service built from
    `settings`), on a free port, in this event loop."""

    def __init__(self, settings: Settings, app: ASGIApp | None = None) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app or create_app(settings),
                host="127.0.0.1",
                port=self.port,
                lifespan="on",
                log_level="warning",
                loop="asyncio",
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
        task = self._task = asyncio.create_task(self._server.serve())
        await eventually(
            lambda: self._server.started or task.done(), within_s=20, what="the app to start"
        )
        if not self._server.started:
            raise RuntimeError("the app did not start")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


ServerFactory = Callable[..., Awaitable[Server]]


def app_env(settings: Settings, port: int) -> dict[str, str]:
    """The environment of a `python -m app` process serving `settings` on `port`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "AMQP_URL": settings.amqp_url,
            "MONGO_URL": settings.mongo_url,
            "MONGO_DB": settings.mongo_db,
            "EXCHANGE": settings.exchange,
            "PROJECTOR_QUEUE": settings.projector_queue,
            "PARKED_QUEUE": settings.parked_queue,
            "RELAY_NAME": settings.relay_name,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "info",
        }
    )
    return env


class AppProcess:
    """One `python -m app serve` replica."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by its owner

    async def start(self) -> None:
        process = self.process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env=app_env(self.settings, self.port),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        async with http_client(self.url) as http:

            async def ready() -> bool:
                assert process.poll() is None, f"the app exited during start:\n{self.output()}"
                try:
                    return (await http.get("/health/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within_s=30, what="the app to start", interval_s=0.1)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")
