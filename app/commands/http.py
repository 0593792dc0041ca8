"""Request plumbing of the command endpoints: bounded JSON bodies decoded into command
Structs, and the headers a command reads (Idempotency-Key, If-Match, X-Correlation-ID)."""

from __future__ import annotations

import re
import uuid
from typing import Final, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request

from app.plumbing.problems import (
    InvalidRequest,
    MalformedJson,
    PayloadTooLarge,
    Problem,
    UnsupportedMediaType,
)

T = TypeVar("T")

MAX_BODY_BYTES: Final = 64 * 1024
# What the server matches whole (fullmatch), also the OpenAPI document's patterns
HEADER_TOKEN_MAX: Final = 200
HEADER_TOKEN: Final = rf"[\x21-\x7e]{{1,{HEADER_TOKEN_MAX}}}"  # Idempotency-Key, X-Correlation-ID
ENTITY_TAG: Final = r'"([0-9]{1,9})"'  # a version as a strong entity tag: ETag, If-Match
IF_MATCH: Final = rf"\*|{ENTITY_TAG}"
_HEADER_TOKEN = re.compile(HEADER_TOKEN)
_IF_MATCH = re.compile(IF_MATCH)
_ERROR_PATH = re.compile(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`$", re.DOTALL)


class ClientGone(Problem):
    """The client went away (or sent a body the server could not parse) mid-body."""

    status = 400
    slug = "incomplete-body"


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem("Content-Length is not a number", slug="bad-content-length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body may be at most {limit} bytes", limit=limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body may be at most {limit} bytes", limit=limit)
            chunks.append(chunk)
    except ClientDisconnect:
        # A client that went away (or sent a body the server could not parse) is not an error
        # of ours: nothing was written, and the answer reaches nobody.
        raise ClientGone("the client went away before sending the whole body") from None
    return b"".join(chunks)


async def decode_json(request: Request, type_: type[T]) -> T:
    """Decode the body into `type_`: 415 unless JSON, 413 when too large, 400 when not JSON,
    422 with the failing field path when it does not validate."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {media_type or 'none'!r}"
        )
    body = await read_body(request)
    try:
        return _typed(body, type_)
    except msgspec.ValidationError as exc:
        match = _ERROR_PATH.match(str(exc))
        message, path = (match["message"], match["path"]) if match else (str(exc), "$")
        raise InvalidRequest(
            f"{message} at {path}", errors=[{"path": path, "message": message}]
        ) from None
    except msgspec.DecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from None


def _typed(body: bytes, type_: type[T]) -> T:
    """msgspec's strict decoding, except that a whole float (`2.0`) is the integer it spells, as
    in JSON Schema, the OpenAPI document's dialect; `2.5` and `"2"` stay refused."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise
        try:
            return msgspec.convert(_whole_numbers(msgspec.json.decode(body)), type_)
        except RecursionError:  # nested deeper than any command: the first error stands
            raise exc from None


def _whole_numbers(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    return value


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not _HEADER_TOKEN.fullmatch(key):
        raise Problem(
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
            slug="invalid-idempotency-key",
        )
    return key


def expected_version(request: Request) -> int | None:
    """The version named by If-Match (`"<version>"`), None when absent or `*`."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    match = _IF_MATCH.fullmatch(value.strip())
    if match is None:
        raise Problem(
            'If-Match must be "*" or one strong entity tag such as "3"', slug="invalid-if-match"
        )
    return None if match[1] is None else int(match[1])


def correlation_id(request: Request) -> str:
    value = request.headers.get("x-correlation-id")
    if value is not None and _HEADER_TOKEN.fullmatch(value):
        return value
    return str(uuid.uuid4())
