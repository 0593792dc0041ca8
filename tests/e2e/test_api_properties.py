"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis).

Schemathesis reads `/openapi.json` from the app served over real HTTP on the real services and
sends what the document allows and what it forbids: the boundary values of every parameter and
schema (coverage), random valid and invalid requests (fuzzing), then chains of calls along the
document's links (stateful: create, read with `after`, restock, pay, ship, cancel with If-Match).
Every answer must be no server error and conform to the document (status, headers, content
type, body schema), valid requests must be accepted and invalid ones refused, and no refused
request may write anything, which a wrapper around the app checks against PostgreSQL for each.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import pytest
import schemathesis
from schemathesis.engine import events
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.main import create_app
from app.plumbing.access import mint_token
from app.plumbing.settings import Settings
from tests.support.servers import Server, http_client

pytestmark = pytest.mark.slow

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
# What a write changes: a refused request must leave all of it as it was.
_LEDGER = """
SELECT (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM idempotency_keys) AS idempotency_keys,
       (SELECT count(*) FROM products) AS products,
       (SELECT coalesce(sum(version), 0) FROM products) AS product_versions,
       (SELECT coalesce(sum(stock), 0) FROM products) AS stock,
       (SELECT count(*) FROM orders) AS orders,
       (SELECT coalesce(sum(version), 0) FROM orders) AS order_versions
"""


@schemathesis.hook
def filter_headers(ctx: schemathesis.HookContext, headers: dict[str, str] | None) -> bool:
    """No hand-made Content-Length: the HTTP server (uvicorn's h11) answers a malformed one (an
    empty value, seen once in fuzzing) with its own 400 before any app sees the request."""
    return not any(name.lower() == "content-length" for name in headers or {})


class RefusalsWriteNothing:
    """ASGI wrapper that serves one request at a time and records each refused one (4xx, 5xx)
    after which the write side's tables differ from before it."""

    def __init__(self, app: ASGIApp, pool: asyncpg.Pool) -> None:
        self.app = app
        self.pool = pool
        self.violations: list[str] = []
        self.refused = 0
        self._one_at_a_time = asyncio.Lock()

    async def ledger(self) -> dict[str, int]:
        return dict(await self.pool.fetchrow(_LEDGER))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async with self._one_at_a_time:
            before = await self.ledger()
            await self.app(scope, receive, record_status)
            if status < 400:
                return
            self.refused += 1
            after = await self.ledger()
            if after != before:
                changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
                target = f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}"
                self.violations.append(f"{target} answered {status}, changed {changed}")


# ---- checks beside schemathesis' own ----------------------------------------------------------

# Schema-valid requests that a business rule refuses: the document cannot tell a cursor the
# server made from other base64url text, nor a product that exists from one that does not.
_BUSINESS_REFUSALS = frozenset(
    f"/problems/{slug}"
    for slug in (
        "invalid-cursor",
        "unknown-product",
        "duplicate-order-lines",
        "idempotency-key-reused",
    )
)


