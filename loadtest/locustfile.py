"""Locust load test: shoppers browse, order, pay, ship, cancel and read their own orders.

Each simulated shopper is a customer of its own. It remembers what every command answered
(status, version, position) and reads its orders back with `after=<position>`; a read that
does not reflect its own write (order missing, or an older version or status) is a failure:
read-your-writes is part of what is load tested. The catalogue is created at test start, so
it runs against an empty database:

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 5 -t 1m

Against an app with AUTH_MODE=jwt, set LOCUST_AUTH_SECRET to its AUTH_JWT_SECRET (and
LOCUST_AUTH_ISSUER, LOCUST_AUTH_AUDIENCE to its AUTH_JWT_ISSUER, AUTH_JWT_AUDIENCE when set):
each shopper then sends a customer token of its own, and the catalogue and shipping (the shop's
back office) an admin token.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner

CATALOGUE_SIZE = 30
_STOCK = 10**9  # enough that no order of a run is refused for stock
_catalogue_position = 0  # position of the last product created at test start
_TOKEN_TTL_S = 24 * 3600  # longer than any run


def bearer(sub: str, role: str) -> dict[str, str]:
    """Authorization for `sub` as `role` when LOCUST_AUTH_SECRET is set, else no header."""
    secret = os.environ.get("LOCUST_AUTH_SECRET")
    if not secret:
        return {}
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "role": role, "iat": now, "exp": now + _TOKEN_TTL_S}
    for claim, variable in (("iss", "LOCUST_AUTH_ISSUER"), ("aud", "LOCUST_AUTH_AUDIENCE")):
        if os.environ.get(variable):
            claims[claim] = os.environ[variable]
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


def create_catalogue(environment: Environment, **_: Any) -> None:
    """Create the products shoppers will find (on each worker, not on a master)."""
    global _catalogue_position  # set once per test, read by every user
    if isinstance(environment.runner, MasterRunner) or environment.host is None:
        return
    run = uuid.uuid4().hex[:8]
    for i in range(CATALOGUE_SIZE):
        body = {"sku": f"LOC-{run}-{i}", "name": f"Locust item {i}",
                "price_cents": 199 + 100 * i, "stock": _STOCK}  # fmt: skip
        request = urllib.request.Request(  # noqa: S310 - the --host the user gave
            f"{environment.host.rstrip('/')}/products",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **bearer("locust-admin", "admin")},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            _catalogue_position = max(_catalogue_position, json.load(answer)["position"])


events.test_start.add_listener(create_catalogue)  # type: ignore[no-untyped-call]  # untyped in locust


@dataclass
class KnownOrder:
    """What the last command on an order answered."""

    status: str
    version: int
    position: int


_NEXT: dict[str, tuple[str, ...]] = {"placed": ("pay", "cancel"), "paid": ("ship", "cancel")}


class Shopper(FastHttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.rng = random.Random()  # noqa: S311 - a load shape, not a secret
        self.customer_id = f"locust-{uuid.uuid4().hex[:12]}"
        self.auth = bearer(self.customer_id, "customer")
        self.admin = bearer("locust-admin", "admin")  # ships: the back office, not the shopper
        self.products: list[str] = []
        self.orders: dict[str, KnownOrder] = {}
        self.position = 0  # the newest position this shopper caused
        self.browse_products(after=_catalogue_position)

    # ---- browsing ---------------------------------------------------------------------------

    @task(4)
    def browse(self) -> None:
        if not self.products or self.rng.random() < 0.3:
            self.browse_products(after=0)
            return
        product_id = self.rng.choice(self.products)
        self.client.get(f"/products/{product_id}", name="/products/[id]")

    def browse_products(self, after: int) -> None:
        with self.client.get(
            f"/products?limit=50&after={after}", name="/products", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text}")
                return
            seen = [p["product_id"] for p in response.json()["items"] if p["stock"] > 100]
            self.products = list(dict.fromkeys([*self.products, *seen]))

    # ---- commands ---------------------------------------------------------------------------

    @task(3)
    def place_order(self) -> None:
        if not self.products:
            return
        picked = self.rng.sample(self.products, min(len(self.products), self.rng.randint(1, 3)))
        lines = [{"product_id": p, "quantity": self.rng.randint(1, 3)} for p in picked]
        body = {"customer_id": self.customer_id, "lines": lines}
        with self.client.post(
            "/orders", json=body, headers=self.auth, catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"{response.status_code}: {response.text}")
                return
            self._remember(response.json())

    @task(2)
    def move_order(self) -> None:
        movable = [(i, o) for i, o in self.orders.items() if o.status in _NEXT]
        if not movable:
            return
        order_id, order = self.rng.choice(movable)
        action = self.rng.choices(_NEXT[order.status], weights=(4, 1))[0]
        with self.client.post(
            f"/orders/{order_id}/{action}",
            headers={
                "If-Match": f'"{order.version}"',
                **(self.admin if action == "ship" else self.auth),
            },
            name=f"/orders/[id]/{action}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text}")
                return
            self._remember(response.json())

    def _remember(self, answer: dict[str, Any]) -> None:
        self.orders[answer["order_id"]] = KnownOrder(
            answer["status"], answer["version"], answer["position"]
        )
        self.position = max(self.position, answer["position"])

    # ---- reading own writes -----------------------------------------------------------------

    @task(3)
    def read_own_order(self) -> None:
        if not self.orders:
            return
        order_id, known = self.rng.choice(list(self.orders.items()))
        with self.client.get(
            f"/orders/{order_id}?after={known.position}",
            name="/orders/[id]?after",
            headers=self.auth,
            catch_response=True,
        ) as response:
            if response.status_code == 404:
                response.failure(f"read-your-writes violated: order {order_id} not found")
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text}")
            else:
                _check(response, order_id, known, response.json())

    @task(1)
    def read_own_orders(self) -> None:
        if not self.orders:
            return
        with self.client.get(
            f"/customers/{self.customer_id}/orders?limit=100&after={self.position}",
            name="/customers/[id]/orders?after",
            headers=self.auth,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text}")
                return
            listed = {o["order_id"]: o for o in response.json()["items"]}
            newest = list(self.orders)[-1]  # dicts keep insertion order: the last placed
            if len(self.orders) <= 100 and newest not in listed:
                response.failure(f"read-your-writes violated: order {newest} not listed")
                return
            for order_id, document in listed.items():
                if order_id in self.orders:
                    _check(response, order_id, self.orders[order_id], document)


def _check(response: Any, order_id: str, known: KnownOrder, document: dict[str, Any]) -> None:
    """Fail `response` when `document` is older than the command's answer `known`."""
    older = document["version"] < known.version
    if older or (document["version"] == known.version and document["status"] != known.status):
        response.failure(
            f"read-your-writes violated: order {order_id} at version {document['version']}"
            f" ({document['status']}), the command answered {known.version} ({known.status})"
        )
