"""GET /products/{id} with the read cache (REDIS_URL) and without it, in one run.

Two read replicas of the bench's stack (`python -m app serve` with the relay and the projector
off, so they only serve reads) differ in REDIS_URL alone. Once the read model has caught up they
run in turn, twice each (so a machine getting busier or quieter weighs on both alike), 32
connections, closed loop, random ids among the seeded products, after a warm-up of each (a
second of the same load, then every product once, which fills the cache). The hit rate is the
cached replica's own count over the measured runs (`shop_read_cache_{hits,misses,
fallbacks}_total` from its /metrics). The keys live under a prefix of the run's own and are
deleted at the end.

`python -m bench.read_cache` runs this row alone on a fresh stack (BENCH_QUICK=1: short runs).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid
from typing import Any, Final

import asyncpg
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench import http_load, report, scenarios, steady
from bench.http_load import LoadResult
from bench.plan import FULL, QUICK, Plan
from bench.report import progress
from bench.stack import Stack, stack

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
ROUTE: Final = "/products/{product_id}"
_READ_ONLY: Final = {"RELAY_ENABLED": "false", "PROJECTOR_ENABLED": "false"}


async def _unreachable(url: str) -> str | None:
    """Why Redis at `url` cannot be used; None when it answers."""
    client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        return repr(exc)
    finally:
        await client.aclose()
    return None


async def _delete_keys(url: str, prefix: str) -> None:
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


async def _cache_counts(port: int) -> dict[str, float]:
    """The replica's hits, misses and fallbacks of GET /products/{id} so far."""
    connection = await http_load.Connection.open("127.0.0.1", port)
    try:
        status, body = await connection.request(http_load.get("/metrics"))
    finally:
        await connection.close()
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    counts = {"hits": 0.0, "misses": 0.0, "fallbacks": 0.0}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            name = sample.name.removeprefix("shop_read_cache_").removesuffix("_total")
            if name in counts and sample.labels.get("route") == ROUTE:
                counts[name] = sample.value
    return counts


async def get_products(port: int, product_ids: list[str], duration_s: float) -> LoadResult:
    rng = random.Random(13)  # noqa: S311 - a load shape, not a secret
    requests = [http_load.get(f"/products/{product_id}") for product_id in product_ids]
    return await http_load.closed_loop(
        "127.0.0.1", port, scenarios.CONNECTIONS, duration_s, lambda: rng.choice(requests)
    )


async def ask_each(port: int, product_ids: list[str]) -> None:
    """Every product once, over 32 connections (the warm-up that fills the cache)."""
    pending = iter(product_ids)

    async def worker() -> None:
        connection = await http_load.Connection.open("127.0.0.1", port)
        try:
            for product_id in pending:
                await connection.request(http_load.get(f"/products/{product_id}"))
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(scenarios.CONNECTIONS)))


async def run(st: Stack, product_ids: list[str], plan: Plan, out: dict[str, Any]) -> None:
    url = st.settings.redis_url or DEFAULT_REDIS_URL
    reason = await _unreachable(url)
    if reason is not None:
        progress(f"GET /products/{{id}} cached: skipped, no Redis at {url}: {reason}")
        out["product_cache"] = {"skipped": f"no Redis at {url}"}
        return
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    st.exits.push_async_callback(_delete_keys, url, prefix)
    uncached, uncached_port = await st.serve("app", "serve", REDIS_URL="", **_READ_ONLY)
    cached, cached_port = await st.serve(
        "app", "serve", REDIS_URL=url, CACHE_KEY_PREFIX=prefix, **_READ_ONLY
    )
    progress("GET /products/{id}: read replicas with and without the Redis cache, in turn")
    targets = {"cached": cached_port, "uncached": uncached_port}
    for port in targets.values():  # warm-up: a second of load, then every product once
        await get_products(port, product_ids, 1.0)
        await ask_each(port, product_ids)
    before = await _cache_counts(cached_port)
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for _ in range(2):
        for name, port in targets.items():
            result = await get_products(port, product_ids, plan.read_s / 2)
            if result.ok == 0:
                raise RuntimeError(f"GET /products/{{id}} {name}: {dict(result.statuses)}")
            results[name].append(result)
    after = await _cache_counts(cached_port)
    cached.stop()
    uncached.stop()
    out["product_cache"] = _figures(results, before, after)
    out.setdefault("load_generator", {})["GET /products/{id}"] = steady.generator(
        LoadResult.combined(results["cached"])
    )


def _figures(
    results: dict[str, list[LoadResult]], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    cached, uncached = (LoadResult.combined(results[name]) for name in ("cached", "uncached"))
    hits, misses, fallbacks = (after[n] - before[n] for n in ("hits", "misses", "fallbacks"))
    looked_up = hits + misses + fallbacks
    return {
        "cached_per_s": round(cached.rate, 1), "cached_p99_ms": steady.ms(cached.percentile(99)),
        "uncached_per_s": round(uncached.rate, 1),
        "uncached_p99_ms": steady.ms(uncached.percentile(99)),
        "hit_rate": round(hits / looked_up, 4) if looked_up else 0.0,
        "hits": hits, "misses": misses, "fallbacks": fallbacks,
        "non_2xx": cached.statuses.total() - cached.ok + uncached.statuses.total() - uncached.ok,
        "ratio": round(cached.rate / uncached.rate, 3),
    }  # fmt: skip


async def _alone(plan: Plan) -> dict[str, Any]:
    """This row on a fresh stack: seed the products through the app, wait for its read model,
    measure, remove everything."""
    out: dict[str, Any] = {"mode": "quick" if plan.quick else "full", "load_generator": {}}
    async with stack() as st:
        pool = await asyncpg.create_pool(st.settings.database_url, min_size=1, max_size=16)
        assert pool is not None
        st.exits.push_async_callback(pool.close)
        mongo = st.mongo_client()
        st.exits.push_async_callback(mongo.close)
        app, port = await st.serve("app", "serve")
        progress("seeding products")
        product_ids = await scenarios.seed_products(pool)
        running = steady.Running(
            pool, mongo[st.settings.mongo_db], scenarios.Orders(product_ids), app, port,
            st.store, st.settings,
        )  # fmt: skip
        if behind := await running.catch_up(plan.catch_up_s):
            raise RuntimeError(f"the read model is still {behind} events behind")
        await run(st, [str(p) for p in product_ids], plan, out)
    return out


def main() -> int:
    plan = QUICK if os.environ.get("BENCH_QUICK", "") not in ("", "0") else FULL
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(_alone(plan))
    print(report.product_cache_table(results))
    print("ratios:" + (report.product_cache_ratio(results) or " product_cache=skipped"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
