"""One trace from POST to projection: request → event metadata → AMQP headers → projector."""

from __future__ import annotations

from dataclasses import replace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.plumbing.settings import Settings
from tests.support.servers import Server, http_client
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="session")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once) exporting to memory, as the SDK would to OTLP."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    return spans


@pytest.fixture
def stack(pipeline_stack: Settings) -> Settings:
    return pipeline_stack


async def test_one_trace_spans_the_command_the_relay_and_the_projection(
    stack: Settings, exporter: InMemorySpanExporter
) -> None:
    server = Server(replace(stack, tracing=True))
    await server.start()
    try:
        async with http_client(server.url, timeout=30) as http:
            product = await http.post(
                "/products", json={"sku": "T-1", "name": "mug", "price_cents": 5, "stock": 3}
            )
            lines = [{"product_id": product.json()["product_id"], "quantity": 1}]
            placed = await http.post(
                "/orders",
                json={"customer_id": "c1", "lines": lines},
                headers={"traceparent": INCOMING},
            )
            assert placed.status_code == 201
            read = await http.get(
                f"/orders/{placed.json()['order_id']}", params={"after": placed.json()["position"]}
            )
            assert read.status_code == 200

            def ours() -> dict[str, SpanKind]:
                return {
                    s.name: s.kind
                    for s in exporter.get_finished_spans()
                    if format(s.context.trace_id, "032x") == TRACE_ID
                }

            await eventually(lambda: len(ours()) >= 5, what="the spans of the traced command")
    finally:
        await server.stop()
    assert ours() == {
        "POST /orders": SpanKind.SERVER,  # continues the incoming traceparent
        "publish OrderPlaced": SpanKind.PRODUCER,
        "publish StockReserved": SpanKind.PRODUCER,
        "project OrderPlaced": SpanKind.CONSUMER,
        "project StockReserved": SpanKind.CONSUMER,
    }
    server_span = next(s for s in exporter.get_finished_spans() if s.name == "POST /orders")
    assert server_span.parent is not None
    assert format(server_span.parent.span_id, "016x") == "00f067aa0ba902b7"
