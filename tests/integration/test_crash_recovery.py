"""Exactly once under real crashes: SIGKILL the process at the worst moments, then recover.

The failpoints (`runtime.failpoints`) kill the child process with SIGKILL: no cleanup, no
flush, no final checkpoint. The database is the judge of what happened.
"""

from __future__ import annotations

import signal
from typing import Any

import psycopg
import pytest

from tests.cli import explain, payables, payables_fails, payables_json

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

APPROVE = ("--approve", "--reviewer", "rev-1", "--role", "approver")


def count(db_uri: str, sql: str, *params: Any) -> int:
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def killed(env: dict[str, str], point: str, *args: str) -> None:
    proc = payables({**env, "PAYABLES_FAILPOINTS": point}, *args)
    assert proc.returncode == -signal.SIGKILL, explain(proc)


def test_kill_after_the_payment_commits_then_continue_pays_once(
    cli_env: dict[str, str], db_uri: str
) -> None:
    view = payables_json(
        cli_env, "run", "Validate INV-1001 and pay it if it matches", "--user", "clerk-ana"
    )
    thread = view["thread_id"]
    assert view["status"] == "interrupted"

    killed(cli_env, "after_commit:schedule_payment", "resume", thread, *APPROVE)
    # The payment and its ledger row committed; the graph never checkpointed after them.
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1
    stalled = payables_json(cli_env, "show", thread)
    assert stalled["status"] == "running"
    assert stalled["pending_approvals"] == []
    assert "already resolved" in payables_fails(cli_env, "resume", thread, *APPROVE)

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert done["result"]["invoices"]["INV-1001"]["actions"] == ["staged", "payment_scheduled"]
    replays = [c for c in done["result"]["tool_calls"] if c["tool"] == "schedule_payment"]
    assert [c["replayed"] for c in replays] == [True]
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1
    assert (
        count(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE tool = 'schedule_payment' AND thread_id = %s",
            thread,
        )
        == 1
    )
    assert "already finished" in payables_fails(cli_env, "continue", thread)


def test_kill_in_the_verifier_then_continue_loses_nothing(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "crash-in-verifier"
    killed(
        cli_env, "verifier", "run", "Validate INV-1002", "--user", "clerk-ana", "--thread", thread
    )
    assert payables_json(cli_env, "show", thread)["status"] == "running"

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert done["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    assert (
        count(
            db_uri,
            "SELECT count(*) FROM invoices WHERE invoice_id = 'INV-1002' AND status = 'staged'",
        )
        == 1
    )
    assert (
        count(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE tool = 'stage_invoice' AND thread_id = %s",
            thread,
        )
        == 1
    )


def test_kill_while_waiting_for_approval_loses_nothing(
    cli_env: dict[str, str], db_uri: str
) -> None:
    """A process that dies at the interrupt leaves the approval pending, not lost."""
    thread = "crash-at-approval"
    killed(
        cli_env,
        "after_commit:stage_invoice",
        "run",
        "Pay INV-1001",
        "--user",
        "clerk-ana",
        "--thread",
        thread,
    )
    stalled = payables_json(cli_env, "show", thread)
    assert stalled["status"] == "running"
    paused = payables_json(cli_env, "continue", thread)
    assert paused["status"] == "interrupted"
    assert [a["action"] for a in paused["pending_approvals"]] == ["schedule_payment"]
    assert (
        count(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE tool = 'stage_invoice' AND thread_id = %s",
            thread,
        )
        == 1
    )
    done = payables_json(cli_env, "resume", thread, *APPROVE)
    assert done["status"] == "completed"
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1
