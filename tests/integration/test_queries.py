"""The read endpoints over real HTTP against a real MongoDB-protocol server, with read-model
documents written straight into Mongo the way the projector writes them."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from starlette.applications import Starlette

from app.contracts.generations import ReadModel
from app.contracts.readmodel import META, META_ID, ensure_indexes
from app.plumbing import problems
from app.plumbing.localstore import LocalStore
from app.plumbing.settings import Settings
from app.queries.routes import QueryContext, routes
from app.queries.waiting import MongoPositionWaiter
from tests.support.servers import Server, free_port, http_client

Db = AsyncDatabase[dict[str, Any]]
Serve = Callable[..., Awaitable[httpx.AsyncClient]]
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def query_server(context: QueryContext) -> Server:
    """A real server for the query routes alone."""
    app = Starlette(routes=routes())
    problems.install(app)
    app.state.queries = context
    return Server(Settings(), app)


@pytest.fixture
async def db(mongo_url: str) -> AsyncIterator[Db]:
    """A Mongo database of this test's own, indexed like the projector's, dropped afterwards."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    database = client[f"queries_test_{uuid.uuid4().hex[:12]}"]
    await ensure_indexes(database)
    await set_position(database, 5)
    yield database
    await client.drop_database(database.name)
    await client.close()


@pytest.fixture
async def serve(db: Db) -> AsyncIterator[Serve]:
    """Serve the query routes over `db`; keyword arguments override the context's fields."""
    servers: list[Server] = []
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: Any) -> httpx.AsyncClient:
        fields: dict[str, Any] = {
            "model": ReadModel.fixed(db),
            "waiter": MongoPositionWaiter(ReadModel.fixed(db), poll_interval=0.02),
            "read_wait_max_s": 2.0,
            **overrides,
        }
        server = query_server(QueryContext(**fields))
        await server.start()
        servers.append(server)
        clients.append(http_client(server.url, timeout=30))
        return clients[-1]

    yield start
    for client in clients:
        await client.aclose()
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def http(serve: Serve) -> httpx.AsyncClient:
    return await serve()


# ---- documents as the projector writes them --------------------------------------------------


async def set_position(db: Db, position: int) -> None:
    await db[META].update_one({"_id": META_ID}, {"$set": {"position": position}}, True)


def order_document(
    customer_id: str, placed_at: datetime, status: str = "placed", version: int = 1
) -> dict[str, Any]:
    order_id, product_id = str(uuid.uuid4()), str(uuid.uuid4())
    line = {
        "product_id": product_id,
        "sku": "SKU-1",
        "name": "Mug",
        "quantity": 2,
        "unit_price_cents": 450,
        "line_total_cents": 900,
    }
    history = [{"status": "placed", "at": placed_at, "position": 3}]
    return {
        "_id": order_id,
        "order_id": order_id,
        "customer_id": customer_id,
        "status": status,
        "lines": [line],
        "total_cents": 900,
        "status_history": history,
        "placed_at": placed_at,
        "updated_at": placed_at,
        "version": version,
        "position": 3,
    }


def product_document(sku: str, units_sold: int = 0) -> dict[str, Any]:
    product_id = str(uuid.uuid4())
    return {
        "_id": product_id,
        "product_id": product_id,
        "sku": sku,
        "name": f"Product {sku}",
        "price_cents": 1250,
        "stock": 10,
        "units_sold": units_sold,
        "revenue_cents": units_sold * 1250,
        "version": 1,
        "position": 2,
        "created_at": T0,
        "updated_at": T0,
    }


def new_customer() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


