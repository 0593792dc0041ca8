"""Fenced writes as update pipelines found by `_id` alone (app/projector/pipelines.py)."""

from __future__ import annotations

import pytest

from app.projector import pipelines
from app.projector.documents import Write


def test_both_fences_become_a_below_the_bound_test_and_merged_fences_all_hold() -> None:
    assert pipelines.fence({"_id": "p", "version": {"$lt": 3}}) == {
        "$lt": [{"$ifNull": ["$version", 0]}, 3]
    }
    merged = {"_id": "c", "applied.o1": {"$not": {"$gte": 2}}, "applied.o2": {"$lt": 5}}
    assert pipelines.fence(merged) == {
        "$and": [
            {"$lt": [{"$ifNull": ["$applied.o1", 0]}, 2]},
            {"$lt": [{"$ifNull": ["$applied.o2", 0]}, 5]},
        ]
    }
    with pytest.raises(ValueError, match="no pipeline form"):
        pipelines.fence({"_id": "p", "version": {"$gt": 1}})


def test_every_operator_is_fenced_and_values_are_literals() -> None:
    write = Write(
        "customers",
        {"_id": "c", "applied.o": {"$not": {"$gte": 1}}},
        {
            "$set": {"customer_id": "$where"},
            "$inc": {"order_count": 1},
            "$max": {"position": 7},
            "$push": {"history": {"$each": [1, 2]}},
            "$setOnInsert": {"total_spent_cents": 0},
        },
        upsert=True,
    )
    when = {"$lt": [{"$ifNull": ["$applied.o", 0]}, 1]}
    assert pipelines.stage(write) == {
        "$set": {
            "customer_id": {"$cond": [when, {"$literal": "$where"}, "$customer_id"]},
            "order_count": {
                "$cond": [
                    when,
                    {"$add": [{"$ifNull": ["$order_count", 0]}, {"$literal": 1}]},
                    "$order_count",
                ]
            },
            "position": {"$cond": [when, {"$max": ["$position", {"$literal": 7}]}, "$position"]},
            "history": {
                "$cond": [
                    when,
                    {"$concatArrays": [{"$ifNull": ["$history", []]}, {"$literal": [1, 2]}]},
                    "$history",
                ]
            },
            "total_spent_cents": {"$ifNull": ["$total_spent_cents", {"$literal": 0}]},
        }
    }
    operation = pipelines.operation(write)
    assert operation._filter == {"_id": "c"}  # found by _id alone
    assert operation._upsert is True


def test_many_chooses_each_documents_fenced_value_by_its_id_and_keeps_the_rest() -> None:
    first = Write("products", {"_id": "$p1", "version": {"$lt": 2}}, {"$set": {"stock": 4}})
    second = Write(
        "products",
        {"_id": "p2", "version": {"$lt": 5}},
        {"$set": {"stock": 9}, "$inc": {"units_sold": 1}},
    )
    operation = pipelines.many([first, second])
    assert operation._filter == {"_id": {"$in": ["$p1", "p2"]}}
    assert operation._upsert is None  # never an upsert: an UpdateMany upserts one document
    [stage] = operation._doc
    one = {"$eq": ["$_id", {"$literal": "$p1"}]}  # an id is never read as a field path
    two = {"$eq": ["$_id", {"$literal": "p2"}]}
    assert stage == {
        "$set": {
            "stock": {
                "$switch": {
                    "branches": [
                        {"case": one, "then": pipelines.stage(first)["$set"]["stock"]},
                        {"case": two, "then": pipelines.stage(second)["$set"]["stock"]},
                    ],
                    "default": "$stock",
                }
            },
            "units_sold": {
                "$switch": {
                    "branches": [
                        {"case": two, "then": pipelines.stage(second)["$set"]["units_sold"]}
                    ],
                    "default": "$units_sold",
                }
            },
        }
    }
