"""Scenario state assertions compare what they say: literal substrings, numbers as numbers.

A `contains` check holds only for the text it names, and a numeric `ne` is not fooled by
how Postgres spells a NUMERIC(12,2); either slip would let a gate pass on the wrong state.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from evals.scenario import Match, StateAssertion
from evals.scoring import evaluate_assertion
from state.db import CONNECTION_KWARGS

pytestmark = pytest.mark.integration


async def test_contains_treats_percent_and_underscore_as_plain_characters(db_uri: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        await conn.execute(
            "INSERT INTO email_outbox (vendor_id, to_address, subject, body, idempotency_key)"
            " VALUES ('V-001', 'ap@example.com', 'Remittance', 'already-paid, 100% sure', 'k1')"
        )

        async def count(match: Match) -> int:
            assertion = StateAssertion.model_validate(
                {"table": "email_outbox", "where": {"body": match}}
            )
            return (await evaluate_assertion(conn, assertion)).rows

        # "already_paid" must not match "already-paid": `_` is a LIKE wildcard.
        assert await count(Match(contains="already_paid")) == 0
        assert await count(Match(contains="already-paid")) == 1
        assert await count(Match(contains="100% sure")) == 1
        assert await count(Match(contains="100%sure")) == 0
        assert await count(Match(not_contains="already_paid")) == 1


async def test_ne_given_a_number_compares_numbers(db_uri: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        cur = await conn.execute(
            "UPDATE invoices SET subtotal = 3000, tax = total - 3000"
            " WHERE invoice_id = 'INV-1001' RETURNING subtotal"
        )
        row = await cur.fetchone()
        assert row is not None and str(row["subtotal"]) == "3000.00"

        async def count(ne: Any) -> int:
            where = {"invoice_id": "INV-1001", "subtotal": Match(ne=ne)}
            assertion = StateAssertion.model_validate({"table": "invoices", "where": where})
            return (await evaluate_assertion(conn, assertion)).rows

        # 3000 is not "different" from NUMERIC(12,2)'s "3000.00".
        assert await count(3000) == 0
        assert await count(3000.0) == 0
        assert await count(3001) == 1
        assert await count("3000.00") == 0
        assert await count("3000") == 1  # a string compares as text, as documented
