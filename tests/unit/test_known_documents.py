"""A writer's memory of the documents that exist: per collection, bounded, forgettable."""

from __future__ import annotations

from app.projector.readmodel import KnownDocuments


def test_known_ids_are_per_collection() -> None:
    known = KnownDocuments()
    known.add("shop.customers", ["a", "b"])
    assert known.of("shop.customers", ["a", "c", "b"]) == {"a", "b"}
    assert known.of("shop_2.customers", ["a"]) == set()  # another generation's collection


def test_the_least_recently_seen_are_forgotten_first() -> None:
    known = KnownDocuments(capacity=3)
    known.add("c", ["a", "b", "c"])
    known.add("c", ["a"])  # seen again: now the latest
    known.add("c", ["d"])
    assert known.of("c", ["a", "b", "c", "d"]) == {"a", "c", "d"}


def test_forgetting_a_collection() -> None:
    known = KnownDocuments()
    known.add("c", ["a"])
    known.add("d", ["a"])
    known.forget("c")
    assert known.of("c", ["a"]) == set()
    assert known.of("d", ["a"]) == {"a"}
