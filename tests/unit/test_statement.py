"""Statements built from named parts: each part numbers its own arguments."""

from __future__ import annotations

from app.commands.outbox import Statement


def test_parts_number_their_arguments_in_the_order_they_bind_them() -> None:
    sql = Statement()
    sql.part("a", f"UPDATE t SET x = {sql.bind(10)} WHERE id = {sql.bind('k')}")
    sql.part("b", f"DELETE FROM u WHERE id = {sql.bind('k')}")
    final = f"SELECT {sql.bind([1, 2])}::int[]"
    assert sql.text(final) == (
        "WITH a AS (UPDATE t SET x = $1 WHERE id = $2), b AS (DELETE FROM u WHERE id = $3)\n"
        "SELECT $4::int[]"
    )
    assert sql.arguments == [10, "k", "k", [1, 2]]


def test_a_statement_without_parts_is_its_final_query() -> None:
    sql = Statement()
    assert sql.text(f"SELECT {sql.bind(1)}") == "SELECT $1"
    assert sql.arguments == [1]
