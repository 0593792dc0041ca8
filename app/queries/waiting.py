"""Read-your-writes: wait until the read model has applied a position, within a bound."""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

import pymongo
from pymongo.errors import PyMongoError

from app.contracts.generations import ReadModel
from app.plumbing.problems import ServiceUnavailable


class Waiter(Protocol):
    """Knows the read model's applied position and can wait for it to reach a given one.

    Fits the projector's in-process applied position (a plain `current: int` attribute) as well
    as `MongoPositionWaiter`. `wait_for` returns True as soon as the applied position is at least
    `position` (at once when it already is) and False once `timeout` seconds have passed.
    """

    @property
    def current(self) -> int: ...

    # ASYNC109 ignored: the projector's applied position has this signature, and "not yet" is
    # an answer (False), not an error, so asyncio.timeout around the call would not fit
    async def wait_for(self, position: int, timeout: float) -> bool: ...  # noqa: ASYNC109


class MongoPositionWaiter:
    """A waiter that polls the `meta` document of the generation in use (following a switch
    at once: app/contracts/generations.py), for replicas whose projector runs elsewhere.

    However many requests wait, it reads `meta` at most once per poll interval, so the load on
    Mongo stays bounded. `current` is the last value read: a lower bound of the applied position.
    Mongo errors propagate (the caller answers 503), but for a read of `meta` that timed out
    with the wait itself: the wait is over, and its answer is the one of any wait at its
    bound, "not yet" (a store that is really gone fails the reads that follow).
    """

    def __init__(self, model: ReadModel, poll_interval: float) -> None:
        self._model = model
        self._poll_interval = poll_interval
        self._current = 0
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    @property
    def current(self) -> int:
        return self._current

    async def wait_for(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109 - Waiter's
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self._refresh(deadline)
            except PyMongoError as exc:
                if not exc.timeout or loop.time() < deadline:
                    raise
                return self._current >= position  # the poll ran into the wait's bound
            if self._current >= position:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(self._poll_interval, remaining))

    async def _refresh(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if loop.time() - self._read_at < self._poll_interval:
                return
            # a hung Mongo must not hold the request past its wait bound
            with pymongo.timeout(max(deadline - loop.time(), self._poll_interval)):
                position = await self._model.position()
            self._read_at = loop.time()
        self._current = max(self._current, position)


async def wait_until_applied(waiter: Waiter, after: int, max_wait_s: float) -> int:
    """The applied position once it is at least `after`, the position the answer will reflect.

    Raises ServiceUnavailable (503, with Retry-After and X-Read-Position) when it does not get
    there within `max_wait_s` seconds.
    """
    if await waiter.wait_for(after, max_wait_s):
        return waiter.current
    current = waiter.current
    raise ServiceUnavailable(
        f"the read model has applied position {current}, not yet {after}; retry shortly",
        headers={"Retry-After": "1", "X-Read-Position": str(current)},
        after=after,
        position=current,
    )


class LocalFirstWaiter:
    """The in-process wake-up first, the `meta` document when that stays silent.

    With several replicas only one projector is the active consumer; the others' in-process
    positions stand still. So a wait that the local position has not satisfied within `grace_s`
    also polls `meta` (through `remote`), and the first to reach the position answers. On the
    active replica reads are woken in-process and never touch `meta`.
    """

    def __init__(self, local: Waiter, remote: Waiter, grace_s: float) -> None:
        self._local = local
        self._remote = remote
        self._grace_s = grace_s

    @property
    def current(self) -> int:
        return max(self._local.current, self._remote.current)

    async def wait_for(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109 - Waiter's
        if self.current >= position:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if await self._local.wait_for(position, min(self._grace_s, timeout)):
            return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return self.current >= position
        waits = [
            asyncio.ensure_future(waiter.wait_for(position, remaining))
            for waiter in (self._local, self._remote)
        ]
        try:
            for finished in asyncio.as_completed(waits):
                if await finished:
                    return True
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return self.current >= position
