"""Comparing two generations of the read model, document by document, before a switch.

Both generations are read in `_id` order and merged (app/operations/verify.py `merged`), so
memory holds a chunk per side whatever their size. The current generation keeps moving while
this runs (the live projector writes it), so a difference is a *change* only when both
documents reflect the same log position (every document stores the `position` of the last
event applied to it): then the new code projects the same events differently. Otherwise the
document is *moving*: it is compared again after the new generation has caught up once more,
a few rounds, and what still moves is reported as unsettled (it changes faster than the
rounds; it is neither a change nor a blocker).

A change is named `<collection>.<field>` (top-level field, `*` for a document only one side
has); `--expect-changes` lists the names that may differ (a collection alone admits all its
fields).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import msgspec

from app.contracts.readmodel import COLLECTIONS, Db, Document, applied_position
from app.operations.verify import documents_by_id, merged

MAX_LISTED: Final = 50  # changes kept with their values, per run
MAX_MOVING: Final = 100_000  # ids re-checked; beyond it they count as unsettled at once
_ROUNDS: Final = 3
_IN_CHUNK: Final = 1000


class Change(msgspec.Struct, frozen=True, kw_only=True):
    collection: str
    id: str
    field: str  # "*": the document exists on one side only
    current: Any
    new: Any


class Comparison(msgspec.Struct, kw_only=True):
    checked: dict[str, int]
    changes: dict[str, int]  # "<collection>.<field>" -> documents
    examples: list[Change]
    unsettled: int = 0

    def unexpected(self, expected: Iterable[str]) -> dict[str, int]:
        """The changes `expected` does not admit ("orders.item_count", or "orders" for all)."""
        admitted = set(expected)
        return {
            name: count
            for name, count in self.changes.items()
            if name not in admitted and name.split(".", 1)[0] not in admitted
        }


def _differences(
    name: str, doc_id: str, current: Document | None, new: Document | None
) -> list[Change]:
    if current is None or new is None:
        return [
            Change(
                collection=name,
                id=doc_id,
                field="*",
                current=current is not None,
                new=new is not None,
            )
        ]
    fields = sorted(set(current) | set(new))
    return [
        Change(
            collection=name, id=doc_id, field=field, current=current.get(field), new=new.get(field)
        )
        for field in fields
        if current.get(field) != new.get(field)
    ]


def _settled(current: Document | None, new: Document | None, positions: tuple[int, int]) -> bool:
    """Whether a difference is the projection's and not the live generation moving on: both
    documents at the same position, or a document one side lacks although its position is
    within what that side has applied."""
    if current is not None and new is not None:
        return current.get("position") == new.get("position")
    present, other_applied = (current, positions[1]) if current is not None else (new, positions[0])
    assert present is not None
    return int(present.get("position", 0)) <= other_applied


async def compare(
    current: Db,
    new: Db,
    catch_up: Callable[[], Awaitable[None]],
    progress: Callable[[int], None] | None = None,
) -> Comparison:
    """Compare `new` with `current` (see the module docstring); `catch_up` brings `new` up to
    the current generation's position again before each re-check."""
    result = Comparison(checked={}, changes={}, examples=[])
    changes: Counter[str] = Counter()
    moving: dict[str, list[str]] = {name: [] for name in COLLECTIONS}
    kept, overflow = 0, 0  # moving ids kept for a re-check, and those past MAX_MOVING
    positions = (await applied_position(current), await applied_position(new))
    for name in COLLECTIONS:
        checked = 0
        async for doc_id, a, b in merged(
            documents_by_id(current, name), documents_by_id(new, name)
        ):
            checked += 1
            if a == b:
                continue
            if _settled(a, b, positions):
                _record(result, changes, _differences(name, doc_id, a, b))
            elif kept < MAX_MOVING:
                moving[name].append(doc_id)
                kept += 1
            else:
                overflow += 1
        result.checked[name] = checked
        if progress is not None:
            progress(sum(result.checked.values()))
    for _ in range(_ROUNDS):
        if not any(moving.values()):
            break
        await catch_up()
        positions = (await applied_position(current), await applied_position(new))
        moving = {
            name: await _recheck(current, new, name, ids, positions, result, changes)
            for name, ids in moving.items()
        }
    result.unsettled = overflow + sum(map(len, moving.values()))
    result.changes = dict(changes)
    return result


async def _recheck(
    current: Db,
    new: Db,
    name: str,
    ids: list[str],
    positions: tuple[int, int],
    result: Comparison,
    changes: Counter[str],
) -> list[str]:
    still: list[str] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        a = {str(d["_id"]): d async for d in current[name].find({"_id": {"$in": chunk}})}
        b = {str(d["_id"]): d async for d in new[name].find({"_id": {"$in": chunk}})}
        for doc_id in chunk:
            x, y = a.get(doc_id), b.get(doc_id)
            if x == y:
                continue
            if _settled(x, y, positions):
                _record(result, changes, _differences(name, doc_id, x, y))
            else:
                still.append(doc_id)
    return still


def _record(result: Comparison, changes: Counter[str], found: list[Change]) -> None:
    for change in found:
        changes[f"{change.collection}.{change.field}"] += 1
        if len(result.examples) < MAX_LISTED:
            result.examples.append(change)
