"""The reads make each collection object once per database object (app/queries/reads.py)."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from app.contracts.readmodel import ORDERS, PRODUCTS
from app.queries import reads


def test_a_collection_is_made_once_per_database_and_name() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:1", connect=False
    )
    current, next_generation = client["shop"], client["shop_g2"]
    orders = reads._collection(current, ORDERS)
    assert reads._collection(current, ORDERS) is orders
    assert orders.database is current
    assert orders.name == ORDERS
    assert reads._collection(current, PRODUCTS).name == PRODUCTS
    moved = reads._collection(next_generation, ORDERS)
    assert moved.database is next_generation, "a new generation reads its own database"


def test_the_kept_collections_stay_bounded() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:1", connect=False
    )
    databases = [client[f"shop_{n}"] for n in range(3 * reads._KEPT)]
    for db in databases:
        assert reads._collection(db, ORDERS).database is db
    assert len(reads._COLLECTIONS) <= reads._KEPT
