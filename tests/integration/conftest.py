"""Fixtures of the integration tests that run the whole pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.plumbing.settings import Settings
from tests.support.stacks import fresh_stack


@pytest.fixture
async def pipeline_stack(settings: Settings, migrated_template: str) -> AsyncIterator[Settings]:
    """A stack of this test's own with the relay and the projector on (quick polling)."""
    async with fresh_stack(
        settings,
        migrated_template,
        relay_enabled=True,
        projector_enabled=True,
        relay_poll_interval_s=0.05,
        projector_idle_check_s=0.2,
    ) as stack:
        yield stack
