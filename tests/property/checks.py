"""Database checks shared by the property tests: the judge is what Postgres holds."""

from __future__ import annotations

import os
from typing import Any

import psycopg

VALID_STATUSES = {"completed", "interrupted", "refused", "escalated"}
"""How a run with bad input may end: never ``failed``, never an exception."""

SIDE_EFFECT_TABLES = ("payments", "invoice_exceptions", "email_outbox", "vendor_bank_changes")


def rows(uri: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(uri) as conn:
        return list(conn.execute(query, params).fetchall())


def assert_no_partial_writes(uri: str) -> None:
    """Every side effect a tool wrote has its ledger row (same idempotency key)."""
    for table in SIDE_EFFECT_TABLES:
        orphans = rows(
            uri,
            f"SELECT idempotency_key FROM {table} t WHERE idempotency_key NOT LIKE 'seed:%%'"
            " AND NOT EXISTS (SELECT 1 FROM tool_calls c"
            " WHERE c.idempotency_key = t.idempotency_key)",
        )
        assert orphans == [], f"{table} rows without a tool_calls ledger row: {orphans}"


def db_examples(ci: int) -> int:
    """Examples for a property that does real Postgres work per example: ``ci`` under the
    ci profile (see conftest.py), ten times that under dev."""
    return ci * 10 if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else ci
