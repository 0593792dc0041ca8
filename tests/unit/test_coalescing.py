"""Folding a document's writes within a batch into one write (pure)."""

from __future__ import annotations

from app.projector.coalescing import coalesce
from app.projector.documents import Write


def _w(update: dict, upsert: bool = False, doc: str = "p1", fence: int = 1) -> Write:  # type: ignore[type-arg]
    return Write("products", {"_id": doc, "version": {"$lt": fence}}, update, upsert)


def test_set_then_inc_and_push_fold_into_the_set() -> None:
    merged = coalesce(
        [
            _w({"$set": {"stock": 5, "units_sold": 0, "history": []}}, upsert=True),
            _w(
                {"$set": {"stock": 4}, "$inc": {"units_sold": 1}, "$push": {"history": "a"}},
                fence=2,
            ),
            _w(
                {"$set": {"stock": 2}, "$inc": {"units_sold": 2}, "$push": {"history": "b"}},
                fence=3,
            ),
        ]
    )
    assert merged == [
        _w({"$set": {"stock": 2, "units_sold": 3, "history": ["a", "b"]}}, upsert=True)
    ]


def test_incs_and_pushes_accumulate_under_the_first_fence() -> None:
    merged = coalesce(
        [
            _w({"$set": {"stock": 4}, "$inc": {"units_sold": 1}, "$push": {"h": "a"}}, fence=5),
            _w({"$set": {"stock": 3}, "$inc": {"units_sold": 1}, "$push": {"h": "b"}}, fence=6),
        ]
    )
    assert merged == [
        _w(
            {
                "$set": {"stock": 3},
                "$inc": {"units_sold": 2},
                "$push": {"h": {"$each": ["a", "b"]}},
            },
            fence=5,
        )
    ]


def test_an_inc_joins_a_zero_set_on_insert() -> None:
    merged = coalesce(
        [
            _w({"$inc": {"n": 1}, "$setOnInsert": {"spent": 0}}, upsert=True),
            _w({"$inc": {"spent": 300}, "$max": {"last": 7}}, fence=2),
        ]
    )
    assert merged == [_w({"$inc": {"n": 1, "spent": 300}, "$max": {"last": 7}}, upsert=True)]


def test_a_later_set_on_insert_never_applies_so_it_never_splits_a_write() -> None:
    """The pending upsert leaves the document existing, so a later upsert's $setOnInsert is a
    no-op: it joins (it used to start a second write, which could apply on its own)."""
    placed = _w({"$inc": {"n": 1}, "$setOnInsert": {"spent": 0}}, upsert=True)
    merged = coalesce(
        [
            placed,
            _w({"$inc": {"spent": 300}}, fence=2),
            placed._replace(filter={"_id": "p1", "version": {"$lt": 3}}),
        ]
    )
    assert merged == [_w({"$inc": {"n": 2, "spent": 300}}, upsert=True)]


def test_an_upsert_never_joins_a_plain_update() -> None:
    writes = [_w({"$inc": {"spent": 5}}), _w({"$inc": {"n": 1}}, upsert=True, fence=2)]
    assert coalesce(writes) == writes


def test_other_documents_keep_their_own_writes_and_order() -> None:
    writes = [
        _w({"$set": {"a": 1}}, doc="x"),
        _w({"$set": {"a": 2}}, doc="y"),
        _w({"$set": {"a": 3}}, doc="x", fence=2),
    ]
    assert coalesce(writes) == [_w({"$set": {"a": 3}}, doc="x"), _w({"$set": {"a": 2}}, doc="y")]


def test_the_input_is_not_changed() -> None:
    first = _w({"$set": {"h": []}}, upsert=True)
    coalesce([first, _w({"$push": {"h": 1}}, fence=2)])
    assert first.update == {"$set": {"h": []}}


def test_a_merged_write_keeps_every_streams_fence() -> None:
    def spent(order: str, version: int) -> Write:
        fence = {"_id": "c", f"applied.{order}": {"$not": {"$gte": version}}}
        return Write("customers", fence, {"$inc": {"spent": 1}})

    (merged,) = coalesce([spent("a", 2), spent("b", 1), spent("a", 3)])
    assert merged.filter == {
        "_id": "c",
        "applied.a": {"$not": {"$gte": 2}},  # the first, older fence of order a
        "applied.b": {"$not": {"$gte": 1}},
    }
    assert merged.update == {"$inc": {"spent": 3}}
