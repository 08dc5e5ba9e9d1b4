"""Two reviewers' answers to one approval cross a crash: exactly one is recorded and acted on.

The first answer commits its decisions and the process dies before the approval step is
checkpointed, so the thread still shows the interrupt. A second reviewer then answers it
differently. Before, the approval node re-ran, found the first answer, acted on it and
dropped the second one without a word: a reject exited 0 over a payment it never stopped.
"""

from __future__ import annotations

import signal
from typing import Any

import psycopg
import pytest

from tests.cli import explain, payables, payables_fails, payables_json

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def rows(db_uri: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_uri) as conn:
        return conn.execute(sql, params).fetchall()


DECISIONS = "SELECT reviewer_id, decision FROM approval_decisions WHERE thread_id = %s"
PAYMENTS = "SELECT payment_id FROM payments WHERE invoice_id = 'INV-1001'"


@pytest.mark.parametrize(
    ("first", "second", "paid"),
    [
        (("--approve",), ("--reject", "wrong vendor"), 1),
        (("--reject", "wrong vendor"), ("--approve",), 0),
    ],
    ids=["approve-then-reject", "reject-then-approve"],
)
def test_a_second_answer_after_a_committed_one_is_refused_and_the_first_stands(
    cli_env: dict[str, str],
    db_uri: str,
    first: tuple[str, ...],
    second: tuple[str, ...],
    paid: int,
) -> None:
    thread = f"crossed-{first[0].strip('-')}"
    view = payables_json(cli_env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread)
    assert view["status"] == "interrupted"
    proc = payables(
        {**cli_env, "PAYABLES_FAILPOINTS": "after:approval"},
        *("resume", thread, *first, "--reviewer", "rev-1", "--role", "approver"),
    )
    assert proc.returncode == -signal.SIGKILL, explain(proc)
    decided = [("rev-1", first[0].strip("-"))]
    assert rows(db_uri, DECISIONS, thread) == decided

    refused = payables_fails(
        cli_env, "resume", thread, *second, "--reviewer", "rev-2", "--role", "approver"
    )
    refused = " ".join(refused.split())
    assert "already answered" in refused and "not recorded" in refused, refused
    assert f"payables continue {thread}" in refused
    assert rows(db_uri, DECISIONS, thread) == decided
    assert rows(db_uri, PAYMENTS) == []

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert rows(db_uri, DECISIONS, thread) == decided
    assert len(rows(db_uri, PAYMENTS)) == paid
    if paid == 0:
        assert done["result"]["outcome"] == "rejected_by_reviewer"
        assert "rev-1" in done["reason"]
    # Once finished, further answers are refused as resolved, and nothing changes.
    assert "already resolved" in payables_fails(
        cli_env, "resume", thread, *second, "--reviewer", "rev-3", "--role", "approver"
    )
    assert rows(db_uri, DECISIONS, thread) == decided
    assert len(rows(db_uri, PAYMENTS)) == paid
