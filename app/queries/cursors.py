"""Opaque keyset cursors: the sort key of a page's last item, as base64url of checked JSON."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import Final, TypeVar

import msgspec

from app.plumbing.problems import Problem

MAX_CURSOR_CHARS: Final = 512
CURSOR_TEXT: Final = r"[A-Za-z0-9_-]+"  # base64url without padding, matched whole
_CURSOR = re.compile(CURSOR_TEXT)
_CHECK_BYTES: Final = 8
# Not a secret: the check catches truncated and edited cursors. A forged cursor gains nothing,
# since it can only name a typed sort key, never a filter or an operator.
_CHECK_KEY: Final = b"shop.queries.cursor.v1"


class InvalidCursor(Problem):
    status = 400
    slug = "invalid-cursor"


class OrderCursor(msgspec.Struct, frozen=True, array_like=True, tag="o"):
    """Where the next page of a customer's orders starts: after (placed_at, _id), descending."""

    placed_at: datetime
    order_id: str


class ProductCursor(msgspec.Struct, frozen=True, array_like=True, tag="p"):
    """Where the next page of products starts: after this sku, ascending."""

    sku: str


Cursor = OrderCursor | ProductCursor
C = TypeVar("C", OrderCursor, ProductCursor)
_decoder: Final = msgspec.json.Decoder(Cursor)


def _check(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=_CHECK_KEY, digest_size=_CHECK_BYTES).digest()


def encode_cursor(cursor: Cursor) -> str:
    """The opaque text a client passes back as `cursor=`; stable across replicas and restarts."""
    payload = msgspec.json.encode(cursor)
    return base64.urlsafe_b64encode(_check(payload) + payload).rstrip(b"=").decode("ascii")


def decode_cursor(text: str, kind: type[C]) -> C:
    """The cursor `encode_cursor` made; raises InvalidCursor (400) for anything else, including
    a valid cursor of another list."""
    raw = _unpack(text)
    check, payload = raw[:_CHECK_BYTES], raw[_CHECK_BYTES:]
    if not hmac.compare_digest(check, _check(payload)):
        raise _invalid("it was altered or truncated")
    try:
        cursor = _decoder.decode(payload)
    except msgspec.DecodeError:
        raise _invalid("it does not hold a position") from None
    if not isinstance(cursor, kind):
        raise _invalid("it belongs to another list")
    if isinstance(cursor, OrderCursor) and not _storable(cursor.placed_at):
        raise _invalid("it does not hold a position")
    return cursor


def _storable(moment: datetime) -> bool:
    """Aware, and within what a BSON date holds once in UTC (a forged cursor may not be)."""
    if moment.tzinfo is None:
        return False
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _unpack(text: str) -> bytes:
    if not 0 < len(text) <= MAX_CURSOR_CHARS:
        raise _invalid("it is empty or too long")
    if not _CURSOR.fullmatch(text):
        raise _invalid("it is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("it is not base64url") from None
    # urlsafe_b64decode drops characters outside the alphabet; re-encoding must round-trip
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise _invalid("it is not base64url")
    return raw


def _invalid(reason: str) -> InvalidCursor:
    return InvalidCursor(
        f"the cursor is not valid ({reason}); pass a next_cursor exactly as received",
        parameter="cursor",
    )
