"""A large, consistent log written straight in SQL, for measurements at scale.

`make_large_log(dsn, orders)` writes `products` products and `orders` orders of one line each
(product `i % products`, quantity 1), every event (ProductCreated, OrderPlaced v2,
StockReserved) with the stream versions and stock the command handlers would have written,
and the write side's tables to match, so `verify` of a read model rebuilt from it is exact.
About 2 events per order; a chunk of orders per transaction. Used by bench/at_scale.py.
"""

from __future__ import annotations

import asyncpg

_PRODUCTS = """
WITH p AS (
    SELECT g AS n, md5('product' || g)::uuid AS id FROM generate_series(0, $1 - 1) AS g
), created AS (
    INSERT INTO products (product_id, sku, name, price_cents, stock, version)
    SELECT id, 'BIG-' || n, 'Product ' || n, 100 + n % 900, $2, 1 FROM p
    RETURNING product_id, sku, name, price_cents, stock
)
INSERT INTO events (stream_type, stream_id, stream_version, type, schema_version, data)
SELECT 'product', product_id::text, 1, 'ProductCreated', 1,
       jsonb_build_object('product_id', product_id, 'sku', sku, 'name', name,
                          'price_cents', price_cents, 'stock', stock)
FROM created ORDER BY sku
"""

# orders [$1, $2) of $3 products with initial stock $4, customers $5; one line each
_ORDERS = """
WITH o AS (
    SELECT g AS i, md5('order' || g)::uuid AS id, md5('product' || (g % $3))::uuid AS product_id,
           g / $3 + 1 AS k, 'customer-' || (g % $5) AS customer_id,
           timestamptz '2026-01-01 00:00:00+00' + g * interval '1 millisecond' AS placed_at
    FROM generate_series($1, $2 - 1) AS g
), j AS (
    SELECT o.*, p.sku, p.name, p.price_cents FROM o JOIN products p USING (product_id)
), placed AS (
    INSERT INTO orders (order_id, customer_id, status, total_cents, version, placed_at, updated_at)
    SELECT id, customer_id, 'placed', price_cents, 1, placed_at, placed_at FROM j
), lined AS (
    INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents)
    SELECT id, 1, product_id, 1, price_cents FROM j
)
INSERT INTO events (stream_type, stream_id, stream_version, type, schema_version, data,
                    occurred_at)
SELECT e.stream_type, e.stream_id, e.stream_version, e.type, e.schema_version, e.data, e.at
FROM j, LATERAL (VALUES
    (0, 'order', j.id::text, 1, 'OrderPlaced', 2, jsonb_build_object(
        'order_id', j.id, 'customer_id', j.customer_id, 'total_cents', j.price_cents,
        'placed_at', j.placed_at, 'item_count', 1,
        'lines', jsonb_build_array(jsonb_build_object(
            'product_id', j.product_id, 'sku', j.sku, 'name', j.name, 'quantity', 1,
            'unit_price_cents', j.price_cents, 'line_total_cents', j.price_cents))),
     j.placed_at),
    (1, 'product', j.product_id::text, j.k + 1, 'StockReserved', 1, jsonb_build_object(
        'product_id', j.product_id, 'order_id', j.id, 'quantity', 1,
        'unit_price_cents', j.price_cents, 'stock', $4 - j.k),
     j.placed_at)
) AS e(seq, stream_type, stream_id, stream_version, type, schema_version, data, at)
ORDER BY j.i, e.seq
"""

_SETTLE = """
UPDATE products p SET stock = $1 - s.n, version = 1 + s.n
FROM (SELECT product_id, count(*) AS n FROM order_lines GROUP BY product_id) s
WHERE p.product_id = s.product_id
"""


async def make_large_log(
    dsn: str,
    orders: int,
    *,
    products: int = 1000,
    customers: int = 100_000,
    chunk: int = 50_000,
    progress: bool = True,
) -> int:
    """Write the log described above into the (migrated, empty) database at `dsn`; returns
    the number of events."""
    stock = orders // products + 10
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(_PRODUCTS, products, stock)
        for start in range(0, orders, chunk):
            async with conn.transaction():
                await conn.execute(
                    _ORDERS, start, min(start + chunk, orders), products, stock, customers
                )
            if progress:
                print(f"  {min(start + chunk, orders):,} orders written", flush=True)
        async with conn.transaction():
            await conn.execute(_SETTLE, stock)
        events: int = await conn.fetchval("SELECT count(*) FROM events")
        return events
    finally:
        await conn.close()