@schemathesis.check
def valid_requests_refused_only_by_business_rules(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """positive_data_acceptance lets 400 and 422 pass (see _options); this says which may."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not _headers_conform(case):
        return
    if response.status_code in (400, 422):
        problem = response.json()
        assert problem.get("type") in _BUSINESS_REFUSALS, f"valid request refused: {problem}"


def _headers_conform(case: schemathesis.Case) -> bool:
    """Whether every header parameter sent matches its documented pattern. The coverage phase
    draws header values from letters and digits only, and where a pattern needs more (If-Match
    needs quotes) it sends a value such as `0` that it still labels valid."""
    for parameter in case.operation.definition.raw.get("parameters", []):
        pattern = parameter.get("schema", {}).get("pattern")
        value = (case.headers or {}).get(parameter["name"])
        sent = parameter["in"] == "header" and pattern and value is not None
        if sent and not re.search(pattern, value):
            return False
    return True


@schemathesis.check
def unavailable_only_while_waiting(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """The one 503 these runs may see: a query whose `after` the read model has not reached
    within READ_WAIT_MAX_S (schemathesis draws positions far past the log's end). Any other 503
    (a failing Mongo read, say) is a server error like a 500."""
    if response.status_code != 503:
        return
    problem = response.json()
    waited = case.method == "GET" and problem.get("after", 0) > problem.get("position", 0)
    assert waited, f"503 that is not a wait for `after`: {problem}"


# ---- running schemathesis -------------------------------------------------------------------


@dataclass
class Outcome:
    """What one schemathesis run found and did."""

    failures: list[str] = field(default_factory=list)
    scenarios: dict[str, int] = field(default_factory=dict)
    transitions: int = 0


def _outcome(stream: Iterable[events.EngineEvent]) -> Outcome:
    """Every failed check (with a curl command reproducing it) and every error of a run."""
    outcome = Outcome()
    for event in stream:
        if isinstance(event, events.ScenarioFinished):
            phase = event.phase.value
            outcome.scenarios[phase] = outcome.scenarios.get(phase, 0) + 1
            for checks in event.recorder.checks.values():
                outcome.failures += [
                    f"[{phase}] {event.recorder.label}: {check.failure_info.failure.title}\n"
                    f"{check.failure_info.failure.message}\n{check.failure_info.code_sample}"
                    for check in checks
                    if check.failure_info is not None
                ]
        elif isinstance(event, events.PhaseStarted) and event.payload is not None:
            outcome.transitions = event.payload.transitions_total
        elif isinstance(event, events.NonFatalError):
            outcome.failures.append(f"error in {event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            outcome.failures.append(f"fatal: {event.exception!r}")
    return outcome


def _run(url: str, options: dict[str, Any]) -> Outcome:
    config = schemathesis.Config.from_dict(options)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    return _outcome(schemathesis.engine.from_schema(schema).execute())


@dataclass(frozen=True)
class Seeded:
    """Products and orders made before a run, for its requests to find now and then."""

    product_ids: list[str]
    order_ids: list[str]
    customer_ids: list[str]

    def options(self) -> dict[str, Any]:
        """Schemathesis dictionaries drawing path ids and order lines from these, half the
        time, so that requests also reach existing resources, not only 404s."""
        sources = {
            "products": self.product_ids,
            "orders": self.order_ids,
            "customers": self.customer_ids,
        }
        bindings = {
            "path.product_id": "products",
            "body.lines[*].product_id": "products",
            "path.order_id": "orders",
            "path.customer_id": "customers",
        }
        return {
            "dictionaries": {name: {"values": values} for name, values in sources.items()},
            "parameters": {
                key: {"dictionary": name, "probability": 0.5} for key, name in bindings.items()
            },
        }


async def _seed(url: str, token: str | None) -> Seeded:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    seeded = Seeded([], [], ["seed-1", "seed-2"])
    async with http_client(url, headers=headers) as http:
        for n in range(3):
            product = {"sku": f"SEED-{n}", "name": f"Seed {n}", "price_cents": 100 + n}
            response = await http.post("/products", json={**product, "stock": 10**9})
            assert response.status_code == 201, response.text
            seeded.product_ids.append(response.json()["product_id"])
        for customer in seeded.customer_ids:
            lines = [{"product_id": p, "quantity": 1} for p in seeded.product_ids]
            response = await http.post("/orders", json={"customer_id": customer, "lines": lines})
            assert response.status_code == 201, response.text
            seeded.order_ids.append(response.json()["order_id"])
    return seeded


def _options(
    url: str,
    seed: int,
    max_examples: int,
    seeded: Seeded,
    *,
    token: str | None,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The run's configuration: all phases, all checks but those named in `skip`, one request
    at a time, nothing written to disk."""
    return {
        **seeded.options(),
        "base-url": url,
        "seed": seed,
        "workers": 1,
        "cache": {"enabled": False},
        "output": {"sanitization": {"enabled": False}},
        "generation": {
            "max-examples": max_examples,
            "database": "none",
            # with access control off the token is no parameter: leaving it out is no error
            "with-security-parameters": token is not None,
        },
        **({"auth": {"openapi": {"bearer": {"bearer": token}}}} if token else {}),
        "checks": {
            # 5xx fail but the 503 that unavailable_only_while_waiting allows
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
            # valid_requests_refused_only_by_business_rules says which 400s and 422s; 412 is
            # an If-Match naming another version than the order's
            "positive_data_acceptance": {
                "expected-statuses": [
                    *("2xx", "3xx", "400", "401", "403", "404", "409", "412", "422", "503")
                ]
            },
            **{name: {"enabled": False} for name in skip},
        },
        # the event streams answer until the client goes away: their own tests cover them
        "operations": [{"include-path-regex": "/stream$", "enabled": False}],
    }


Serve = Callable[..., Awaitable[tuple[Server, RefusalsWriteNothing]]]


@pytest.fixture
async def serve_guarded(stack: Settings) -> AsyncIterator[Serve]:
    """Serve the app on the test's stack (settings overridden by keywords) behind a
    RefusalsWriteNothing; a `after` past the log waits 0.2 s, not 5."""
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    assert pool is not None
    servers: list[Server] = []

    async def serve(**overrides: Any) -> tuple[Server, RefusalsWriteNothing]:
        app_settings = replace(stack, read_wait_max_s=0.2, **overrides)
        guard = RefusalsWriteNothing(create_app(app_settings), pool)
        server = Server(app_settings, guard)
        await server.start()
        servers.append(server)
        return server, guard

    yield serve
    for server in reversed(servers):
        await server.stop()
    await pool.close()


async def _assert_keeps_its_document(
    server: Server, guard: RefusalsWriteNothing, options: dict[str, Any]
) -> None:
    before = await guard.ledger()
    outcome = await asyncio.to_thread(_run, server.url, options)
    assert outcome.failures == [], "\n\n".join(outcome.failures)
    assert guard.violations == [], "\n".join(guard.violations)
    # it did reach every phase, refuse requests and write (the links were followed)
    assert {"coverage", "fuzzing", "stateful"} <= set(outcome.scenarios), outcome.scenarios
    assert outcome.transitions >= 10, outcome
    assert guard.refused > 0
    assert (await guard.ledger())["order_versions"] > before["order_versions"]


async def test_the_api_keeps_its_document(serve_guarded: Serve, test_seed: int) -> None:
    server, guard = await serve_guarded()
    seeded = await _seed(server.url, None)
    # access control off: a request without a token is served, as it should be
    skip = ("ignored_auth", "missing_required_header")
    options = _options(server.url, test_seed, 8, seeded, token=None, skip=skip)
    await _assert_keeps_its_document(server, guard, options)


async def test_the_api_keeps_its_document_with_access_control(
    serve_guarded: Serve, test_seed: int
) -> None:
    server, guard = await serve_guarded(auth_mode="jwt", auth_jwt_secret=SECRET)
    # an administrator may do everything; a missing or wrong token must be a 401
    token = mint_token(SECRET, "ops", "admin", 600)
    seeded = await _seed(server.url, token)
    options = _options(server.url, test_seed, 3, seeded, token=token)
    await _assert_keeps_its_document(server, guard, options)


async def test_the_guard_sees_a_refused_request_that_wrote(stack: Settings) -> None:
    """RefusalsWriteNothing itself: a 409 after a write is recorded, a 404 without one is not."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/write":
            await pool.execute("INSERT INTO idempotency_keys (key, fingerprint) VALUES ('k', 'f')")
        status = 409 if scope["path"] == "/write" else 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        guard = RefusalsWriteNothing(app, pool)
        for path in ("/read", "/write"):
            scope = {"type": "http", "method": "POST", "path": path, "query_string": b""}
            await guard(scope, _no_body, _discard)
    finally:
        await pool.close()
    assert guard.refused == 2
    assert guard.violations == ["POST /write? answered 409, changed {'idempotency_keys': (0, 1)}"]


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    pass
