"""Query parameters and path ids of the read endpoints, typed and bounded before Mongo sees them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, cast

from starlette.datastructures import QueryParams

from app.contracts.events import CUSTOMER_ID_CHARS, CUSTOMER_ID_MAX, ORDER_STATUSES, OrderStatus
from app.plumbing.problems import InvalidRequest, Problem

MAX_LIMIT: Final = 100
MAX_POSITION: Final = 2**63 - 1  # the event log's positions are PostgreSQL bigints
_STATUSES: Final[frozenset[str]] = frozenset(ORDER_STATUSES)
# fullmatch, not `$`: `$` also matches before a trailing newline
_DIGITS = re.compile(r"[0-9]{1,19}")
UUID_TEXT: Final = r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"  # a path id, whole
_UUID = re.compile(UUID_TEXT)
_CUSTOMER_ID = re.compile(CUSTOMER_ID_CHARS)


class NotFound(Problem):
    status = 404
    slug = "not-found"


def invalid_parameter(name: str, message: str) -> InvalidRequest:
    """The 422 problem for one query parameter, naming it the way the client spelled it."""
    return InvalidRequest(
        f"query parameter {name!r}: {message}",
        errors=[{"parameter": name, "message": message}],
    )


class QueryArgs:
    """The query string of one request, one value per known name, typed on demand.

    Unknown names are ignored, except `name[...]` forms of a known name (`status[$ne]=x`):
    ignoring those would silently drop a filter the client meant to apply.
    """

    def __init__(self, params: QueryParams, known: Iterable[str]) -> None:
        self._params = params
        names = frozenset(known) | {"after"} if params else ()
        for name in params:
            base = name.split("[", 1)[0]
            if base != name and base in names:
                raise invalid_parameter(name, f"use plain {base}=<value>")

    def text(self, name: str) -> str | None:
        values = self._params.getlist(name)
        if len(values) > 1:
            raise invalid_parameter(name, "given more than once")
        return values[0] if values else None

    def integer(self, name: str, *, default: int, minimum: int, maximum: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        if not _DIGITS.fullmatch(raw) or not minimum <= int(raw) <= maximum:
            raise invalid_parameter(name, f"expected an integer from {minimum} to {maximum}")
        return int(raw)

    def limit(self, default: int) -> int:
        return self.integer("limit", default=default, minimum=1, maximum=MAX_LIMIT)

    def after(self) -> int:
        """The position the read model must have applied before answering (0: no wait)."""
        return self.integer("after", default=0, minimum=0, maximum=MAX_POSITION)

    def status(self) -> OrderStatus | None:
        raw = self.text("status")
        if raw is None:
            return None
        if raw not in _STATUSES:
            raise invalid_parameter("status", f"expected one of {', '.join(sorted(_STATUSES))}")
        return cast(OrderStatus, raw)


def uuid_id(raw: str, what: str) -> str:
    """The canonical text of a UUID path id (the form `_id` is stored in); 404 otherwise,
    since no such resource can exist."""
    if not _UUID.fullmatch(raw):
        raise NotFound(f"no {what} {raw!r}")
    return raw.lower()  # the whole hyphenated form, so its canonical text


def customer_id(raw: str) -> str:
    """A customer id as the command API accepts it; 404 otherwise."""
    if len(raw) > CUSTOMER_ID_MAX or not _CUSTOMER_ID.fullmatch(raw):
        raise NotFound(f"no customer {raw!r}")
    return raw
