"""Idempotency-Key: one effect per key, the same stored response for every repeat.

The key row is claimed inside the command's own transaction, before the handler runs, so a
concurrent request with the same key waits on the row until the first one commits (and then
replays its response) or rolls back (and then runs itself). Only successful responses are
stored: a rejected request writes nothing, so retrying it with the same key runs it again.
"""

from __future__ import annotations

import hashlib

import asyncpg
import msgspec

from app.commands.errors import IdempotencyKeyReused


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    headers: dict[str, str]
    body: bytes


def fingerprint(*parts: bytes | str) -> str:
    """A digest of everything that makes two requests the same request."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


async def claim(
    conn: asyncpg.Connection, key: str, request_fingerprint: str, ttl_s: int
) -> StoredResponse | None:
    """Within the caller's transaction: None when this request now owns `key` (a new key, or
    one older than `ttl_s`), else the response stored for it. Raises IdempotencyKeyReused
    when the key was used with a different request."""
    owned = await conn.fetchval(
        "INSERT INTO idempotency_keys (key, fingerprint) VALUES ($1, $2)"
        " ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, status = NULL,"
        "   headers = NULL, body = NULL, created_at = now()"
        " WHERE idempotency_keys.created_at < now() - make_interval(secs => $3)"
        " RETURNING true",
        key,
        request_fingerprint,
        float(ttl_s),
    )
    if owned:
        return None
    row = await conn.fetchrow(
        "SELECT fingerprint, status, headers, body FROM idempotency_keys WHERE key = $1", key
    )
    if row is None or row["fingerprint"] != request_fingerprint:
        raise IdempotencyKeyReused(key)
    return StoredResponse(
        status=row["status"], headers=msgspec.json.decode(row["headers"]), body=row["body"]
    )


async def store(conn: asyncpg.Connection, key: str, response: StoredResponse) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET status = $2, headers = $3::jsonb, body = $4 WHERE key = $1",
        key,
        response.status,
        msgspec.json.encode(response.headers).decode(),
        response.body,
    )


async def purge_expired(conn: asyncpg.Connection, ttl_s: int, batch: int = 1000) -> int:
    """Delete up to `batch` keys older than `ttl_s`; returns how many went."""
    status: str = await conn.execute(
        "DELETE FROM idempotency_keys WHERE key IN (SELECT key FROM idempotency_keys"
        " WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        float(ttl_s),
        batch,
    )
    return int(status.split()[-1])
