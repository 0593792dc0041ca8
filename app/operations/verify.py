"""`python -m app verify`: compare the read model (MongoDB) with the truth (PostgreSQL).

Meant to run once the projector has caught up: `verify` first waits (bounded) until the read
model's applied position reaches the log's last position, then compares every product's stock,
sales and version, every order's status, total, lines and version, and every customer's order
count, spend and last order time, as PostgreSQL computes them from its own tables. While events
keep arriving the two legitimately differ; run it on a quiet system. Streams held behind a
parked event (app/projector/holds.py) are reported apart: the differences their documents show
(the held product or order, and the order's customer) do not fail it. Both sides are read in
`_id` order, a chunk at a time, and merged, so memory stays flat however large the read model;
the report keeps the first MAX_DIFFERENCES differences.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from pymongo.asynchronous.database import AsyncDatabase

from app.contracts.eventlog import head_position
from app.contracts.generations import ReadModel
from app.contracts.readmodel import CUSTOMERS, ORDERS, PRODUCTS, applied_position
from app.plumbing.resources import open_resources
from app.plumbing.settings import Settings
from app.projector import holds

Fields = dict[str, Any]


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    collection: str
    id: str
    field: str  # "*" when the whole document is missing or extra
    expected: Any
    actual: Any


class HeldStream(msgspec.Struct, frozen=True, kw_only=True):
    """A stream held behind a parked event, and the differences its hold explains."""

    stream: str  # "<type>:<id>"
    held_from: int  # the position of its first parked event
    differences: list[Difference]


class Report(msgspec.Struct, kw_only=True):
    log_position: int
    read_position: int
    checked: dict[str, int]
    differences: list[Difference]  # the ones no held stream explains
    held: list[HeldStream] = []

    @property
    def caught_up(self) -> bool:
        return self.read_position >= self.log_position

    @property
    def ok(self) -> bool:
        return self.caught_up and not self.differences


# Each query yields one row per document in `_id` order (byte order, as MongoDB sorts strings),
# so the comparison is a merge of two sorted streams: memory does not grow with the data.
_PRODUCTS = """
SELECT p.product_id::text AS id, p.sku, p.name, p.price_cents, p.stock, p.version,
       coalesce(sum(l.quantity) FILTER (WHERE o.status <> 'cancelled'), 0) AS units_sold,
       coalesce(sum(l.quantity * l.unit_price_cents) FILTER (WHERE o.status <> 'cancelled'), 0)
           AS revenue_cents
FROM products p
LEFT JOIN order_lines l ON l.product_id = p.product_id
LEFT JOIN orders o ON o.order_id = l.order_id
GROUP BY p.product_id
ORDER BY p.product_id::text COLLATE "C"
"""
_ORDERS = """
SELECT o.order_id::text AS id, o.customer_id, o.status, o.total_cents, o.version, o.placed_at,
       sum(l.quantity) AS item_count,
       coalesce(json_agg(json_build_object(
           'product_id', l.product_id::text, 'sku', p.sku, 'name', p.name,
           'quantity', l.quantity, 'unit_price_cents', l.unit_price_cents,
           'line_total_cents', l.quantity * l.unit_price_cents) ORDER BY l.line_no)
           FILTER (WHERE l.order_id IS NOT NULL), '[]')::text AS lines
FROM orders o
LEFT JOIN order_lines l ON l.order_id = o.order_id
LEFT JOIN products p ON p.product_id = l.product_id
GROUP BY o.order_id
ORDER BY o.order_id::text COLLATE "C"
"""
_CUSTOMERS = """
SELECT customer_id AS id, count(*) AS order_count,
       coalesce(sum(total_cents) FILTER (WHERE status IN ('paid', 'shipped')), 0)
           AS total_spent_cents,
       max(placed_at) AS last_order_at
