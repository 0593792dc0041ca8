"""The garbage collector's settings for the service's long-running processes.

CPython collects its youngest generation every 700 net allocations of container objects and
its oldest when the objects promoted since the last full collection reach a quarter of those
that survived it. What start-up built (modules, classes, pools, clients: ~60,000 objects in
`serve`) survives every collection and is scanned by every full one; the 42,000 of the modules
alone take ~40 ms per full collection on the 2-core machine of docs/benchmarks.md. `settle`
keeps those out of every later collection (`gc.freeze`) and collects the youngest generation
every `young_every` net allocations, so the objects still in use when a collection runs
(requests in flight, a rebuild's chunk) are promoted less often and set off fewer full
collections. Collection stays on: cycles are still freed, later.

`paused` is for a loop whose objects are all freed by reference counting and whose working set
is large and young (the rebuild's chunk): every collection in it would scan that set and find
nothing. It turns automatic collection off for the loop, which collects cycles itself at
moments of its choosing (`gc.collect`), so they are still freed.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def settle(young_every: int) -> None:
    """Collect once, freeze what is left, then collect the youngest generation every
    `young_every` net allocations (the older generations' thresholds unchanged, 10 and 10)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_every, 10, 10)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Automatic collection off inside the block, and back as it was after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
