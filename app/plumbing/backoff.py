"""Retry delays for the background parts (relay, projector): exponential, capped, jittered."""

from __future__ import annotations

import random


class Backoff:
    """Delays of base, 2x base, 4x base … up to `cap_s`, each drawn from its upper half so that
    replicas retrying the same dependency do not retry in step. `reset` after a success."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 10.0) -> None:
        self._base = base_s
        self._cap = cap_s
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._base * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self._attempt = 0
