"""A fenced write as an update pipeline on `_id` alone: the fence moves into the update.

`Write` (app/projector/documents.py) says what to change and under which fence, MongoDB's
classic way: `{_id, version: {$lt: v}}` with `$set`/`$inc`/... operators. A store must then
find the document by a filter with a second condition, which a real `mongod` answers from the
`_id` index but which SecantusDB answers by scanning the collection (measured here: 0.8 ms per
update on 100,000 documents by `_id` alone, 39 ms with the fence). So every write is sent as
`UpdateOne({_id}, [ {$set: {field: {$cond: [fence, new value, "$field"]}}} ], upsert)`: the
same effect, atomically, on any server that runs update pipelines (MongoDB 4.2 and later), and
found by `_id` alone. A fence that does not hold leaves every field as it was (an upsert of a
missing document finds every fence open), so re-applying a write changes nothing, as before.

Values go in as `$literal`, so no text from an event is ever read as a field path or operator.

`many` sends the writes of several documents that already exist as one `UpdateMany` on their
`_id`s, each field's new value chosen by `$switch` on `_id` (a field a document's write does not
touch keeps its value; a missing one stays missing). Same effect as one `UpdateOne` each, but
one statement: SecantusDB commits, and with `--sync-on-commit` syncs its log, once per
statement, not once per document (docs/benchmarks.md). Each document's `$switch` tests every
`_id` of its statement, so `MANY` bounds a statement's documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from pymongo import UpdateMany, UpdateOne

from app.projector.documents import Write

Expression = dict[str, Any]

# documents per `many` statement: a document's `$switch`es test every `_id` of its statement,
# so past a few dozen they cost the store more than the commits they save (Rust server, 128
# products' updates: statements of 32 took 7.4-9.9 ms, of 64 9.4-10.0, one of 128 11.8-13.0,
# one UpdateOne each 23.7 ms)
MANY: Final = 32


def fence(filter: dict[str, Any]) -> Expression | bool:
    """The filter's fences as one expression: `{f: {$lt: v}}` and `{f: {$not: {$gte: v}}}`
    both become "f, or 0 when missing, is below v" (versions start at 1)."""
    conditions: list[Expression] = []
    for field, condition in filter.items():
        if field == "_id":
            continue
        if set(condition) == {"$lt"}:
            bound = condition["$lt"]
        elif set(condition) == {"$not"} and set(condition["$not"]) == {"$gte"}:
            bound = condition["$not"]["$gte"]
        else:
            raise ValueError(f"no pipeline form for the fence {field}: {condition!r}")
        conditions.append({"$lt": [{"$ifNull": [f"${field}", 0]}, bound]})
    if not conditions:
        return True
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _fenced(condition: Expression | bool, field: str, value: Expression) -> Expression:
    return {"$cond": [condition, value, f"${field}"]}


def stage(write: Write) -> Expression:
    """The `$set` stage doing `write.update` when the fence of `write.filter` holds."""
    when = fence(write.filter)
    fields: dict[str, Any] = {}
    for operator, changes in write.update.items():
        for field, value in changes.items():
            current = f"${field}"
            if operator == "$set":
                fields[field] = _fenced(when, field, {"$literal": value})
            elif operator == "$inc":
                added = {"$add": [{"$ifNull": [current, 0]}, {"$literal": value}]}
                fields[field] = _fenced(when, field, added)
            elif operator == "$max":
                fields[field] = _fenced(when, field, {"$max": [current, {"$literal": value}]})
            elif operator == "$push":
                items = value["$each"] if isinstance(value, dict) and "$each" in value else [value]
                pushed = {"$concatArrays": [{"$ifNull": [current, []]}, {"$literal": items}]}
                fields[field] = _fenced(when, field, pushed)
            elif operator == "$setOnInsert":  # set when missing: the document is being created
                fields[field] = {"$ifNull": [current, {"$literal": value}]}
            else:
                raise ValueError(f"no pipeline form for {operator}")
    return {"$set": fields}


def operation(write: Write, namespace: str | None = None) -> UpdateOne:
    """`write` as one update pipeline found by `_id` alone (`namespace`, "db.collection", for
    a client-level bulk write)."""
    return UpdateOne(
        {"_id": write.filter["_id"]}, [stage(write)], upsert=write.upsert, namespace=namespace
    )


def many(writes: Sequence[Write], namespace: str | None = None) -> UpdateMany:
    """`writes`, to distinct documents that exist (no upserts), as one update pipeline on
    their `_id`s: each field set by a `$switch` on `_id` to that document's fenced value."""
    ids = [write.filter["_id"] for write in writes]
    branches: dict[str, list[Expression]] = {}
    for doc_id, write in zip(ids, writes, strict=True):
        case = {"$eq": ["$_id", {"$literal": doc_id}]}
        for field, value in stage(write)["$set"].items():
            branches.setdefault(field, []).append({"case": case, "then": value})
    fields = {
        field: {"$switch": {"branches": cases, "default": f"${field}"}}
        for field, cases in branches.items()
    }
    return UpdateMany({"_id": {"$in": ids}}, [{"$set": fields}], namespace=namespace)
