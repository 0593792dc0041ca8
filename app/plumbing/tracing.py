"""W3C trace context across the outbox hop: the command's request, the event's metadata, the
AMQP message headers, the projection — one trace from POST to the read model.

The OpenTelemetry API is a dependency; the SDK and the OTLP exporter are the optional extra
`otel` (`pip install '.[otel]'`), configured only by the standard OTEL_* variables
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, …). Tracing is on when one of them is set
(`Settings.tracing`); off, nothing is installed, no span is ever current, and the helpers
below return at their first check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

TRACEPARENT: Final = "traceparent"


def setup() -> bool:
    """Install the SDK's tracer provider with the OTLP exporter; False (with one warning line)
    when the `otel` extra is not installed."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* is set but the SDK is missing: pip install '.[otel]'; no traces")
        return False
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def current_traceparent() -> str | None:
    """The `traceparent` of the current span, to store with an event (None without one)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


@contextmanager
def span_from(traceparent: str | None, name: str, kind: SpanKind) -> Iterator[Span | None]:
    """A span that continues the trace of `traceparent`; nothing when there is none."""
    if traceparent is None:
        yield None
        return
    parent = propagate.extract({TRACEPARENT: traceparent})
    with trace.get_tracer(__name__).start_as_current_span(name, parent, kind) as span:
        yield span


def start_span(traceparent: str, name: str, kind: SpanKind) -> Span:
    """A span in the trace of `traceparent`, started now, not made current; end it yourself."""
    parent = propagate.extract({TRACEPARENT: traceparent})
    return trace.get_tracer(__name__).start_span(name, parent, kind)


def headers_context(headers: list[tuple[bytes, bytes]]) -> context.Context:
    """The trace context an HTTP request brought (`traceparent`, `tracestate`)."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    return propagate.extract(carrier)


class TraceRequests:
    """ASGI middleware: a server span per HTTP request, continuing an incoming `traceparent`,
    named by the route template. Installed only when tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        parent = headers_context(scope["headers"])
        tracer = trace.get_tracer(__name__)
        with tracer.start_as_current_span(scope["method"], parent, SpanKind.SERVER) as span:

            async def send_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            try:
                await self._app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attribute("http.route", route)
