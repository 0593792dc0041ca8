"""Fixtures of the end-to-end tests: a whole stack of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.plumbing.settings import Settings
from tests.support.stacks import fresh_stack


@pytest.fixture
async def stack(settings: Settings, migrated_template: str) -> AsyncIterator[Settings]:
    """The test's settings on a fresh database with relay and projector on; its database,
    broker names and Mongo database removed afterwards."""
    async with fresh_stack(
        settings, migrated_template, relay_enabled=True, projector_enabled=True
    ) as ready:
        yield ready
