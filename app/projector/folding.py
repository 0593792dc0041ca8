"""The projector's fenced writes applied to documents in memory, as MongoDB would apply them.

The rebuild uses it to fold a whole chunk of the log into final documents and store each
document once, instead of sending one update per event. Only what the projections use is
understood: filters on `_id` plus `$lt` fences, and $set, $inc, $push, $max, $setOnInsert.
"""

from __future__ import annotations

from typing import Any

from app.contracts.readmodel import Document
from app.projector.documents import Write


def apply_write(document: Document | None, write: Write) -> Document | None:
    """The document after `write` (a new dict; `document` is not changed), or None when the
    document does not exist and the write does not upsert."""
    return _applied(document, write, in_place=False)


def own(document: Document) -> Document:
    """A copy of `document` that `apply_owned` may change: its dicts (nested ones too) are
    new; lists and values are shared, which is safe, as no operator changes them in place."""
    return {k: own(v) if isinstance(v, dict) else v for k, v in document.items()}


def apply_owned(document: Document | None, write: Write) -> Document | None:
    """Like `apply_write`, but changes `document` in place: the caller owns it (`own`, or a
    result of this function). Folding many writes into one document copies it once."""
    return _applied(document, write, in_place=True)


def _applied(document: Document | None, write: Write, *, in_place: bool) -> Document | None:
    inserting = document is None
    if document is None:
        if not write.upsert:
            return None
        result: Document = {"_id": write.filter["_id"]}
    elif not _matches(document, write.filter):
        return document
    else:
        result = document if in_place else dict(document)
    copy = not in_place
    for operator, fields in write.update.items():
        for name, value in fields.items():
            _apply(result, operator, name, value, inserting, copy)
    return result


def _matches(document: Document, query: dict[str, Any]) -> bool:
    for name, condition in query.items():
        if name == "_id":
            continue
        present, value = _get(document, name)
        if isinstance(condition, dict) and set(condition) == {"$lt"}:
            # as in MongoDB, a missing field does not satisfy $lt
            if not present or not value < condition["$lt"]:
                return False
        elif isinstance(condition, dict) and set(condition) == {"$not"}:
            inner = condition["$not"]
            if not (isinstance(inner, dict) and set(inner) == {"$gte"}):
                raise ValueError(f"unsupported filter on {name}: {condition!r}")
            # $not: {$gte: v} holds for a missing field too
            if present and value >= inner["$gte"]:
                return False
        else:
            raise ValueError(f"unsupported filter on {name}: {condition!r}")
    return True


def _get(document: Document, path: str) -> tuple[bool, Any]:
    """(present, value) of a dotted `path` in `document`."""
    if "." not in path:
        return (True, document[path]) if path in document else (False, None)
    value: Any = document
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return False, None
        value = value[key]
    return True, value


def _parent(result: Document, path: str, copy: bool) -> tuple[Document, str]:
    """The dict holding the last key of dotted `path` in `result` (with `copy`, copied on the
    way, so the caller's document is never changed), and that key."""
    if "." not in path:
        return result, path
    *parents, last = path.split(".")
    holder = result
    for key in parents:
        child = holder.get(key)
        if not isinstance(child, dict):
            child = holder[key] = {}
        elif copy:
            child = holder[key] = dict(child)
        holder = child
    return holder, last


def _apply(
    result: Document, operator: str, path: str, value: Any, inserting: bool, copy: bool
) -> None:
    if operator == "$setOnInsert" and not inserting:
        return
    holder, name = _parent(result, path, copy)
    if operator in ("$set", "$setOnInsert"):
        holder[name] = value
    elif operator == "$inc":
        holder[name] = holder.get(name, 0) + value
    elif operator == "$push":
        items = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
        holder[name] = [*holder.get(name, []), *items]
    elif operator == "$max":
        current = holder.get(name)
        holder[name] = value if current is None else max(current, value)
    else:
        raise ValueError(f"unsupported update operator {operator}")
