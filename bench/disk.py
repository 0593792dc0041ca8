"""The disk's own fsync latency while a steady run goes on: the machine's part of the lag.

Every durable write on the way from a command to the read model waits for an fsync:
PostgreSQL's commit, RabbitMQ's quorum queue, the read store's commit (SecantusDB runs
`--sync-on-commit`). They share one disk here, and a virtual disk now and then takes 80 ms
to over a second for one fsync; each such stall holds the orders of that moment, whatever the
app does (docs/benchmarks.md). So the steady runs carry a probe beside them: a thread that
writes 4 KiB to a file of its own and fsyncs it, every 50 ms (20 small syncs a second, next
to the hundreds the stack does), and the report gives its p50, p99 and max and how many took
50 ms or more.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from types import TracebackType
from typing import Final

STALL_S: Final = 0.05
_EVERY_S: Final = 0.05
_BLOCK: Final = b"\0" * 4096


class FsyncProbe:
    """`with FsyncProbe(directory) as probe:` fsyncs a file in `directory` (default: the
    system's temporary directory) every 50 ms until the block ends; `probe.latencies_s` then
    holds each fsync's seconds."""

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory or tempfile.gettempdir()
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FsyncProbe:
        descriptor, path = tempfile.mkstemp(prefix="fsync-probe-", dir=self._directory)
        os.unlink(path)  # the file lives while it is open, and never outlives the probe
        self._thread = threading.Thread(
            target=self._run, args=(descriptor,), name="fsync-probe", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, descriptor: int) -> None:
        try:
            while not self._stop.is_set():
                os.pwrite(descriptor, _BLOCK, 0)
                started = time.perf_counter()
                os.fsync(descriptor)
                self.latencies_s.append(time.perf_counter() - started)
                self._stop.wait(_EVERY_S)
        finally:
            os.close(descriptor)