FROM orders GROUP BY customer_id
ORDER BY customer_id COLLATE "C"
"""
_EXPECTED = {PRODUCTS: _PRODUCTS, ORDERS: _ORDERS, CUSTOMERS: _CUSTOMERS}
_CHUNK = 1000  # rows and documents read at a time
MAX_DIFFERENCES = 10_000  # kept in the report; the count goes on


async def verify(settings: Settings, wait_s: float = 30.0) -> Report:
    """Differences between PostgreSQL's truth and the read model of `settings.mongo_db` (the
    generation in use),
    after waiting up to `wait_s` for the projector to catch up. Reads only."""
    async with (
        open_resources(settings, pool_min=1, pool_max=1) as resources,
        resources.pool.acquire() as conn,
    ):
        model = ReadModel(resources.db)
        await model.refresh()  # the generation in use
        db = model.db
        log_position = await head_position(conn)
        read_position = await _wait_for_position(db, log_position, wait_s)
        checked: dict[str, int] = {}
        differences: list[Difference] = []
        for name, query in _EXPECTED.items():
            checked[name] = await _compare(conn, db, name, query, differences)
        held, differences = await _held_apart(conn, differences)
    return Report(
        log_position=log_position,
        read_position=read_position,
        checked=checked,
        differences=differences,
        held=held,
    )


async def _held_apart(
    conn: asyncpg.Connection, differences: list[Difference]
) -> tuple[list[HeldStream], list[Difference]]:
    """The differences each held stream explains (its own document, and for an order the
    customer's), and the rest."""
    held_from = await holds.held_from(conn)
    owners: dict[tuple[str, str], str] = {}
    for (stream_type, stream_id), _ in held_from.items():
        name = f"{stream_type}:{stream_id}"
        owners[(PRODUCTS if stream_type == "product" else ORDERS, stream_id)] = name
        if stream_type == "order":
            customer = await conn.fetchval(
                "SELECT customer_id FROM orders WHERE order_id::text = $1", stream_id
            )
            if customer is not None:
                owners[(CUSTOMERS, customer)] = name
    explained: dict[str, list[Difference]] = {}
    rest: list[Difference] = []
    for difference in differences:
        owner = owners.get((difference.collection, difference.id))
        if owner is None:
            rest.append(difference)
        else:
            explained.setdefault(owner, []).append(difference)
    held = [
        HeldStream(stream=f"{t}:{i}", held_from=p, differences=explained.get(f"{t}:{i}", []))
        for (t, i), p in sorted(held_from.items(), key=lambda item: item[1])
    ]
    return held, rest


async def _wait_for_position(db: AsyncDatabase[Fields], position: int, wait_s: float) -> int:
    # Another process owns the projector, so there is nothing to be woken by: poll, bounded.
    deadline = time.monotonic() + wait_s
    while True:
        applied = await applied_position(db)
        if applied >= position or time.monotonic() >= deadline:
            return applied
        await asyncio.sleep(0.1)


def _as_stored(value: Any) -> Any:
    """PostgreSQL values as the read model stores them: BSON dates keep milliseconds."""
    if isinstance(value, datetime):
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value


async def _compare(
    conn: asyncpg.Connection,
    db: AsyncDatabase[Fields],
    name: str,
    query: str,
    differences: list[Difference],
) -> int:
    """Merge PostgreSQL's rows and the collection's documents, both in `_id` order, appending
    what differs to `differences` (up to MAX_DIFFERENCES); returns how many rows it checked."""
    checked = 0
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        documents = documents_by_id(db, name)
        async for doc_id, row, document in merged(_rows(conn, query), documents):
            found: list[Difference]
            if document is None:
                found = [_whole(name, doc_id, expected="present", actual="missing")]
            elif row is None:
                found = [_whole(name, doc_id, expected="absent", actual="present")]
            else:
                found = _compare_fields(name, doc_id, row, document)
            checked += row is not None
            differences += found[: max(0, MAX_DIFFERENCES - len(differences))]
    return checked


Keyed = AsyncIterator[tuple[str, Fields]]


async def merged(
    left: Keyed, right: Keyed
) -> AsyncIterator[tuple[str, Fields | None, Fields | None]]:
    """Merge two streams sorted by id (byte order): each id once, with its item on each side
    (None where that side has none). Holds one item per side."""
    a, b = await anext(left, None), await anext(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            yield a[0], a[1], None
            a = await anext(left, None)
        elif a is None or b[0] < a[0]:
            yield b[0], None, b[1]
            b = await anext(right, None)
        else:
            yield a[0], a[1], b[1]
            a, b = await anext(left, None), await anext(right, None)


async def documents_by_id(db: AsyncDatabase[Fields], name: str) -> Keyed:
    """A collection's documents in `_id` order, a chunk at a time."""
    async for document in db[name].find(sort=[("_id", 1)], batch_size=_CHUNK):
        yield str(document["_id"]), document


async def _rows(conn: asyncpg.Connection, query: str) -> AsyncIterator[tuple[str, Fields]]:
    async for record in conn.cursor(query, prefetch=_CHUNK):
        fields = {k: _as_stored(v) for k, v in dict(record).items()}
        if "lines" in fields:
            fields["lines"] = msgspec.json.decode(fields["lines"])
        yield fields.pop("id"), fields


def _whole(name: str, doc_id: str, *, expected: str, actual: str) -> Difference:
    return Difference(collection=name, id=doc_id, field="*", expected=expected, actual=actual)


def _compare_fields(name: str, doc_id: str, expected: Fields, actual: Fields) -> list[Difference]:
    return [
        Difference(
            collection=name, id=doc_id, field=field, expected=value, actual=actual.get(field)
        )
        for field, value in expected.items()
        if actual.get(field) != value
    ]


def main(settings: Settings) -> int:
    """CLI: print a summary (and up to 50 differences); 0 when the read model is exact."""
    report = asyncio.run(verify(settings))
    checked = ", ".join(f"{n} {name}" for name, n in report.checked.items())
    print(f"log position {report.log_position}, read model position {report.read_position}")
    print(f"checked {checked}: {len(report.differences)} differences")
    for difference in report.differences[:50]:
        print(
            f"  {difference.collection}/{difference.id} {difference.field}: "
            f"expected {difference.expected!r}, found {difference.actual!r}"
        )
    for stream in report.held:
        print(
            f"held {stream.stream} from position {stream.held_from}: its parked events explain"
            f" {len(stream.differences)} difference(s) (python -m app parked list)"
        )
    if not report.caught_up:
        print("the read model has not caught up with the log")
    return 0 if report.ok else 1
