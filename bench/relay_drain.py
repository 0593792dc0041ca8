"""Relay drain benchmark: how fast the relay empties a backlog, next to a raw-publish ceiling.

Creates a migrated database of its own, bulk-inserts N product events, runs the Relay until
its confirmed position reaches the end, then publishes the same message bodies raw with aiormq
(same confirm window, separate exchange and quorum queue). Prints both rates and their ratio,
writes them to bench/results/relay.json, and removes the database, queues and exchanges.
Run: `.venv/bin/python bench/relay_drain.py` (BENCH_EVENTS, default 50000).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiormq
import asyncpg

if __package__ in (None, ""):  # run as a script: make `app` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.contracts.eventlog import fetch_after
from app.contracts.events import routing_key
from app.contracts.topology import delete_topology
from app.main import relay_for
from app.plumbing.migrate import migrate
from app.plumbing.resources import connect_broker
from app.plumbing.settings import Settings
from app.relay.publisher import message_body, message_properties

RESULTS = Path(__file__).resolve().parent / "results" / "relay.json"

_BULK_INSERT = """
INSERT INTO events (stream_type, stream_id, stream_version, type, data, metadata)
SELECT 'product', p.id::text, g.n / $2 + 1, 'ProductRestocked',
       jsonb_build_object('product_id', p.id, 'quantity', 1 + g.n % 7, 'stock', 100 + g.n / $2),
       jsonb_build_object('correlation_id', gen_random_uuid())
FROM generate_series(0, $1 - 1) AS g(n)
JOIN LATERAL (SELECT uuid_in(md5('bench-product-' || (g.n % $2))::cstring) AS id) AS p ON true
ORDER BY g.n
"""


def _dsn_for(admin_dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{database}"))


async def _fill(dsn: str, events: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_BULK_INSERT, events, 1000)
        last: int = await conn.fetchval("SELECT max(position) FROM events")
        return last
    finally:
        await conn.close()


async def _drain_with_relay(settings: Settings, last: int) -> float:
    """Seconds from start until the relay has every event confirmed."""
    relay = relay_for(settings, asyncio.Event())
    started = time.perf_counter()
    task = asyncio.create_task(relay.run())
    try:
        while relay.published_position < last:
            if task.done():
                task.result()
                raise RuntimeError("the relay stopped")
            await asyncio.sleep(0.005)
        return time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _bodies(dsn: str) -> list[tuple[bytes, Any, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        events = await fetch_after(conn, 0, 10**9)
    finally:
        await conn.close()
    prev = [0, *(e.position for e in events[:-1])]
    return [
        (message_body(e, p), message_properties(e), routing_key(e.type))
        for e, p in zip(events, prev, strict=True)
    ]


async def _raw_ceiling(settings: Settings, bodies: list[tuple[bytes, Any, str]]) -> float:
    """Seconds to publish `bodies` raw with the same confirm window to its own topology, on a
    connection with the relay's frame queues (connect_broker)."""
    connection = await connect_broker(settings)
    try:
        channel = await connection.channel()
        exchange, queue = f"{settings.exchange}.raw", f"{settings.projector_queue}.raw"
        await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.queue_bind(queue, exchange, routing_key="#")
        slots = asyncio.Semaphore(settings.relay_confirm_window)
        started = time.perf_counter()
        tasks = []
        for body, properties, key in bodies:
            await slots.acquire()
            task = asyncio.ensure_future(
                channel.basic_publish(
                    body, exchange=exchange, routing_key=key, properties=properties, wait=False
                )
            )
            task.add_done_callback(lambda _: slots.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        await channel.queue_delete(queue)
        await channel.exchange_delete(exchange)
        return elapsed
    finally:
        await connection.close()


async def _cleanup_broker(settings: Settings) -> None:
    connection = await aiormq.connect(settings.amqp_url)
    try:
        await delete_topology(await connection.channel(), settings)
    finally:
        await connection.close()


async def run_bench(events: int = 50_000, base: Settings | None = None) -> dict[str, Any]:
    """Run the benchmark once and return (and store) its figures."""
    base = base or Settings.from_env()
    tag = uuid.uuid4().hex[:10]
    database = f"shop_bench_{tag}"
    dsn = _dsn_for(base.database_url, database)
    settings = replace(
        base,
        database_url=dsn,
        exchange=f"bench.{tag}.events",
        projector_queue=f"bench.{tag}.projector",
        parked_queue=f"bench.{tag}.projector.parked",
        relay_name=f"bench-{tag}",
    )
    admin = await asyncpg.connect(base.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        try:
            await migrate(dsn)
            last = await _fill(dsn, events)
            relay_s = await _drain_with_relay(settings, last)
            raw_s = await _raw_ceiling(settings, await _bodies(dsn))
        finally:
            await _cleanup_broker(settings)
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()
    figures = {
        "events": events,
        "confirm_window": settings.relay_confirm_window,
        "batch_size": settings.relay_batch_size,
        "relay_events_per_s": round(events / relay_s),
        "raw_publish_events_per_s": round(events / raw_s),
        "ratio": round(raw_s / relay_s, 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def main() -> None:
    figures = asyncio.run(run_bench(int(os.environ.get("BENCH_EVENTS", "50000"))))
    print(
        f"relay drain: {figures['relay_events_per_s']} events/s;"
        f" raw aiormq ceiling: {figures['raw_publish_events_per_s']} events/s;"
        f" ratio {figures['ratio']} (target >= 0.9); {figures['events']} events,"
        f" window {figures['confirm_window']}"
    )


if __name__ == "__main__":
    main()
