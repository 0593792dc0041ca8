"""LOG_FORMAT=json: one JSON object per line with what an operator filters on."""

from __future__ import annotations

import json
import logging

import pytest

from app.plumbing.logs import CORRELATION_ID, JsonFormatter
from app.plumbing.settings import Settings, SettingsError


def _line(record: logging.LogRecord) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def _record(message: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app.projector", level, __file__, 1, message, (), None)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_a_line_has_level_logger_message_and_the_event_position() -> None:
    line = _line(_record("parked event 7", position=7, correlation_id="c-1"))
    assert line["level"] == "warning"
    assert line["logger"] == "app.projector"
    assert line["message"] == "parked event 7"
    assert line["position"] == 7
    assert line["correlation_id"] == "c-1"
    assert "trace_id" not in line  # no span: tracing is off
    assert str(line["at"]).endswith("+00:00")


def test_the_requests_correlation_id_comes_from_its_context() -> None:
    token = CORRELATION_ID.set("req-42")
    try:
        assert _line(_record("a command failed"))["correlation_id"] == "req-42"
    finally:
        CORRELATION_ID.reset(token)
    assert "correlation_id" not in _line(_record("outside any request"))


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", logging.ERROR)
        record.exc_info = __import__("sys").exc_info()
    line = _line(record)
    assert "ValueError: boom" in str(line["exception"])


def test_log_format_is_text_or_json() -> None:
    assert Settings.from_env({"LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "yaml"})
