"""Products: create and restock. Each handler runs inside its caller's transaction."""

from __future__ import annotations

import uuid
from typing import Annotated, Final

import asyncpg
import msgspec

from app.commands.errors import ProductNotFound, SkuTaken, StockLimitExceeded
from app.commands.outbox import EventMetadata, append_events
from app.contracts.events import TEXT_END, NewEvent, Position, ProductCreated, ProductRestocked

MAX_PRICE_CENTS: Final = 1_000_000_000
MAX_STOCK: Final = 1_000_000_000_000
MAX_RESTOCK: Final = 1_000_000_000

# Printable text only: control characters cannot be stored or shown. Lone surrogates neither,
# but the JSON decoder refuses those already (400); a surrogate range here would also make the
# pattern one that common JSON Schema validators (Rust's regex, schemathesis') cannot compile.
PrintableText = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=200, pattern=rf"^[^\x00-\x1f\x7f]+{TEXT_END}"),
]
Sku = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=64, pattern=rf"^[A-Za-z0-9][A-Za-z0-9._\-]*{TEXT_END}"),
]


class CreateProduct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: Sku
    name: PrintableText
    price_cents: Annotated[int, msgspec.Meta(ge=0, le=MAX_PRICE_CENTS)]
    stock: Annotated[int, msgspec.Meta(ge=0, le=MAX_STOCK)] = 0


class RestockProduct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_RESTOCK)]


class ProductResult(msgspec.Struct, frozen=True, kw_only=True):
    product_id: uuid.UUID
    sku: str
    name: str
    price_cents: int
    stock: int
    version: int
    position: int


class RestockResult(msgspec.Struct, frozen=True, kw_only=True):
    product_id: uuid.UUID
    stock: int
    version: int
    position: int


def decide_restock(product_id: uuid.UUID, stock: int, quantity: int) -> ProductRestocked:
    """Raises StockLimitExceeded when the new stock would pass MAX_STOCK."""
    if stock + quantity > MAX_STOCK:
        raise StockLimitExceeded(product_id, stock, quantity, MAX_STOCK)
    return ProductRestocked(product_id=product_id, quantity=quantity, stock=stock + quantity)


async def create_product(
    conn: asyncpg.Connection, cmd: CreateProduct, meta: EventMetadata
) -> ProductResult:
    """Emits ProductCreated (stream version 1). Raises SkuTaken. Not idempotent by itself."""
    product_id = uuid.uuid4()
    inserted = await conn.fetchval(
        "INSERT INTO products (product_id, sku, name, price_cents, stock, version)"
        " VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (sku) DO NOTHING RETURNING 1",
        product_id,
        cmd.sku,
        cmd.name,
        cmd.price_cents,
        cmd.stock,
    )
    if inserted is None:
        raise SkuTaken(cmd.sku)
    event = ProductCreated(
        product_id=product_id,
        sku=cmd.sku,
        name=cmd.name,
        price_cents=cmd.price_cents,
        stock=cmd.stock,
    )
    position = await append_events(
        conn,
        [NewEvent(stream_type="product", stream_id=str(product_id), stream_version=1, data=event)],
        meta,
    )
    return ProductResult(
        product_id=product_id,
        sku=cmd.sku,
        name=cmd.name,
        price_cents=cmd.price_cents,
        stock=cmd.stock,
        version=1,
        position=position,
    )


async def restock_product(
    conn: asyncpg.Connection, product_id: uuid.UUID, cmd: RestockProduct, meta: EventMetadata
) -> RestockResult:
    """Emits ProductRestocked. Raises ProductNotFound, StockLimitExceeded."""
    row = await conn.fetchrow(
        "SELECT stock, version FROM products WHERE product_id = $1 FOR UPDATE", product_id
    )
    if row is None:
        raise ProductNotFound(product_id)
    event = decide_restock(product_id, row["stock"], cmd.quantity)
    version = row["version"] + 1
    await conn.execute(
        "UPDATE products SET stock = $2, version = $3, updated_at = now() WHERE product_id = $1",
        product_id,
        event.stock,
        version,
    )
    position: Position = await append_events(
        conn,
        [
            NewEvent(
                stream_type="product", stream_id=str(product_id), stream_version=version, data=event
            )
        ],
        meta,
    )
    return RestockResult(
        product_id=product_id, stock=event.stock, version=version, position=position
    )
