"""Event schema evolution: upcasters turn an event stored at an old `schema_version` into the
shape the current code expects, wherever the log is read.

Writers always write the newest version (`current_version`). An upcaster takes the data of
version n (a plain dict, as logged) and returns the data of version n + 1; they chain, so an
event several versions old goes through each in turn. `upcast` is applied by the log reader
(app/contracts/eventlog.py: the relay publishes, the projector repairs, the rebuild folds) and
by the projector to broker deliveries published before an upgrade, so every reader sees the
current shape and no projection ever handles an old one. README "Changing an event" says how to
add one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

Data = dict[str, Any]
Upcaster = Callable[[Data], Data]


def _order_placed_v1_to_v2(data: Data) -> Data:
    """v2 adds `item_count`, the units ordered over all lines: derived from v1's lines."""
    return {**data, "item_count": sum(int(line["quantity"]) for line in data["lines"])}


# (event type, the version it reads) -> the upcaster to the next version
UPCASTERS: Final[dict[tuple[str, int], Upcaster]] = {
    ("OrderPlaced", 1): _order_placed_v1_to_v2,
}


def current_version(type_name: str) -> int:
    """The version writers write: one past the last upcaster of the type (1 without any)."""
    version = 1
    while (type_name, version) in UPCASTERS:
        version += 1
    return version


def upcast(
    type_name: str, version: int, data: bytes | msgspec.Raw
) -> tuple[int, bytes | msgspec.Raw]:
    """`data` (JSON) of `type_name` at `version` in the current shape, and its version. The
    bytes pass through untouched when the event is already current (the usual case)."""
    if (type_name, version) not in UPCASTERS:
        return version, data
    decoded: Data = msgspec.json.decode(data)
    while (type_name, version) in UPCASTERS:
        decoded = UPCASTERS[(type_name, version)](decoded)
        version += 1
    return version, msgspec.json.encode(decoded)
