"""The one way tests wait for eventual consistency: a condition polled up to a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], object | Awaitable[object]],
    within_s: float = 10.0,
    what: str = "the condition",
    interval_s: float = 0.02,
) -> None:
    """Return once `condition()` (sync or async) is truthy; AssertionError naming `what` when
    it is still falsy after `within_s`. An exception from `condition` propagates at once."""
    deadline = time.monotonic() + within_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(interval_s)
