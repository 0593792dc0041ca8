"""The read model's contract (MongoDB), declared once: collection names, the `meta` document,
the index specifications and the sort orders they serve.

The projector writes these documents (app/projector/documents.py has their fields), the queries
read them, `verify` and `rebuild` check and refill them; all of them take the names from here.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NamedTuple

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

Document = dict[str, Any]
Db = AsyncDatabase[Document]

CollectionName = Literal["orders", "products", "customers"]
ORDERS: Final = "orders"
PRODUCTS: Final = "products"
CUSTOMERS: Final = "customers"
COLLECTIONS: Final[tuple[CollectionName, ...]] = (ORDERS, PRODUCTS, CUSTOMERS)

# {_id: META_ID, position}: every event up to `position` is applied to the collections above
META: Final = "meta"
META_ID: Final = "projection"

Keys = list[tuple[str, int]]

# sort orders the queries use, each served by an index below
NEWEST_FIRST: Final[Keys] = [("placed_at", DESCENDING), ("_id", DESCENDING)]
BY_SKU: Final[Keys] = [("sku", ASCENDING)]
BEST_SELLING: Final[Keys] = [("units_sold", DESCENDING), ("_id", ASCENDING)]


class Index(NamedTuple):
    collection: CollectionName
    keys: Keys
    unique: bool = False


INDEXES: Final[tuple[Index, ...]] = (
    # a customer's orders newest first, keyset-paginated on (placed_at, _id), optionally by status
    Index(ORDERS, [("customer_id", ASCENDING), *NEWEST_FIRST]),
    Index(ORDERS, [("customer_id", ASCENDING), ("status", ASCENDING), *NEWEST_FIRST]),
    Index(PRODUCTS, BY_SKU, unique=True),
    Index(PRODUCTS, BEST_SELLING),
)


async def ensure_indexes(db: Db) -> None:
    """Create every index of INDEXES (idempotent)."""
    for index in INDEXES:
        await db[index.collection].create_index(index.keys, unique=index.unique)


async def applied_position(db: Db) -> int:
    """The position stored in `meta` (0 for an empty read model). Raises PyMongoError."""
    meta = await db[META].find_one({"_id": META_ID}, {"position": 1})
    position = meta.get("position") if meta else None
    return position if isinstance(position, int) else 0
