"""Folding a batch's writes to one document into one write: far fewer round trips to MongoDB.

A batch touches many documents several times (a product's stock on every order, a customer's
counters, an order placed and paid). `coalesce` merges consecutive writes to the same document
into one update fenced by every merged write's fence (the first's for a field they share), so
the merged write applies exactly when the document is still before the batch. When the document
had already moved past a fence (a redelivery after a crash), the merged write changes nothing:
the caller notices the shortfall and falls back to the one-write-per-event path, whose fences
sort it out. (Each write goes to the store as an update pipeline found by `_id` alone, the
fence inside it: app/projector/pipelines.py.)

Pure: no I/O, and no input is changed: a merged update is built fresh (new operator and field
dicts; values are shared and never mutated), far cheaper than deep copies. Updates use only
$set, $inc, $push, $max and $setOnInsert; a write that cannot be merged into its document's
pending one (say, an $inc of a field set only on insert to a non-zero value) starts a new write
for that document, after the pending one. Two writes to one document are not independent: the
later one's fence may hold where the earlier one's did not (per-stream fences), and it would
then apply ahead of the events the earlier one carried, so the caller sends such a batch one
write per event instead (app/projector/readmodel.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from app.projector.documents import Write

Update = dict[str, dict[str, Any]]


def coalesce(writes: Sequence[Write]) -> list[Write]:
    """Writes with the same effect as `writes` applied in order, when every document is still
    before its first write's fence; fewer of them. Per document, order is kept."""
    merged: list[Write] = []
    pending: dict[tuple[str, Any], int] = {}  # (collection, _id) -> index in merged
    for write in writes:
        key = (write.collection, write.filter["_id"])
        index = pending.get(key)
        # An upsert never joins a write that would not insert: if the document were missing,
        # the first write would do nothing and the second would create it.
        if index is not None and (merged[index].upsert or not write.upsert):
            combined = _merge(merged[index].update, write.update)
            if combined is not None:
                # every merged write's fence must hold (a customer has one per order stream);
                # for the same field the first write's, the older one, is the fence
                merged[index] = merged[index]._replace(
                    filter={**write.filter, **merged[index].filter},
                    update=combined,
                    upsert=merged[index].upsert or write.upsert,
                )
                continue
        pending[key] = len(merged)
        merged.append(write)
    return merged


def _merge(first: Update, then: Update) -> Update | None:
    """One update doing `first` then `then`, or None when that cannot be expressed."""
    result = {operator: dict(fields) for operator, fields in first.items()}
    pushes = result.get("$push", {})
    for name, value in pushes.items():
        if not (isinstance(value, dict) and "$each" in value):
            pushes[name] = {"$each": [value]}
    sets = result.setdefault("$set", {})
    for operator, fields in then.items():
        for name, value in fields.items():
            if not _fold(result, sets, operator, name, value):
                return None
    if not sets:
        del result["$set"]
    return result


def _fold(result: Update, sets: dict[str, Any], operator: str, name: str, value: Any) -> bool:
    """Fold `operator` on field `name` into `result` (whose "$set" is `sets`); False when
    that cannot be expressed as one update."""
    fold = _FOLDS.get(operator)
    if fold is None or not fold(result, sets, name, value):
        return False
    for empty in [
        op for op in ("$inc", "$push", "$max", "$setOnInsert") if op in result and not result[op]
    ]:
        del result[empty]
    return True


def _fold_set(result: Update, sets: dict[str, Any], name: str, value: Any) -> bool:
    for other in ("$inc", "$push", "$max", "$setOnInsert"):
        result.get(other, {}).pop(name, None)
    sets[name] = value
    return True


def _fold_inc(result: Update, sets: dict[str, Any], name: str, value: Any) -> bool:
    inserted = result.get("$setOnInsert", {})
    if name in sets:
        sets[name] += value
    elif name in inserted:
        if inserted[name] != 0:
            return False
        del inserted[name]  # $inc of a missing field starts from 0, as the insert would
        result.setdefault("$inc", {})[name] = value
    else:
        incs = result.setdefault("$inc", {})
        incs[name] = incs.get(name, 0) + value
    return True


def _fold_push(result: Update, sets: dict[str, Any], name: str, value: Any) -> bool:
    if name in sets:
        sets[name] = [*sets[name], value]
    elif name in result.get("$setOnInsert", {}):
        return False
    else:
        pushes = result.setdefault("$push", {})
        earlier = pushes.get(name, {"$each": []})["$each"]
        pushes[name] = {"$each": [*earlier, value]}
    return True


def _fold_max(result: Update, sets: dict[str, Any], name: str, value: Any) -> bool:
    if name in sets:
        sets[name] = max(sets[name], value)
    elif name in result.get("$setOnInsert", {}):
        return False
    else:
        maxes = result.setdefault("$max", {})
        maxes[name] = max(maxes[name], value) if name in maxes else value
    return True


def _fold_set_on_insert(result: Update, sets: dict[str, Any], name: str, value: Any) -> bool:
    # A later $setOnInsert never applies: an upsert only joins a pending upsert (`coalesce`),
    # so the document exists after the pending write, whether it found one or inserted it.
    return True


_FOLDS: Final[dict[str, Callable[[Update, dict[str, Any], str, Any], bool]]] = {
    "$set": _fold_set,
    "$inc": _fold_inc,
    "$push": _fold_push,
    "$max": _fold_max,
    "$setOnInsert": _fold_set_on_insert,
}
