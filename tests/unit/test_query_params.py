"""Query parameters, path ids and cursors of the read side: typed, bounded, tamper-evident."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from starlette.datastructures import QueryParams

from app.plumbing.problems import InvalidRequest, Problem, ServiceUnavailable
from app.queries.cursors import (
    InvalidCursor,
    OrderCursor,
    ProductCursor,
    decode_cursor,
    encode_cursor,
)
from app.queries.params import NotFound, QueryArgs, customer_id, uuid_id
from app.queries.waiting import Waiter, wait_until_applied


def args(query: str, *known: str) -> QueryArgs:
    return QueryArgs(QueryParams(query), known or ("limit", "cursor", "status"))


def parameter_of(problem: Problem) -> str:
    errors = problem.extra["errors"]
    assert len(errors) == 1
    name: str = errors[0]["parameter"]
    return name


# ---- limit, after, status --------------------------------------------------------------------


def test_limit_defaults_and_accepts_its_range() -> None:
    assert args("").limit(default=20) == 20
    assert args("limit=1").limit(default=20) == 1
    assert args("limit=100").limit(default=20) == 100


@pytest.mark.parametrize(
    "raw", ["0", "-1", "101", "1000000000000", "abc", "1.5", "", " 5", "5\n", "+5", "٣", "9" * 40]
)
def test_limit_outside_its_range_or_not_a_number_is_422_naming_it(raw: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        args(urlencode({"limit": raw})).limit(default=20)
    assert caught.value.status == 422
    assert parameter_of(caught.value) == "limit"


def test_after_is_a_non_negative_bigint() -> None:
    assert args("").after() == 0
    assert args("after=0").after() == 0
    assert args(f"after={2**63 - 1}").after() == 2**63 - 1
    for raw in ("-5", str(2**63), "x", "1e3"):
        with pytest.raises(InvalidRequest) as caught:
            args(f"after={raw}").after()
        assert parameter_of(caught.value) == "after"


def test_status_is_one_of_the_lifecycle_states() -> None:
    assert args("").status() is None
    for status in ("placed", "paid", "shipped", "cancelled"):
        assert args(f"status={status}").status() == status
    for raw in ("PAID", "$ne", "", "paid "):
        with pytest.raises(InvalidRequest):
            args(urlencode({"status": raw})).status()


def test_a_repeated_parameter_is_refused_rather_than_guessed() -> None:
    with pytest.raises(InvalidRequest) as caught:
        args("limit=5&limit=50").limit(default=20)
    assert parameter_of(caught.value) == "limit"


def test_unknown_parameters_are_ignored_but_bracket_forms_of_known_ones_are_refused() -> None:
    assert args("foo=1&bar[$gt]=2&limit=3").limit(default=20) == 3
    for query in ("status[$ne]=x", "limit[$gt]=1", "after[0]=1", "cursor[]=a"):
        with pytest.raises(InvalidRequest) as caught:
            args(query)
        assert parameter_of(caught.value) == query.split("=")[0]


# ---- path ids --------------------------------------------------------------------------------


def test_uuid_ids_are_canonicalised_and_anything_else_is_404() -> None:
    value = uuid.uuid4()
    assert uuid_id(str(value).upper(), "order") == str(value)
    for raw in ('{"$gt":""}', "not-a-uuid", value.hex, f"{{{value}}}", f"{value}\n", ""):
        with pytest.raises(NotFound):
            uuid_id(raw, "order")


def test_customer_ids_follow_the_command_api_and_anything_else_is_404() -> None:
    for good in ("c1", "alice@example.com", "tenant:42", "a" * 64, "A.b_c-d"):
        assert customer_id(good) == good
    for bad in ('{"$gt":""}', "", "-x", "a" * 65, "a b", "x\n", "$where", "ü"):
        with pytest.raises(NotFound):
            customer_id(bad)


# ---- cursors ---------------------------------------------------------------------------------


def test_cursors_round_trip() -> None:
    order = OrderCursor(
        placed_at=datetime(2026, 11, 29, 12, 0, 0, 123000, tzinfo=UTC), order_id=str(uuid.uuid4())
    )
    product = ProductCursor(sku="SKU-é/1")
    assert decode_cursor(encode_cursor(order), OrderCursor) == order
    assert decode_cursor(encode_cursor(product), ProductCursor) == product
    text = encode_cursor(order)
    assert not set(text) & set("=+/")  # safe in a query string as is


def test_a_cursor_of_another_list_is_refused() -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(encode_cursor(ProductCursor(sku="a")), OrderCursor)


def _flip(text: str, index: int) -> str:
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


def test_every_single_character_edit_of_a_cursor_is_detected() -> None:
    text = encode_cursor(
        OrderCursor(placed_at=datetime(2026, 1, 1, tzinfo=UTC), order_id=str(uuid.uuid4()))
    )
    for index in range(len(text)):
        with pytest.raises(InvalidCursor):
            decode_cursor(_flip(text, index), OrderCursor)


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "",
        "!!!!",
        "a" * 1000,
        "eyJ0IjoxfQ",  # base64url of JSON, but no check
        base64.urlsafe_b64encode(b'{"$gt": ""}').decode(),
        "ünïcode",
    ],
)
def test_garbage_cursors_are_400(text: str) -> None:
    with pytest.raises(InvalidCursor) as caught:
        decode_cursor(text, OrderCursor)
    assert caught.value.status == 400
    assert caught.value.extra["parameter"] == "cursor"


def test_a_truncated_or_padded_cursor_is_refused() -> None:
    text = encode_cursor(ProductCursor(sku="sku-1"))
    for broken in (text[:-1], text[:-4], text + "==", text + "A", " " + text):
        with pytest.raises(InvalidCursor):
            decode_cursor(broken, ProductCursor)


# ---- waiting ---------------------------------------------------------------------------------


class SteppingWaiter:
    """An in-process waiter like the projector's: a plain `current` and a condition."""

    def __init__(self) -> None:
        self.current = 0
        self._changed = asyncio.Condition()

    async def advance(self, position: int) -> None:
        async with self._changed:
            self.current = position
            self._changed.notify_all()

    async def wait_for(self, position: int, timeout: float) -> bool:  # noqa: ASYNC109 - Waiter's
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: self.current >= position)
            except TimeoutError:
                return False
        return True


