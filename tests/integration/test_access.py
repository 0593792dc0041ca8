"""Access control over real HTTP (AUTH_MODE=jwt): who may call what, what a refusal answers,
and that a refused request writes nothing (README "Access control")."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.plumbing.access import Role, mint_token
from app.plumbing.settings import Settings
from tests.support.servers import Server, ServerFactory, http_client
from tests.support.stacks import fresh_stack

SECRET = "integration-test-secret-long-enough-for-hs256"
ISSUER = "https://issuer.test"
AUDIENCE = "shop-api"
JWT: dict[str, Any] = {
    "auth_mode": "jwt",
    "auth_jwt_secret": SECRET,
    "auth_jwt_issuer": ISSUER,
    "auth_jwt_audience": AUDIENCE,
}
NOBODY: dict[str, str] = {}


def bearer(sub: str, role: Role = "customer") -> dict[str, str]:
    token = mint_token(SECRET, sub, role, 300, issuer=ISSUER, audience=AUDIENCE)
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer("ops", "admin")


def customers() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"alice-{tag}", f"bob-{tag}"


@pytest.fixture
async def api(start_server: ServerFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The app with AUTH_MODE=jwt (relay and projector off): the write side."""
    server = await start_server(**JWT)
    async with http_client(server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def shop(settings: Settings, migrated_template: str) -> AsyncIterator[httpx.AsyncClient]:
    """The whole pipeline with AUTH_MODE=jwt on a fresh stack: what is written can be read."""
    async with fresh_stack(
        settings, migrated_template, relay_enabled=True, projector_enabled=True, **JWT
    ) as stack:
        server = Server(stack)
        await server.start()
        try:
            async with http_client(server.url, timeout=30) as http:
                yield http
        finally:
            await server.stop()


async def create_product(http: httpx.AsyncClient) -> dict[str, Any]:
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Mug", "price_cents": 100}
    response = await http.post("/products", json={**body, "stock": 1000}, headers=ADMIN)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def place(
    http: httpx.AsyncClient, customer: str, product_id: str, headers: dict[str, str]
) -> httpx.Response:
    body = {"customer_id": customer, "lines": [{"product_id": product_id, "quantity": 1}]}
    return await http.post("/orders", json=body, headers=headers)


async def placed(http: httpx.AsyncClient, customer: str, product_id: str) -> dict[str, Any]:
    response = await place(http, customer, product_id, bearer(customer))
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def order_row(pool: asyncpg.Pool, order_id: str) -> tuple[str, int, int]:
    """(status, version, events logged) of an order in PostgreSQL."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, version, (SELECT count(*) FROM events WHERE stream_type = 'order'"
            " AND stream_id = $1) AS logged FROM orders WHERE order_id = $1::uuid",
            order_id,
        )
    assert row is not None
    return row["status"], row["version"], row["logged"]


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


# ---- anyone ---------------------------------------------------------------------------------


async def test_catalogue_health_metrics_and_descriptions_are_open_to_anyone(
    api: httpx.AsyncClient,
) -> None:
    garbage = {"Authorization": "Bearer not-a-token"}  # open endpoints never look at it
    for headers in (NOBODY, garbage):
        for path in ("/products", "/health/live", "/openapi.json", "/asyncapi.json", "/metrics"):
            response = await api.get(path, headers=headers)
            assert response.status_code == 200, (path, response.text)
        unknown = await api.get(f"/products/{uuid.uuid4()}", headers=headers)
        assert unknown.status_code == 404  # looked up, not refused
        ready = await api.get("/health/ready", headers=headers)
        assert ready.status_code not in (401, 403)


# ---- tokens ---------------------------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(sub: str, **changes: Any) -> dict[str, Any]:
    claims = {"sub": sub, "role": "customer", "iss": ISSUER, "aud": AUDIENCE}
    return claims | {"exp": int(time.time()) + 300} | changes


def bad_authorizations(sub: str) -> dict[str, dict[str, str]]:
    """Each way a request can fail to authenticate as `sub`, as its headers."""
    good = jwt.encode(_claims(sub), SECRET, algorithm="HS256")
    header, _, signature = good.split(".")
    forged = {
        "tampered signature": f"{header}.{_b64(_claims(sub, role='admin'))}.{signature}",
        "another secret": jwt.encode(_claims(sub), SECRET + "-other", algorithm="HS256"),
        "expired": jwt.encode(_claims(sub, exp=int(time.time()) - 60), SECRET, "HS256"),
        "wrong issuer": jwt.encode(_claims(sub, iss="https://evil.test"), SECRET, "HS256"),
        "wrong audience": jwt.encode(_claims(sub, aud="other-api"), SECRET, "HS256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(sub))}.",
    }
    headers = {name: {"Authorization": f"Bearer {t}"} for name, t in forged.items()}
    return {"missing token": {}, "basic auth": {"Authorization": "Basic YWxpY2U6cHc="}, **headers}


async def test_a_missing_or_bad_token_is_401_and_writes_nothing(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product_id = (await create_product(api))["product_id"]
    alice, _ = customers()
    for name, headers in bad_authorizations(alice).items():
        response = await place(api, alice, product_id, headers)
        assert_refused(response, 401)
        challenge = response.headers["www-authenticate"]
        assert challenge == (
            "Bearer" if name == "missing token" else 'Bearer error="invalid_token"'
        )
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1", alice) == 0
    assert (await place(api, alice, product_id, bearer(alice))).status_code == 201


async def test_a_public_key_verifies_its_own_algorithm_only(
    start_server: ServerFactory,
) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = await start_server(auth_mode="jwt", auth_jwt_public_key=pem.decode())
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Mug", "price_cents": 1}
    claims = {"sub": "ops", "role": "admin", "exp": int(time.time()) + 60}
    async with http_client(server.url) as http:
        hs256 = jwt.encode(claims, SECRET, algorithm="HS256")
        refused = await http.post(
            "/products", json=body, headers={"Authorization": f"Bearer {hs256}"}
        )
        assert_refused(refused, 401)
        es256 = jwt.encode(claims, private_key, algorithm="ES256")
        created = await http.post(
            "/products", json=body, headers={"Authorization": f"Bearer {es256}"}
        )
        assert created.status_code == 201, created.text


# ---- the write side -------------------------------------------------------------------------


async def test_admin_only_commands_refuse_customers_and_strangers(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await create_product(api)
    product_id = product["product_id"]
    alice, _ = customers()
    order = await placed(api, alice, product_id)
    assert (await api.post(f"/orders/{order['order_id']}/pay", headers=bearer(alice))).is_success
    sku = f"SKU-{uuid.uuid4().hex[:10]}"
    commands = [
        ("/products", {"sku": sku, "name": "Tea", "price_cents": 5}, 201),
        (f"/products/{product_id}/restock", {"quantity": 5}, 200),
        (f"/orders/{order['order_id']}/ship", None, 200),  # alice's own order: still not hers
    ]
    for path, body, _ in commands:
        for headers, status in ((NOBODY, 401), (bearer(alice), 403)):
            assert_refused(await api.post(path, json=body, headers=headers), status)
        assert await order_row(pool, order["order_id"]) == ("paid", 2, 2)
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT stock, version, (SELECT count(*) FROM products WHERE sku = $2) AS created"
                " FROM products WHERE product_id = $1::uuid",
                product_id,
                sku,
            )
        assert (row["stock"], row["version"], row["created"]) == (999, 2, 0)
    for path, body, done in commands:
        assert (await api.post(path, json=body, headers=ADMIN)).status_code == done


async def test_a_customer_orders_only_for_themselves(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product_id = (await create_product(api))["product_id"]
    alice, bob = customers()
    key = f"key-{uuid.uuid4()}"
    response = await place(api, bob, product_id, {**bearer(alice), "Idempotency-Key": key})
    assert_refused(response, 403)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1", bob) == 0
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key) == 0
    assert (await place(api, alice, product_id, bearer(alice))).status_code == 201
    assert (await place(api, bob, product_id, ADMIN)).status_code == 201  # admins: anyone's


async def test_another_customers_order_is_not_found_on_pay_and_cancel(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product_id = (await create_product(api))["product_id"]
    alice, bob = customers()
    order_id = (await placed(api, alice, product_id))["order_id"]
    missing = await api.post(f"/orders/{uuid.uuid4()}/pay", headers=bearer(bob))
    for action in ("pay", "cancel"):
        for extra in ({}, {"If-Match": '"1"'}, {"If-Match": '"7"'}):  # not even a 412
            response = await api.post(
                f"/orders/{order_id}/{action}", headers={**bearer(bob), **extra}
            )
            assert_refused(response, 404)
            assert response.json()["type"] == missing.json()["type"] == "/problems/order-not-found"
            assert await order_row(pool, order_id) == ("placed", 1, 1)
        assert_refused(await api.post(f"/orders/{order_id}/{action}"), 401)
    paid = await api.post(f"/orders/{order_id}/pay", headers=bearer(alice))
    assert (paid.status_code, paid.json()["version"]) == (200, 2)
    cancelled = await api.post(f"/orders/{order_id}/cancel", headers=ADMIN)
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")


async def test_an_idempotency_key_never_replays_to_another_caller(
    api: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product_id = (await create_product(api))["product_id"]
    alice, bob = customers()
    order_id = (await placed(api, alice, product_id))["order_id"]
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await api.post(f"/orders/{order_id}/pay", headers={**bearer(alice), **key})
    assert first.status_code == 200
    again = await api.post(f"/orders/{order_id}/pay", headers={**bearer(alice), **key})
    assert again.headers["idempotent-replayed"] == "true"
    stolen = await api.post(f"/orders/{order_id}/pay", headers={**bearer(bob), **key})
    assert_refused(stolen, 422)
    assert order_id not in stolen.text
    assert await order_row(pool, order_id) == ("paid", 2, 2)


# ---- the read side --------------------------------------------------------------------------


async def test_each_role_reads_what_it_may(shop: httpx.AsyncClient) -> None:
    product = await create_product(shop)
    alice, bob = customers()
    order = await placed(shop, alice, product["product_id"])
    after = f"?after={order['position']}"
    unknown = await shop.get(f"/orders/{uuid.uuid4()}{after}", headers=ADMIN)
    expected = {  # path: statuses for (nobody, alice, bob, admin)
        f"/products/{product['product_id']}{after}": (200, 200, 200, 200),
        f"/products{after}": (200, 200, 200, 200),
        f"/orders/{order['order_id']}{after}": (401, 200, 404, 200),
        f"/customers/{alice}{after}": (401, 200, 403, 200),
        f"/customers/{alice}/orders{after}": (401, 200, 403, 200),
        f"/reports/top-products{after}": (401, 403, 403, 200),
    }
    callers = (NOBODY, bearer(alice), bearer(bob), ADMIN)
    answered = {
        path: tuple([(await shop.get(path, headers=h)).status_code for h in callers])
        for path in expected
    }
    assert answered == expected
    hidden = await shop.get(f"/orders/{order['order_id']}{after}", headers=bearer(bob))
    assert hidden.json()["type"] == unknown.json()["type"] == "/problems/not-found"
    assert "etag" not in hidden.headers
    revalidated = await shop.get(
        f"/orders/{order['order_id']}", headers={**bearer(bob), "If-None-Match": "*"}
    )
    assert revalidated.status_code == 404  # a 304 would say it exists
    own = await shop.get(f"/customers/{alice}/orders{after}", headers=bearer(alice))
    assert [o["order_id"] for o in own.json()["items"]] == [order["order_id"]]


# ---- operations ---------------------------------------------------------------------------


async def test_metrics_want_the_metrics_token_when_one_is_set(
    start_server: ServerFactory,
) -> None:
    server = await start_server(metrics_token="scrape-me", **JWT)
    async with http_client(server.url) as http:
        for headers in (NOBODY, {"Authorization": "Bearer wrong"}, ADMIN):
            assert_refused(await http.get("/metrics", headers=headers), 401)
        scraped = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200
        assert "shop_" in scraped.text


async def test_access_control_off_is_logged_once_at_start(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app")
    await start_server(**JWT)
    assert not [r for r in caplog.records if "access control is off" in r.message]
    server = await start_server()
    warned = [r for r in caplog.records if "access control is off" in r.message]
    assert [r.levelno for r in warned] == [logging.WARNING]
    async with http_client(server.url) as http:  # and everything answers as before: no token
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/reports/top-products")).status_code == 200
