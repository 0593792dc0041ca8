"""Giving up a broker connection never waits on a broker that does not answer."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import aiormq.abc
import pytest

from app.plumbing import resources


class _Silent:
    """A connection whose close waits for a Close-Ok that never comes."""

    async def close(self) -> None:
        await asyncio.Event().wait()


class _Refusing:
    async def close(self) -> None:
        raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED")


async def test_a_close_the_broker_never_answers_ends_within_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resources, "BROKER_CLOSE_TIMEOUT_S", 0.2)
    started = time.monotonic()
    async with asyncio.timeout(5):  # fails, rather than hangs, without the bound
        await resources.close_broker(cast(aiormq.abc.AbstractConnection, _Silent()))
    assert time.monotonic() - started < 2


async def test_a_failing_close_is_not_raised() -> None:
    await resources.close_broker(cast(aiormq.abc.AbstractConnection, _Refusing()))
