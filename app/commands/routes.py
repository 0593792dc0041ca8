"""HTTP command endpoints: parse, run the handler in one transaction, respond.

`execute` is the unit of work: it opens the transaction, claims the Idempotency-Key, calls the
handler, stores the response under the key, commits, then wakes the relay. Deadlocks and
serialization failures are retried; an unreachable PostgreSQL answers 503 with Retry-After.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.commands import idempotency
from app.commands.http import correlation_id, decode_json, expected_version, idempotency_key
from app.commands.order_rules import Action, OrderResult, PlaceOrder
from app.commands.orders import place_order, transition_order
from app.commands.outbox import EventMetadata
from app.commands.products import CreateProduct, RestockProduct, create_product, restock_product
from app.plumbing import access
from app.plumbing.access import admin_only, signed_in
from app.plumbing.logs import CORRELATION_ID
from app.plumbing.problems import Problem, ServiceUnavailable
from app.plumbing.tracing import current_traceparent

log = logging.getLogger(__name__)

_RETRIES: Final = 3
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What the command endpoints need, built by the composition root."""

    pool: asyncpg.Pool
    idempotency_ttl_s: int
    acquire_timeout_s: float
    on_commit: Callable[[], None]
    # (command, outcome): ok, replayed, refused (4xx), unavailable (503) or error (a metric)
    on_outcome: Callable[[str, str], None] = lambda command, outcome: None


Handler = Callable[[asyncpg.Connection, EventMetadata], Awaitable[msgspec.Struct]]


def _context(request: Request) -> CommandContext:
    context: CommandContext = request.app.state.commands
    return context


def _success(
    result: msgspec.Struct, status: int, location: str | None
) -> idempotency.StoredResponse:
    headers = {"X-Event-Position": str(result.position)}  # type: ignore[attr-defined]
    if isinstance(result, OrderResult):
        headers["ETag"] = f'"{result.version}"'
    if location is not None:
        headers["Location"] = location
    return idempotency.StoredResponse(status=status, headers=headers, body=_encoder.encode(result))


async def execute(
    request: Request,
    command: str,
    handler: Handler,
    *,
    status: int = 200,
    location: Callable[[Any], str] | None = None,
    request_identity: bytes = b"",
) -> Response:
    """Run `handler` as the command named `command` and report its outcome."""
    context = _context(request)
    try:
        response = await _execute(request, context, handler, status, location, request_identity)
    except Problem as problem:
        context.on_outcome(command, "refused" if problem.status < 500 else "unavailable")
        raise
    except Exception:
        context.on_outcome(command, "error")
        raise
    replayed = "Idempotent-Replayed" in response.headers
    context.on_outcome(command, "replayed" if replayed else "ok")
    return response


async def _execute(
    request: Request,
    context: CommandContext,
    handler: Handler,
    status: int,
    location: Callable[[Any], str] | None,
    request_identity: bytes,
) -> Response:
    key = idempotency_key(request)
    meta = EventMetadata(
        correlation_id=correlation_id(request),
        idempotency_key=key,
        traceparent=current_traceparent(),
    )
    CORRELATION_ID.set(meta.correlation_id)  # the request's own context: its log lines
    fingerprint = idempotency.fingerprint(
        request.method,
        request.url.path,
        request.headers.get("if-match", ""),
        request_identity,
        *_caller(request),
    )
    for attempt in range(1, _RETRIES + 1):
        try:
            stored, replayed = await _run_once(
                context, handler, meta, key, fingerprint, status, location
            )
            break
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == _RETRIES:
                raise
            log.warning("retrying a command after a transient conflict (attempt %d)", attempt)
        except _UNAVAILABLE as exc:
            log.warning("PostgreSQL unavailable for a command: %r", exc)
            raise ServiceUnavailable(
                "the database is unavailable; retry with the same Idempotency-Key",
                headers={"Retry-After": "1"},
            ) from None
    if not replayed:
        context.on_commit()
    headers = {**stored.headers, "X-Correlation-ID": meta.correlation_id}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        stored.body, status_code=stored.status, headers=headers, media_type="application/json"
    )


def _caller(request: Request) -> tuple[str, ...]:
    """Part of the fingerprint: a key replays only to the caller who used it. Nothing with
    access control off, so fingerprints stay what they were."""
    identity = access.principal(request).identity
    return (identity,) if identity else ()


async def _run_once(
    context: CommandContext,
    handler: Handler,
    meta: EventMetadata,
    key: str | None,
    fingerprint: str,
    status: int,
    location: Callable[[Any], str] | None,
) -> tuple[idempotency.StoredResponse, bool]:
    async with (
        context.pool.acquire(timeout=context.acquire_timeout_s) as conn,
        conn.transaction(),
    ):
        if key is not None:
            previous = await idempotency.claim(conn, key, fingerprint, context.idempotency_ttl_s)
            if previous is not None:
                return previous, True
        result = await handler(conn, meta)
        stored = _success(result, status, location(result) if location else None)
        if key is not None:
            await idempotency.store(conn, key, stored)
        return stored, False


# ---- endpoints ---------------------------------------------------------------------------


async def post_products(request: Request) -> Response:
    cmd = await decode_json(request, CreateProduct)
    return await execute(
        request,
        "create_product",
        lambda conn, meta: create_product(conn, cmd, meta),
        status=201,
        location=lambda r: f"/products/{r.product_id}",
        request_identity=_encoder.encode(cmd),
    )


async def post_restock(request: Request) -> Response:
    product_id: uuid.UUID = request.path_params["product_id"]
    cmd = await decode_json(request, RestockProduct)
    return await execute(
        request,
        "restock_product",
        lambda conn, meta: restock_product(conn, product_id, cmd, meta),
        request_identity=_encoder.encode(cmd),
    )


async def post_orders(request: Request) -> Response:
    cmd = await decode_json(request, PlaceOrder)
    access.principal(request).require_customer(cmd.customer_id)
    return await execute(
        request,
        "place_order",
        lambda conn, meta: place_order(conn, cmd, meta),
        status=201,
        location=lambda r: f"/orders/{r.order_id}",
        request_identity=_encoder.encode(cmd),
    )


def _transition(action: Action) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        order_id: uuid.UUID = request.path_params["order_id"]
        version = expected_version(request)
        # whose order it is shows only once its row is locked, in the handler
        customer = access.principal(request).customer
        return await execute(
            request,
            f"{action}_order",
            lambda conn, meta: transition_order(
                conn, order_id, action, version, meta, customer=customer
            ),
        )

    endpoint.__name__ = f"post_order_{action}"
    return endpoint


def routes() -> list[Route]:
    return [
        Route("/products", admin_only(post_products), methods=["POST"]),
        Route("/products/{product_id:uuid}/restock", admin_only(post_restock), methods=["POST"]),
        # a customer places orders for themselves, pays and cancels only their own
        Route("/orders", signed_in(post_orders), methods=["POST"]),
        Route("/orders/{order_id:uuid}/pay", signed_in(_transition("pay")), methods=["POST"]),
        Route("/orders/{order_id:uuid}/ship", admin_only(_transition("ship")), methods=["POST"]),
        Route("/orders/{order_id:uuid}/cancel", signed_in(_transition("cancel")), methods=["POST"]),
    ]
