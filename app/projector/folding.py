"""The projector's fenced writes applied to documents in memory, as MongoDB would apply them.

The rebuild uses it to fold a whole chunk of the log into final documents and store each
document once, instead of sending one update per event. Only what the projections use is
understood: filters on `_id` plus `$lt` and `$not: {$gte}` fences, and $set, $inc, $push, $max,
$setOnInsert. Each operator is applied field by field in one loop of its own (the rebuild
applies every event of the log through here: this is its hottest code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from app.contracts.readmodel import Document
from app.projector.documents import Write


def apply_write(document: Document | None, write: Write) -> Document | None:
    """The document after `write` (a new dict; `document` is not changed), or None when the
    document does not exist and the write does not upsert."""
    if document is not None and _matches(document, write.filter):
        document = own(document)
    return apply_owned(document, write)


def own(document: Document) -> Document:
    """A copy of `document` that `apply_owned` may change: its dicts (nested ones too) are
    new; lists and values are shared, which is safe, as no operator changes them in place."""
    return {k: own(v) if isinstance(v, dict) else v for k, v in document.items()}


def apply_owned(document: Document | None, write: Write) -> Document | None:
    """Like `apply_write`, but changes `document` in place: the caller owns it (`own`, or a
    result of this function). Folding many writes into one document copies it once."""
    inserting = document is None
    if document is None:
        if not write.upsert:
            return None
        document = {"_id": write.filter["_id"]}
    elif not _matches(document, write.filter):
        return document
    for operator, fields in write.update.items():
        apply = _OPERATORS.get(operator)
        if apply is None:
            raise ValueError(f"unsupported update operator {operator}")
        apply(document, fields, inserting)
    return document


def _matches(document: Document, query: dict[str, Any]) -> bool:
    for name, condition in query.items():
        if name == "_id":
            continue
        present, value = _get(document, name)
        if type(condition) is dict and len(condition) == 1:
            if "$lt" in condition:
                # as in MongoDB, a missing field does not satisfy $lt
                if not present or not value < condition["$lt"]:
                    return False
                continue
            inner = condition.get("$not")
            if type(inner) is dict and len(inner) == 1 and "$gte" in inner:
                # $not: {$gte: v} holds for a missing field too
                if present and value >= inner["$gte"]:
                    return False
                continue
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


def _parent(document: Document, path: str) -> tuple[Document, str]:
    """The dict holding the last key of dotted `path` in `document` (created on the way when
    missing), and that key."""
    if "." not in path:
        return document, path
    *parents, last = path.split(".")
    holder = document
    for key in parents:
        child = holder.get(key)
        if not isinstance(child, dict):
            child = holder[key] = {}
        holder = child
    return holder, last


def _set(document: Document, fields: dict[str, Any], inserting: bool) -> None:
    for path, value in fields.items():
        if "." in path:
            holder, name = _parent(document, path)
            holder[name] = value
        else:
            document[path] = value


def _set_on_insert(document: Document, fields: dict[str, Any], inserting: bool) -> None:
    if inserting:
        _set(document, fields, inserting)


def _inc(document: Document, fields: dict[str, Any], inserting: bool) -> None:
    for path, value in fields.items():
        holder, name = _parent(document, path)
        holder[name] = holder.get(name, 0) + value


def _push(document: Document, fields: dict[str, Any], inserting: bool) -> None:
    for path, value in fields.items():
        holder, name = _parent(document, path)
        items = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
        holder[name] = [*holder.get(name, ()), *items]  # a new list: lists are shared (`own`)


def _max(document: Document, fields: dict[str, Any], inserting: bool) -> None:
    for path, value in fields.items():
        holder, name = _parent(document, path)
        current = holder.get(name)
        holder[name] = value if current is None else max(current, value)


_OPERATORS: Final[dict[str, Callable[[Document, dict[str, Any], bool], None]]] = {
    "$set": _set,
    "$setOnInsert": _set_on_insert,
    "$inc": _inc,
    "$push": _push,
    "$max": _max,
}
