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