async def test_waiting_answers_the_applied_position_once_it_is_reached() -> None:
    stepping = SteppingWaiter()
    waiter: Waiter = stepping  # the protocol fits a plain `current` attribute
    assert await wait_until_applied(waiter, 0, 0.01) == 0
    task = asyncio.create_task(wait_until_applied(waiter, 3, 5))
    await stepping.advance(2)
    await stepping.advance(4)
    assert await task == 4


async def test_waiting_past_the_bound_is_503_with_retry_after_and_the_position() -> None:
    stepping = SteppingWaiter()
    await stepping.advance(7)
    with pytest.raises(ServiceUnavailable) as caught:
        await wait_until_applied(stepping, 8, 0.05)
    assert caught.value.headers == {"Retry-After": "1", "X-Read-Position": "7"}
    assert caught.value.extra == {"after": 8, "position": 7}


@pytest.mark.parametrize("offset_h", [1, -14])
def test_a_re_signed_cursor_outside_bson_dates_is_refused(offset_h: int) -> None:
    # the check key is no secret: a client can sign any cursor, so its values are checked too
    edge = datetime(1, 1, 1) if offset_h > 0 else datetime(9999, 12, 31, 23, 59, 59)
    forged = encode_cursor(
        OrderCursor(
            placed_at=edge.replace(tzinfo=timezone(timedelta(hours=offset_h))), order_id="x"
        )
    )
    with pytest.raises(InvalidCursor):
        decode_cursor(forged, OrderCursor)
