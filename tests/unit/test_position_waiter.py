"""MongoPositionWaiter (app/queries/waiting.py): a read of `meta` that times out with the wait
itself answers "not yet" like the wait's bound; any other Mongo error propagates."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from pymongo.errors import AutoReconnect, NetworkTimeout, PyMongoError

from app.contracts.generations import ReadModel
from app.queries.waiting import MongoPositionWaiter


class _Meta:
    """A read model whose `meta` reads take `takes_s` each, then answer `position` or raise
    `error`."""

    def __init__(self, position: int, takes_s: float = 0.0, error: PyMongoError | None = None):
        self._position = position
        self._takes_s = takes_s
        self._error = error
        self.reads = 0

    async def position(self) -> int:
        self.reads += 1
        await asyncio.sleep(self._takes_s)
        if self._error is not None:
            raise self._error
        return self._position


def _waiter(meta: _Meta) -> MongoPositionWaiter:
    return MongoPositionWaiter(cast(ReadModel, cast(Any, meta)), poll_interval=0.02)


async def test_a_position_reached_is_waited_for_and_one_never_reached_is_not_yet() -> None:
    assert await _waiter(_Meta(7)).wait_for(7, 0.2)
    assert not await _waiter(_Meta(7)).wait_for(8, 0.1)


async def test_a_read_that_times_out_with_the_wait_is_not_yet() -> None:
    meta = _Meta(7, takes_s=0.15, error=NetworkTimeout("timed out"))
    assert not await _waiter(meta).wait_for(8, 0.1)
    assert meta.reads == 1


async def test_a_timeout_before_the_bound_and_other_errors_propagate() -> None:
    with pytest.raises(NetworkTimeout):
        await _waiter(_Meta(7, error=NetworkTimeout("timed out"))).wait_for(8, 5.0)
    with pytest.raises(AutoReconnect):
        await _waiter(_Meta(7, takes_s=0.15, error=AutoReconnect("refused"))).wait_for(8, 0.1)
