"""Which failures the projector retries as transient and which hold a stream."""

from __future__ import annotations

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ClientBulkWriteException,
    DocumentTooLarge,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from app.projector import readmodel
from app.projector.poison import is_transient
from app.projector.readmodel import InvalidEventData, ReadModelLost


@pytest.mark.parametrize(
    "error",
    [
        AutoReconnect("primary went away"),
        NetworkTimeout("timed out"),
        ServerSelectionTimeoutError("no server"),
        ExecutionTimeout("operation exceeded time limit", code=50),
        OperationFailure("interrupted at shutdown", code=11600),
        BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}),
        ClientBulkWriteException({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}, False),
        ClientBulkWriteException({"writeErrors": [{"idx": 0, "code": 91}]}, False),
        ReadModelLost("meta is gone"),
        OSError("connection refused"),
    ],
)
def test_outages_and_timeouts_are_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        OverflowError("MongoDB can only handle up to 8-byte ints"),
        DocumentTooLarge("too large"),
        OperationFailure("bad update", code=2),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}], "writeConcernErrors": []}),
        ClientBulkWriteException({"writeErrors": [{"idx": 2, "code": 11000}]}, False),
        KeyError("a projection bug"),
        InvalidEventData("does not decode"),
    ],
)
def test_what_retrying_cannot_fix_is_not(error: BaseException) -> None:
    assert not is_transient(error)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (AutoReconnect("connection closed"), True),
        ({"ok": 0, "code": 91, "errmsg": "shutting down"}, True),
        ({"ok": 0, "code": 2, "errmsg": "bad value"}, False),
        ({"ok": 0, "errmsg": "no code"}, False),
    ],
)
def test_a_client_bulk_writes_top_level_error_is_judged_as_a_collections_would_be(
    error: object, transient: bool
) -> None:
    """A client-level bulkWrite wraps a connection failure or a refused command in a
    ClientBulkWriteException; the projector raises what a collection's bulk write would."""
    assert is_transient(readmodel._unwrapped(error)) is transient
