"""The applied position in this process: how far the read model is, and who waits for it."""

from __future__ import annotations

import asyncio


class AppliedPosition:
    """Monotonic applied log position; readers wait for a position without polling.

    Only the projector advances it (after the read model and `meta` hold the events), so a
    reader woken for `position` sees documents that include every event up to it.
    """

    def __init__(self, current: int = 0) -> None:
        self._current = current
        self._waiters: dict[asyncio.Future[None], int] = {}

    @property
    def current(self) -> int:
        return self._current

    def advance(self, position: int) -> None:
        """Move to `position` (never backwards) and wake every waiter it satisfies."""
        if position <= self._current:
            return
        self._current = position
        for waiter, wanted in list(self._waiters.items()):
            if wanted <= position and not waiter.done():
                waiter.set_result(None)

    # The bound is part of the answer ("not yet" is False, not an exception): ASYNC109 is moot.
    async def wait_for(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109
        """True once the applied position is >= `position`, False after `timeout` seconds.
        Cancelling the caller leaves nothing behind."""
        if self._current >= position:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = position
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return self._current >= position
        finally:
            del self._waiters[waiter]
        return True

    @property
    def waiting(self) -> int:
        """How many readers are waiting (a metric, and a check that none leak)."""
        return len(self._waiters)
