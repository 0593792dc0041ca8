"""Progress of a long operator command, one phase at a time.

On a terminal a bar redrawn in place (done/total, per second, time left); otherwise one plain
line every `interval_s` seconds and one when the phase ends, so logs of a job stay short.
"""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

import msgspec

_WIDTH: Final = 24


class Phase(msgspec.Struct, frozen=True, kw_only=True):
    phase: str
    done: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """Call it with the count reached (`start`-based: a position works); `finish` ends the
    phase and returns what it did."""

    def __init__(
        self,
        phase: str,
        total: int,
        *,
        start: int = 0,
        unit: str = "events",
        out: TextIO | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.phase, self.unit = phase, unit
        self._total, self._start = max(0, total - start), start
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._interval_s = 0.1 if self._tty else interval_s
        self._began = self._shown = time.monotonic()
        self._done = 0

    def __call__(self, reached: int) -> None:
        self._done = max(self._done, reached - self._start)
        now = time.monotonic()
        if now - self._shown >= self._interval_s:
            self._shown = now
            self._show(now)

    def finish(self) -> Phase:
        now = time.monotonic()
        self._show(now, final=True)
        return Phase(phase=self.phase, done=self._done, seconds=round(now - self._began, 3))

    def _show(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._began, 1e-9)
        rate = self._done / elapsed
        total = max(self._total, self._done)
        text = f"{self.phase:<9} {self._done:,}/{total:,} {self.unit}  {rate:,.0f}/s"
        if final:
            text += f"  done in {elapsed:.1f} s"
        elif rate > 0 and total > self._done:
            text += f"  ETA {(total - self._done) / rate:.0f} s"
        if self._tty:
            filled = _WIDTH * self._done // total if total else _WIDTH
            bar = "#" * filled + "-" * (_WIDTH - filled)
            self._out.write(f"\r[{bar}] {text}\033[K" + ("\n" if final else ""))
        else:
            self._out.write(text + "\n")
        self._out.flush()
