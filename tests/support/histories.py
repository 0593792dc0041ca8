"""Random histories from the real command handlers, including rolled-back transactions
(positions that never commit), so the log has real gaps; and that log as deliveries."""

from __future__ import annotations

import contextlib
import random
import uuid

import asyncpg

from app.commands import order_rules, orders, products
from app.commands.errors import InsufficientStock, InvalidTransition
from app.commands.outbox import EventMetadata
from app.contracts.eventlog import LoggedEvent, fetch_after
from app.contracts.events import Envelope
from app.projector.deliveries import Decoded, Gap, repaired

CUSTOMERS = ("alice", "bob", "carol", "dave")


class _Rollback(Exception):
    """Raised inside a transaction to roll it back after it drew positions."""


def _meta() -> EventMetadata:
    return EventMetadata(correlation_id=str(uuid.uuid4()))


async def _create_product(conn: asyncpg.Connection, rng: random.Random) -> uuid.UUID:
    cmd = products.CreateProduct(
        sku=f"SKU-{uuid.uuid4().hex[:10]}",
        name=f"Product {rng.randint(1, 999)}",
        price_cents=rng.randint(1, 5000),
        stock=rng.randint(0, 30),
    )
    async with conn.transaction():
        return (await products.create_product(conn, cmd, _meta())).product_id


async def _place(conn: asyncpg.Connection, rng: random.Random, ids: list[uuid.UUID]) -> uuid.UUID:
    lines = tuple(
        order_rules.LineRequest(product_id=p, quantity=rng.randint(1, 6))
        for p in rng.sample(ids, rng.randint(1, min(3, len(ids))))
    )
    cmd = order_rules.PlaceOrder(customer_id=rng.choice(CUSTOMERS), lines=lines)
    async with conn.transaction():
        return (await orders.place_order(conn, cmd, _meta())).order_id


async def _step(
    conn: asyncpg.Connection, rng: random.Random, ids: list[uuid.UUID], placed: list[uuid.UUID]
) -> None:
    roll = rng.random()
    if roll < 0.45:
        placed.append(await _place(conn, rng, ids))
    elif roll < 0.8 and placed:
        action: order_rules.Action = rng.choice(("pay", "pay", "ship", "cancel"))
        async with conn.transaction():
            await orders.transition_order(conn, rng.choice(placed), action, None, _meta())
    elif roll < 0.9:
        async with conn.transaction():
            cmd = products.RestockProduct(quantity=rng.randint(1, 20))
            await products.restock_product(conn, rng.choice(ids), cmd, _meta())
    else:
        async with conn.transaction():
            await _place(conn, rng, ids)
            raise _Rollback


async def _every_transition(
    conn: asyncpg.Connection, rng: random.Random, ids: list[uuid.UUID]
) -> None:
    """Make sure every event type occurs: restock, then cancel a paid and a placed order."""
    for product_id in ids:
        async with conn.transaction():
            cmd = products.RestockProduct(quantity=50)
            await products.restock_product(conn, product_id, cmd, _meta())
    for actions in (("pay", "cancel"), ("cancel",), ("pay", "ship")):
        order_id = await _place(conn, rng, ids)
        for action in actions:
            async with conn.transaction():
                await orders.transition_order(conn, order_id, action, None, _meta())


async def make_history(dsn: str, rng: random.Random, steps: int = 80) -> list[LoggedEvent]:
    """Run random commands through the real handlers; return the committed log."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = [await _create_product(conn, rng) for _ in range(5)]
        placed: list[uuid.UUID] = []
        # one rolled-back restock first, so the log always has a gap with events after it
        # (the random steps may draw no rollback, or only ones refused before they log)
        with contextlib.suppress(_Rollback):
            async with conn.transaction():
                await products.restock_product(
                    conn, ids[0], products.RestockProduct(quantity=1), _meta()
                )
                raise _Rollback
        for _ in range(steps):
            with contextlib.suppress(InsufficientStock, InvalidTransition, _Rollback):
                await _step(conn, rng, ids, placed)
        await _every_transition(conn, rng, ids)
        return await fetch_after(conn, 0, 1_000_000)
    finally:
        await conn.close()


def decoded(logged: list[LoggedEvent]) -> list[Decoded]:
    return repaired(Gap(after=0, through=logged[-1].position), logged)


def envelopes(logged: list[LoggedEvent]) -> list[Envelope]:
    return [d.envelope for d in decoded(logged)]