async def all_pages(http: httpx.AsyncClient, path: str, **params: Any) -> list[list[Any]]:
    """Follow next_cursor to the end; the items of each page."""
    pages: list[list[Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == problems.PROBLEM_JSON
    assert "x-read-position" in response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# ---- lists -----------------------------------------------------------------------------------


async def seed_orders(db: Db, customer: str) -> list[dict[str, Any]]:
    """25 orders, newest first as the API must answer; pairs share a placed_at so the _id
    tie-break matters, and a neighbour's orders are interleaved."""
    statuses = ["placed", "paid", "shipped", "cancelled"]
    documents = [
        order_document(customer, T0 + timedelta(minutes=i // 2), statuses[i % 4]) for i in range(25)
    ]
    others = [order_document(new_customer(), T0 + timedelta(minutes=i)) for i in range(5)]
    await db["orders"].insert_many([*documents, *others])
    return sorted(documents, key=lambda d: (d["placed_at"], d["_id"]), reverse=True)


async def test_a_customers_orders_come_newest_first_in_keyset_pages(
    db: Db, http: httpx.AsyncClient
) -> None:
    customer = new_customer()
    expected = await seed_orders(db, customer)
    pages = await all_pages(http, f"/customers/{customer}/orders", limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    ids = [item["order_id"] for page in pages for item in page]
    assert ids == [d["order_id"] for d in expected]


async def test_a_status_filter_pages_only_that_status(db: Db, http: httpx.AsyncClient) -> None:
    customer = new_customer()
    expected = [d for d in await seed_orders(db, customer) if d["status"] == "placed"]
    pages = await all_pages(http, f"/customers/{customer}/orders", limit=3, status="placed")
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [i["order_id"] for page in pages for i in page] == [d["order_id"] for d in expected]
    assert {i["status"] for page in pages for i in page} == {"placed"}


async def test_the_default_page_size_is_20_and_an_unknown_customer_has_no_orders(
    db: Db, http: httpx.AsyncClient
) -> None:
    customer = new_customer()
    await seed_orders(db, customer)
    first = (await http.get(f"/customers/{customer}/orders")).json()
    assert len(first["items"]) == 20
    assert first["next_cursor"] is not None
    empty = await http.get(f"/customers/{new_customer()}/orders")
    assert empty.status_code == 200
    assert empty.json() == {"items": [], "next_cursor": None}


async def test_products_are_paged_by_sku(db: Db, http: httpx.AsyncClient) -> None:
    skus = [f"SKU-{n:03d}" for n in range(25)]
    await db["products"].insert_many([product_document(sku) for sku in reversed(skus)])
    pages = await all_pages(http, "/products", limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [item["sku"] for page in pages for item in page] == skus


async def test_top_products_by_units_sold_then_id(db: Db, http: httpx.AsyncClient) -> None:
    documents = [
        product_document(f"T-{n}", units_sold) for n, units_sold in enumerate([5, 9, 5, 0])
    ]
    await db["products"].insert_many(documents)
    expected = sorted(documents, key=lambda d: (-d["units_sold"], d["_id"]))
    response = await http.get("/reports/top-products", params={"limit": 3})
    assert response.status_code == 200
    body = response.json()
    assert [i["product_id"] for i in body["items"]] == [d["_id"] for d in expected[:3]]
    assert body["next_cursor"] is None
    everything = (await http.get("/reports/top-products")).json()["items"]
    assert len(everything) == 4


# ---- single documents ------------------------------------------------------------------------


async def test_an_order_reads_with_the_command_api_names_and_no_mongo_internals(
    db: Db, http: httpx.AsyncClient
) -> None:
    document = order_document(new_customer(), T0 + timedelta(milliseconds=123), "paid", 2)
    await db["orders"].insert_one(document)
    response = await http.get(f"/orders/{document['order_id'].upper()}")
    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    assert response.headers["x-read-position"] == "5"
    body = response.json()
    assert "_id" not in body
    assert "position" not in body
    assert body["placed_at"] == "2026-11-29T12:00:00.123000Z"
    assert body["status_history"] == [
        {"status": "placed", "at": "2026-11-29T12:00:00.123000Z", "position": 3}
    ]
    expected = {k: v for k, v in document.items() if k not in {"_id", "position"}}
    assert {k: body[k] for k in ("order_id", "customer_id", "status", "total_cents", "lines")} == {
        k: expected[k] for k in ("order_id", "customer_id", "status", "total_cents", "lines")
    }


async def test_if_none_match_with_the_current_etag_is_304(db: Db, http: httpx.AsyncClient) -> None:
    document = order_document(new_customer(), T0, version=3)
    await db["orders"].insert_one(document)
    path = f"/orders/{document['order_id']}"
    for tag in ('"3"', 'W/"3"', '"1", "3"', "*"):
        response = await http.get(path, headers={"If-None-Match": tag})
        assert response.status_code == 304, tag
        assert response.headers["etag"] == '"3"'
        assert response.content == b""
    assert (await http.get(path, headers={"If-None-Match": '"2"'})).status_code == 200


async def test_a_product_and_a_customer_read(db: Db, http: httpx.AsyncClient) -> None:
    product = product_document("P-1", units_sold=4)
    await db["products"].insert_one(product)
    body = (await http.get(f"/products/{product['_id']}")).json()
    assert body["product_id"] == product["_id"]
    assert (body["price_cents"], body["stock"], body["units_sold"]) == (1250, 10, 4)
    assert body["created_at"] == "2026-11-29T12:00:00Z"
    customer = {"_id": "alice@example.com", "customer_id": "alice@example.com"}
    await db["customers"].insert_one(
        {
            **customer,
            "order_count": 2,
            "total_spent_cents": 1800,
            "last_order_at": T0,
            "position": 9,
        }
    )
    body = (await http.get("/customers/alice@example.com")).json()
    assert body == {
        "customer_id": "alice@example.com",
        "order_count": 2,
        "total_spent_cents": 1800,
        "last_order_at": "2026-11-29T12:00:00Z",
    }


@pytest.mark.parametrize(
    "path",
    [
        f"/products/{uuid.uuid4()}",
        f"/orders/{uuid.uuid4()}",
        "/customers/nobody-here",
        "/products/not-a-uuid",
        "/orders/%7B%22%24gt%22%3A%22%22%7D",
        "/customers/%7B%22%24gt%22%3A%22%22%7D",
        "/customers/%24where",
        "/customers/%7B%22%24gt%22%3A%22%22%7D/orders",
    ],
)
async def test_absent_or_impossible_ids_are_404_problems(
    http: httpx.AsyncClient, path: str
) -> None:
    body = assert_problem(await http.get(path), 404)
    assert body["type"] == "/problems/not-found"


# ---- read-your-writes ------------------------------------------------------------------------


async def test_after_waits_until_the_position_is_applied(db: Db, http: httpx.AsyncClient) -> None:
    document = order_document(new_customer(), T0)

    async def project_later() -> None:
        await asyncio.sleep(0.3)
        await db["orders"].insert_one(document)
        await set_position(db, 8)

    projector = asyncio.create_task(project_later())
    started = time.monotonic()
    response = await http.get(f"/orders/{document['order_id']}", params={"after": 8})
    await projector
    assert response.status_code == 200, response.text
    assert int(response.headers["x-read-position"]) >= 8
    assert time.monotonic() - started >= 0.25
    already = await http.get(f"/orders/{document['order_id']}", params={"after": 3})
    assert already.status_code == 200


async def test_after_that_never_comes_is_503_with_retry_after(serve: Serve) -> None:
    http = await serve(read_wait_max_s=0.2)
    started = time.monotonic()
    response = await http.get("/products", params={"after": 1000})
    body = assert_problem(response, 503)
    assert time.monotonic() - started < 2
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-read-position"] == "5"
    assert (body["after"], body["position"]) == (1000, 5)


async def test_every_answer_carries_the_read_position(db: Db, http: httpx.AsyncClient) -> None:
    await set_position(db, 11)
    await asyncio.sleep(0.05)  # past the waiter's poll interval, so it reads meta again
    for path in ("/products", "/reports/top-products", f"/customers/{new_customer()}/orders"):
        response = await http.get(path)
        assert response.status_code == 200
        assert response.headers["x-read-position"] == "11"
    assert (await http.get(f"/orders/{uuid.uuid4()}")).headers["x-read-position"] == "11"


# ---- hostile input and failures --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/products", {"limit": "-1"}, 422),
        ("/products", {"limit": str(10**12)}, 422),
        ("/products", {"limit": "abc"}, 422),
        ("/products", {"limit": "0"}, 422),
        ("/reports/top-products", {"limit": "101"}, 422),
        ("/products", {"cursor": "garbage"}, 400),
        ("/products", {"after": "-5"}, 422),
        ("/products", {"after": "1e3"}, 422),
        ("/customers/c1/orders", {"status[$ne]": "x"}, 422),
        ("/customers/c1/orders", {"status": '{"$ne": null}'}, 422),
        ("/customers/c1/orders", {"status": "PAID"}, 422),
        ("/customers/c1/orders", {"cursor": "garbage"}, 400),
        ("/customers/c1/orders", {"limit[$gt]": "0"}, 422),
        ("/orders/" + str(uuid.uuid4()), {"after": "x"}, 422),
        ("/customers/c1", {"after": "-1"}, 422),
    ],
)
async def test_hostile_parameters_are_4xx_problems(
    http: httpx.AsyncClient, path: str, params: dict[str, str], status: int
) -> None:
    body = assert_problem(await http.get(path, params=params), status)
    if status == 422:
        assert body["errors"][0]["parameter"] in {name for name in params}


async def test_a_products_cursor_is_refused_by_the_orders_list(
    db: Db, http: httpx.AsyncClient
) -> None:
    await db["products"].insert_many([product_document(f"C-{n}") for n in range(3)])
    cursor = (await http.get("/products", params={"limit": 1})).json()["next_cursor"]
    response = await http.get("/customers/c1/orders", params={"cursor": cursor})
    assert assert_problem(response, 400)["parameter"] == "cursor"


async def test_unknown_parameters_are_ignored(http: httpx.AsyncClient) -> None:
    response = await http.get("/products", params={"sort": "$natural", "filter": '{"a":1}'})
    assert response.status_code == 200


@pytest.fixture
async def unreachable_db() -> AsyncIterator[Db]:
    """A database on a port nobody listens on. Requested before `serve`, so it is closed only
    after the servers using it stopped (a client closed earlier was reopened by their reads)."""
    dead: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}", tz_aware=True, serverSelectionTimeoutMS=200
    )
    yield dead["shop"]
    await dead.close()
    gc.collect()


# PyMongo 4.20's async client leaves the socket of a refused connection unclosed; collect it
# here, inside this test, rather than let the warning land in whichever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.slow
async def test_an_unreachable_mongo_is_503_with_retry_after(
    unreachable_db: Db, db: Db, serve: Serve
) -> None:
    unreachable = ReadModel.fixed(unreachable_db)
    for waiter in (MongoPositionWaiter(unreachable, 0.02), _Applied(5)):
        http = await serve(
            model=unreachable, waiter=waiter, read_wait_max_s=0.5, read_timeout_s=0.5
        )
        for path in (f"/orders/{uuid.uuid4()}", "/products", "/customers/c1/orders"):
            response = await http.get(path)
            assert_problem(response, 503)
            assert response.headers["retry-after"] == "1"


@pytest.mark.slow
async def test_a_hung_mongo_is_503_within_the_read_timeout(serve: Serve) -> None:
    """A store that accepted the connection and stops answering (SIGSTOP) holds a read no
    longer than `read_timeout_s`; once it answers again, so do the reads."""
    with LocalStore() as store:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url, tz_aware=True)
        try:
            db = client["hung"]
            await set_position(db, 5)
            model = ReadModel.fixed(db)
            http = await serve(model=model, waiter=_Applied(5), read_timeout_s=0.5)
            order = f"/orders/{uuid.uuid4()}"
            assert (await http.get(order)).status_code == 404  # connected, and answering
            os.kill(store.pid, signal.SIGSTOP)
            try:
                await _until_stopped(store.pid)
                started = time.monotonic()
                response = await http.get(order)
                elapsed = time.monotonic() - started
            finally:
                os.kill(store.pid, signal.SIGCONT)
            assert_problem(response, 503)
            assert response.headers["retry-after"] == "1"
            assert 0.5 <= elapsed < 3, elapsed
            assert (await http.get(order)).status_code == 404
        finally:
            await client.close()


async def _until_stopped(pid: int, within_s: float = 5.0) -> None:
    """Until every thread of `pid` has taken its SIGSTOP (one in a system call, say an fsync,
    stops only when it returns): before that, a read may still be answered."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if all(state in ("T", "t") for state in _thread_states(pid)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within {within_s} s")


def _thread_states(pid: int) -> list[str]:
    """The scheduler state of each thread of `pid` (/proc: R, S, D, T, ...)."""
    tasks = Path(f"/proc/{pid}/task")
    return [
        (task / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
        for task in tasks.iterdir()
    ]


class _Applied:
    """An in-process waiter that is always at `current`: the projector's kind of Waiter."""

    def __init__(self, current: int) -> None:
        self.current = current

    async def wait_for(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109 - Waiter's
        return self.current >= position
