"""Logging: text for local runs, or one JSON object per line (`LOG_FORMAT=json`).

A JSON line has `at`, `level`, `logger`, `message`, and, where one applies, `correlation_id`
(the command's, set for the request that runs it), `trace_id` (of the current span, when
tracing is on) and `position` (an event's log position, passed as `extra={"position": p}`),
plus `exception` with the traceback.
"""

from __future__ import annotations

import contextvars
import logging
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

CORRELATION_ID: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar(
    "correlation_id", default=None
)
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        correlation_id = getattr(record, "correlation_id", None) or CORRELATION_ID.get()
        if correlation_id is not None:
            line["correlation_id"] = correlation_id
        trace_id = _trace_id()
        if trace_id is not None:
            line["trace_id"] = trace_id
        position = getattr(record, "position", None)
        if position is not None:
            line["position"] = position
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


def _trace_id() -> str | None:
    from opentelemetry import trace  # the API is a dependency; it is a no-op without the SDK

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def configure(level: str, log_format: str) -> None:
    """Set up the root logger (every logger, uvicorn's included, propagates to it)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
