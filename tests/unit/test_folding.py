"""The projector's writes applied in memory follow MongoDB's rules."""

from __future__ import annotations

from app.projector.documents import Write
from app.projector.folding import apply_owned, apply_write, own


def _w(update: dict, fence: int, upsert: bool = False) -> Write:  # type: ignore[type-arg]
    return Write("products", {"_id": "p", "version": {"$lt": fence}}, update, upsert)


def test_an_upsert_creates_and_set_on_insert_applies_only_then() -> None:
    created = apply_write(None, _w({"$set": {"version": 1}, "$setOnInsert": {"n": 0}}, 1, True))
    assert created == {"_id": "p", "version": 1, "n": 0}
    again = apply_write(created, _w({"$set": {"version": 2}, "$setOnInsert": {"n": 9}}, 2, True))
    assert again == {"_id": "p", "version": 2, "n": 0}


def test_a_plain_update_of_a_missing_document_does_nothing() -> None:
    assert apply_write(None, _w({"$set": {"version": 1}}, 1)) is None


def test_the_fence_skips_what_is_already_applied() -> None:
    document = {"_id": "p", "version": 3, "sold": 5}
    assert apply_write(document, _w({"$inc": {"sold": 1}, "$set": {"version": 3}}, 3)) is document


def test_operators() -> None:
    document = {"_id": "p", "version": 1, "sold": 5, "h": ["a"], "last": None}
    update = {"$set": {"version": 2}, "$inc": {"sold": 2, "new": 1},
              "$push": {"h": {"$each": ["b", "c"]}}, "$max": {"last": 4}}  # fmt: skip
    assert apply_write(document, _w(update, 2)) == {
        "_id": "p", "version": 2, "sold": 7, "new": 1, "h": ["a", "b", "c"], "last": 4}  # fmt: skip
    assert document["h"] == ["a"]


def test_per_stream_fences_on_dotted_fields() -> None:
    def spent(order: str, version: int, cents: int) -> Write:
        fence = {"_id": "c", f"applied.{order}": {"$not": {"$gte": version}}}
        update = {"$inc": {"spent": cents}, "$set": {f"applied.{order}": version}}
        return Write("customers", fence, update)

    document = {"_id": "c", "spent": 0, "applied": {"a": 1, "b": 1}}
    newer = apply_write(document, spent("b", 2, 5))  # order b moved on first...
    assert newer == {"_id": "c", "spent": 5, "applied": {"a": 1, "b": 2}}
    late = apply_write(newer, spent("a", 2, 7))  # ...a late release of order a still applies
    assert late == {"_id": "c", "spent": 12, "applied": {"a": 2, "b": 2}}
    assert apply_write(late, spent("a", 2, 7)) is late  # and only once
    assert document["applied"] == {"a": 1, "b": 1}


def test_owned_documents_change_in_place_and_their_originals_never() -> None:
    def spent(order: str, version: int, cents: int) -> Write:
        fence = {"_id": "c", f"applied.{order}": {"$not": {"$gte": version}}}
        update = {"$inc": {"spent": cents}, "$set": {f"applied.{order}": version}}
        return Write("customers", fence, update)

    original = {"_id": "c", "spent": 0, "applied": {"a": 1}, "history": [1]}
    owned = own(original)
    folded = apply_owned(owned, spent("a", 2, 5))
    folded = apply_owned(folded, spent("b", 1, 7))
    assert folded is owned
    assert folded == {"_id": "c", "spent": 12, "applied": {"a": 2, "b": 1}, "history": [1]}
    assert original == {"_id": "c", "spent": 0, "applied": {"a": 1}, "history": [1]}
    pushed = apply_owned(folded, Write("customers", {"_id": "c"}, {"$push": {"history": 2}}))
    assert pushed is not None
    assert pushed["history"] == [1, 2]
    assert original["history"] == [1]
    assert apply_owned(None, spent("a", 1, 1)) is None  # no upsert: nothing to create
