"""/metrics: names, labels and values of what an operator scrapes (real services)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.plumbing.settings import Settings
from tests.support.servers import Server, http_client

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def stack(pipeline_stack: Settings) -> Settings:
    return pipeline_stack


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_metrics_carry_latencies_commands_lag_and_the_pipeline(stack: Settings) -> None:
    server = Server(stack)
    await server.start()
    try:
        async with http_client(server.url, timeout=30) as http:
            product = await http.post(
                "/products", json={"sku": "M-1", "name": "mug", "price_cents": 5, "stock": 1}
            )
            product_id = product.json()["product_id"]
            lines = [{"product_id": product_id, "quantity": 1}]
            placed = await http.post("/orders", json={"customer_id": "c1", "lines": lines})
            assert placed.status_code == 201
            refused = await http.post("/orders", json={"customer_id": "c1", "lines": lines})
            assert refused.status_code == 409
            order_id, position = placed.json()["order_id"], placed.json()["position"]
            read = await http.get(f"/orders/{order_id}", params={"after": position})
            assert read.status_code == 200
            assert (await http.get("/no/such/route")).status_code == 404
            samples = _samples((await http.get("/metrics")).text)
    finally:
        await server.stop()

    def requests(route: str, status: str, method: str = "GET") -> float:
        labels = {"method": method, "route": route, "status": status}
        return _value(samples, "http_request_duration_seconds_count", **labels)

    assert requests("/orders/{order_id}", "200") == 1  # the template, never the raw path
    assert requests("/orders", "201", "POST") == 1
    assert requests("/orders", "409", "POST") == 1
    assert requests("unmatched", "404") == 1
    assert not any(order_id in str(labels) for _, labels in samples)
    assert _value(samples, "shop_commands_total", command="place_order", outcome="ok") == 1
    assert _value(samples, "shop_commands_total", command="place_order", outcome="refused") == 1
    assert _value(samples, "shop_commands_total", command="create_product", outcome="ok") == 1
    # three events (ProductCreated, OrderPlaced, StockReserved) went from commit to the store
    assert _value(samples, "shop_read_model_lag_seconds_count") >= 3
    assert _value(samples, "shop_read_model_lag_seconds_bucket", le="+Inf") >= 3
    assert _value(samples, "shop_event_log_position") == position
    assert _value(samples, "shop_read_model_position") >= position
    assert _value(samples, "shop_read_model_lag_events") == 0
    assert _value(samples, "shop_relay_published_total") >= 3
    assert _value(samples, "shop_relay_leader") == 1
    assert ("shop_relay_confirm_window_in_flight", frozenset()) in samples
    assert _value(samples, "shop_projector_batches_total") >= 1
    assert _value(samples, "shop_held_streams") == 0
    assert _value(samples, "shop_postgres_up") == 1
    assert _value(samples, "shop_db_pool_size") >= 1
    assert _value(samples, "shop_db_pool_max") == stack.db_pool_max
