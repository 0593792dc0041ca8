"""Seeded randomness: one seed per test, from `--seed` or TEST_SEED (else drawn at random),
recorded on the test so a failure report says how to rerun it."""

from __future__ import annotations

import os
import random

import pytest

SEED = "random seed"


def add_seed_option(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed", type=int, default=None, help="seed of every test's rng (default: TEST_SEED)"
    )


def seed_for(request: pytest.FixtureRequest) -> int:
    """The seed of this test, recorded in its user properties."""
    chosen: int | None = request.config.getoption("seed")
    if chosen is None and os.environ.get("TEST_SEED"):
        chosen = int(os.environ["TEST_SEED"])
    seed = random.randrange(2**32) if chosen is None else chosen
    request.node.user_properties.append((SEED, seed))
    return seed


def seed_report(item: pytest.Item) -> str | None:
    """The line a failure report of `item` gets, when it used a seed."""
    seeds = [value for name, value in item.user_properties if name == SEED]
    if not seeds:
        return None
    return f"{SEED}: {seeds[0]} (rerun with TEST_SEED={seeds[0]})"
