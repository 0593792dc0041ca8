"""Domain errors of the write side: each carries the ids involved and its HTTP status."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from app.plumbing.problems import Problem


class ProductNotFound(Problem):
    status = 404
    slug = "product-not-found"

    def __init__(self, product_id: uuid.UUID | str) -> None:
        super().__init__(f"product {product_id} does not exist", product_id=str(product_id))


class OrderNotFound(Problem):
    status = 404
    slug = "order-not-found"

    def __init__(self, order_id: uuid.UUID | str) -> None:
        super().__init__(f"order {order_id} does not exist", order_id=str(order_id))


class SkuTaken(Problem):
    status = 409
    slug = "sku-taken"

    def __init__(self, sku: str) -> None:
        super().__init__(f"a product with sku {sku!r} already exists", sku=sku)


class InsufficientStock(Problem):
    status = 409
    slug = "insufficient-stock"

    def __init__(self, shortfalls: Sequence[dict[str, Any]]) -> None:
        names = ", ".join(str(s["product_id"]) for s in shortfalls)
        super().__init__(f"not enough stock for {names}", shortfalls=list(shortfalls))


class UnknownProducts(Problem):
    status = 422
    slug = "unknown-product"

    def __init__(self, product_ids: Sequence[uuid.UUID]) -> None:
        ids = [str(p) for p in product_ids]
        super().__init__(f"no such product: {', '.join(ids)}", product_ids=ids)


class InvalidTransition(Problem):
    status = 409
    slug = "invalid-transition"

    def __init__(self, order_id: uuid.UUID, status: str, action: str) -> None:
        super().__init__(
            f"order {order_id} is {status}; it cannot be {action}",
            order_id=str(order_id),
            order_status=status,
            action=action,
        )


class VersionMismatch(Problem):
    status = 412
    slug = "version-mismatch"

    def __init__(self, order_id: uuid.UUID, expected: int, actual: int) -> None:
        super().__init__(
            f"order {order_id} is at version {actual}, not {expected}",
            order_id=str(order_id),
            expected_version=expected,
            current_version=actual,
            headers={"ETag": f'"{actual}"'},
        )


class IdempotencyKeyReused(Problem):
    status = 422
    slug = "idempotency-key-reused"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used with a different request", key=key
        )


class StockLimitExceeded(Problem):
    status = 409
    slug = "stock-limit-exceeded"

    def __init__(self, product_id: uuid.UUID, stock: int, quantity: int, limit: int) -> None:
        super().__init__(
            f"restocking product {product_id} by {quantity} would pass the limit of {limit}",
            product_id=str(product_id),
            stock=stock,
            quantity=quantity,
            limit=limit,
        )


class DuplicateLines(Problem):
    status = 422
    slug = "duplicate-order-lines"

    def __init__(self, product_ids: Sequence[uuid.UUID]) -> None:
        ids = [str(p) for p in product_ids]
        super().__init__(
            f"each product may appear in one line only; repeated: {', '.join(ids)}",
            product_ids=ids,
        )
