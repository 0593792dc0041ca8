"""The optional read cache (Redis; README "The read cache"): read-through answers of
GET /products/{id}, the first page of GET /products and GET /reports/top-products.

An entry is a 200 body with the read-model position it reflects, which a cached answer gives as
its X-Read-Position. Beside the entries live *change marks*: the last position at which the
projector changed what an entry shows (one per product, one for the product lists, one for
everything). An entry counts only while its position is at least each mark that covers it and
the request's `after`. The projector raises the marks after each batch it stores, before readers
are woken for it (`invalidate`), and an entry is stored only when no mark is above its position,
so a read that raced a batch never keeps an answer from before it. Marks outlive the entries
they cover.

Redis down or slow: every call is bounded by CACHE_TIMEOUT_S, answers come from MongoDB, and for
CACHE_RETRY_AFTER_S after a failure Redis is not asked at all. A change the projector could not
mark is marked on everything of its database once Redis answers again; until then this process
reads MongoDB only. Keys are `<CACHE_KEY_PREFIX>:<read-model database>:…`, so another
generation of the read model never sees these entries. redis is imported only when REDIS_URL is
set (`open_read_cache`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, NamedTuple

from prometheus_client import Counter

from app.plumbing.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

_MARKS_OUTLIVE_ENTRIES_S: Final = 60.0
_LISTS_MARK: Final = "changed:products"  # any product changed: the pages and the report
_ALL_MARK: Final = "changed:all"  # a change that could not be marked where it belonged

# KEYS: the entry, then the marks covering it; ARGV: position, value, time to live in ms.
# Stores the entry unless a mark or the entry already stored is at a later position.
_PUT: Final = """
local position = tonumber(ARGV[1])
for i = 2, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '-1') > position then return 0 end
end
local current = redis.call('GET', KEYS[1])
if current and tonumber(string.match(current, '^%d+')) > position then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: marks; ARGV: position, time to live in ms. Raises each mark to the position (never
# lowers one) and keeps it alive.
_MARK: Final = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '-1') < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return #KEYS
"""


class CacheKey(NamedTuple):
    """One cacheable answer: its route template (the metrics' label), its key under the
    database, and the change mark that covers it (besides the one for everything)."""

    route: str
    name: str
    mark: str


def product_key(product_id: str) -> CacheKey:
    return CacheKey("/products/{product_id}", f"product:{product_id}", f"changed:{product_id}")


def products_page_key(limit: int) -> CacheKey:
    """The first page of GET /products (later pages are not cached)."""
    return CacheKey("/products", f"products:first:{limit}", _LISTS_MARK)


def top_products_key(limit: int) -> CacheKey:
    return CacheKey("/reports/top-products", f"top-products:{limit}", _LISTS_MARK)


class Entry(NamedTuple):
    position: int  # every event up to it is in `body`
    body: bytes


# values come back as bytes (the client does not decode responses); the client's types say
# str too
def _entry(raw: bytes | str | None) -> Entry | None:
    if raw is None:
        return None
    position, _, body = (raw.encode() if isinstance(raw, str) else raw).partition(b"\n")
    return Entry(int(position), body)


def _mark(raw: bytes | str | None) -> int:
    return -1 if raw is None else int(raw)


class ReadCache:
    """The entries and marks above in one Redis. No method raises because of Redis: a failure
    or a timeout is counted, logged once per outage, and answered as a miss or skipped."""

    def __init__(
        self,
        client: Redis,
        failures: tuple[type[BaseException], ...],
        *,
        prefix: str,
        ttl_s: float,
        timeout_s: float,
        retry_after_s: float,
    ) -> None:
        self._client, self._failures, self._prefix = client, failures, prefix
        self._ttl_ms = math.ceil(ttl_s * 1000)
        self._mark_ttl_ms = math.ceil((ttl_s + _MARKS_OUTLIVE_ENTRIES_S) * 1000)
        self._timeout_s, self._retry_after_s = timeout_s, retry_after_s
        self._put = client.register_script(_PUT)
        self._raise = client.register_script(_MARK)
        self._resting_until = -math.inf
        self._unmarked: dict[str, int] = {}  # database -> last position it could not mark
        # unregistered: the app's metrics collector exports them (app/operations/metrics.py)
        self.hits = Counter(
            "shop_read_cache_hits", "Answers served from the read cache.", ["route"], registry=None
        )
        self.misses = Counter(
            "shop_read_cache_misses",
            "Cacheable reads answered from MongoDB: no entry, or one older than a change or "
            "than `after`.",
            ["route"],
            registry=None,
        )
        self.fallbacks = Counter(
            "shop_read_cache_fallbacks",
            "Cacheable reads answered from MongoDB because Redis failed, was slow, or rests "
            "after a failure.",
            ["route"],
            registry=None,
        )
        self.errors = Counter(
            "shop_read_cache_errors",
            "Redis calls that failed or timed out, by operation (get, put, invalidate).",
            ["operation"],
            registry=None,
        )

    def _key(self, database: str, name: str) -> str:
        return f"{self._prefix}:{database}:{name}"

    async def get(self, database: str, key: CacheKey, after: int) -> Entry | None:
        """The entry of `key` in `database` when it reflects at least `after` and every change
        marked since; None when the answer is to be read from MongoDB."""
        if not await self._usable():
            self.fallbacks.labels(key.route).inc()
            return None
        names = [self._key(database, name) for name in (key.name, key.mark, _ALL_MARK)]
        try:
            async with asyncio.timeout(self._timeout_s):
                raw, mark, mark_all = await self._client.mget(names)
        except self._failures as exc:
            self._failed("get", exc)
            self.fallbacks.labels(key.route).inc()
            return None
        try:
            entry = _entry(raw)
            fresh = entry is not None and entry.position >= max(after, _mark(mark), _mark(mark_all))
        except ValueError:  # not a value this module wrote: read MongoDB, a put replaces it
            entry, fresh = None, False
        if entry is None or not fresh:
            self.misses.labels(key.route).inc()
            return None
        self.hits.labels(key.route).inc()
        return entry

    async def put(self, database: str, key: CacheKey, position: int, body: bytes) -> None:
        """Keep `body`, read at `position`, unless a change after `position` is marked."""
        if not await self._usable():
            return
        names = [self._key(database, name) for name in (key.name, key.mark, _ALL_MARK)]
        value = b"%d\n%b" % (position, body)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._put(keys=names, args=[position, value, self._ttl_ms])
        except self._failures as exc:
            self._failed("put", exc)

    async def invalidate(self, database: str, products: frozenset[str], position: int) -> None:
        """The projector stored events up to `position` in `database` that changed `products`:
        mark them and the product lists changed at `position`. What cannot be marked now is
        marked on everything of `database` once Redis answers again."""
        if not products:
            return
        marks = [self._key(database, product_key(p).mark) for p in sorted(products)]
        marks.append(self._key(database, _LISTS_MARK))
        if await self._usable() and await self._raise_marks(marks, position):
            return
        self._unmarked[database] = max(position, self._unmarked.get(database, position))

    async def _usable(self) -> bool:
        """Whether to ask Redis now: not while resting after a failure, and only once every
        change that could not be marked is marked on everything."""
        if time.monotonic() < self._resting_until:
            return False
        for database, position in list(self._unmarked.items()):
            if not await self._raise_marks([self._key(database, _ALL_MARK)], position):
                return False
            if self._unmarked.get(database) == position:
                del self._unmarked[database]
        return True

    async def _raise_marks(self, marks: list[str], position: int) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._raise(keys=marks, args=[position, self._mark_ttl_ms])
        except self._failures as exc:
            self._failed("invalidate", exc)
            return False
        return True

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors.labels(operation).inc()
        now = time.monotonic()
        if now >= self._resting_until:  # once per outage, not once per request
            log.warning(
                "Redis failed (%s): reads go to MongoDB for %.1f s: %r",
                operation,
                self._retry_after_s,
                exc,
            )
        self._resting_until = now + self._retry_after_s


@contextlib.asynccontextmanager
async def open_read_cache(settings: Settings) -> AsyncIterator[ReadCache | None]:
    """The read cache on REDIS_URL, closed on the way out; None without REDIS_URL, and then
    redis is not even imported. Connects on first use: a Redis unreachable at start only means
    reads from MongoDB."""
    if not settings.redis_url:
        yield None
        return
    # imported here, not at the top: without REDIS_URL the cache costs nothing
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError

    timeout = settings.cache_timeout_s
    client = Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # a failure rests the cache instead (CACHE_RETRY_AFTER_S)
    )
    cache = ReadCache(
        client,
        (RedisError, OSError, TimeoutError),
        prefix=settings.cache_key_prefix,
        ttl_s=settings.cache_ttl_s,
        timeout_s=timeout,
        retry_after_s=settings.cache_retry_after_s,
    )
    try:
        yield cache
    finally:
        await client.aclose()
