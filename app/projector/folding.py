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
    inserting = document is None
    if document is None:
        if not write.upsert:
            return None
        result: Document = {"_id": write.filter["_id"]}
    elif not _matches(document, write.filter):
        return document
    else:
        result = dict(document)
    for operator, fields in write.update.items():
        for name, value in fields.items():
            _apply(result, operator, name, value, inserting)
    return result


def _matches(document: Document, query: dict[str, Any]) -> bool:
    for name, condition in query.items():
        if name == "_id":
            continue
        if not (isinstance(condition, dict) and set(condition) == {"$lt"}):
            raise ValueError(f"unsupported filter on {name}: {condition!r}")
        # as in MongoDB, a missing field does not satisfy $lt
        if name not in document or not document[name] < condition["$lt"]:
            return False
    return True


def _apply(result: Document, operator: str, name: str, value: Any, inserting: bool) -> None:
    if operator == "$set":
        result[name] = value
    elif operator == "$inc":
        result[name] = result.get(name, 0) + value
    elif operator == "$push":
        items = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
        result[name] = [*result.get(name, []), *items]
    elif operator == "$max":
        current = result.get(name)
        result[name] = value if current is None else max(current, value)
    elif operator == "$setOnInsert":
        if inserting:
            result[name] = value
    else:
        raise ValueError(f"unsupported update operator {operator}")
