"""RFC 9457 problem details: the one place where errors become HTTP responses.

Both sides raise `Problem` subclasses (domain errors carry their status and the ids involved);
the handlers registered by `install` turn them, Starlette's own 404/405 and any unexpected
exception into `application/problem+json`.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An error a client can act on. Subclasses set `status` and `slug`; `extra` is merged into
    the problem document (e.g. the per-product shortfall of an order)."""

    status: int = 400
    slug: str = "bad-request"
    title: str | None = None

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        slug: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if slug is not None:
            self.slug = slug
        self.extra = extra
        self.headers = headers or {}

    def document(self) -> dict[str, Any]:
        return {
            "type": f"/problems/{self.slug}",
            "title": self.title or _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class MalformedJson(Problem):
    status = 400
    slug = "malformed-json"


class InvalidRequest(Problem):
    status = 422
    slug = "validation-error"


class PayloadTooLarge(Problem):
    status = 413
    slug = "payload-too-large"


class UnsupportedMediaType(Problem):
    status = 415
    slug = "unsupported-media-type"


class ServiceUnavailable(Problem):
    status = 503
    slug = "service-unavailable"


def problem_response(problem: Problem) -> Response:
    return Response(
        msgspec.json.encode(problem.document()),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    slug = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
    title = _TITLES.get(status, "Error")
    detail = exc.detail if exc.detail != title else f"{request.method} {request.url.path}: {title}"
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(Problem(detail, status=status, slug=slug, headers=headers))


def _allowed_methods(request: Request) -> str:
    """Every method the path is served with. Starlette's own `Allow` names only those of the
    first route matching the path, and `POST /products` and `GET /products` are two routes."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        Problem(
            "the server failed to handle this request; it has been logged",
            status=500,
            slug="internal-error",
        )
    )


def install(app: Starlette) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
