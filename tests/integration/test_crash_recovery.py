"""Exactly once under real crashes: SIGKILL the process at the worst moments, then recover.

The failpoints (`runtime.failpoints`) kill the child process with SIGKILL: no cleanup, no
flush, no final checkpoint. The database is the judge of what happened.
"""

from __future__ import annotations

import re
import signal
from typing import Any

import psycopg
import pytest

from tests.cli import explain, killed, payables, payables_fails, payables_json

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

APPROVE = ("--approve", "--reviewer", "rev-1", "--role", "approver")


def count(db_uri: str, sql: str, *params: Any) -> int:
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


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
    # The approval was answered: a second answer is refused and pointed to `continue`.
    refused = " ".join(payables_fails(cli_env, "resume", thread, *APPROVE).split())
    assert "it was answered" in refused and f"payables continue {thread}" in refused

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


def test_a_run_killed_before_its_first_step_named_its_thread_so_continue_finishes_it(
    cli_env: dict[str, str], db_uri: str
) -> None:
    """The run index row is written by the first step: a run killed before it is on no
    list, and without --thread its id was never shown. It is now, before anything runs."""
    proc = payables(
        {**cli_env, "PAYABLES_FAILPOINTS": "before:router"},
        "run", "Validate INV-1003", "--user", "clerk-ana",
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, explain(proc)
    [thread] = re.findall(r"^thread ([0-9a-f-]{36})$", proc.stderr, re.MULTILINE)
    assert count(db_uri, "SELECT count(*) FROM runs WHERE thread_id = %s", thread) == 0
    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert done["result"]["invoices"]["INV-1003"]["actions"] == ["staged"]


def test_kill_before_the_approval_request_loses_nothing(
    cli_env: dict[str, str], db_uri: str
) -> None:
    """A run that dies on its way to the approval asks for it once `continue` finishes it."""
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


@pytest.mark.parametrize(
    ("point", "recorded"),
    [
        # The reviewer's answer reached the approval step; nothing is recorded yet.
        ("before:approval", 0),
        # The decision is in approval_decisions; the step's checkpoint is not written.
        ("after:approval", 1),
    ],
)
def test_kill_while_the_approval_is_being_answered_loses_nothing(
    cli_env: dict[str, str], db_uri: str, point: str, recorded: int
) -> None:
    """The approval wait itself has no process: `run` exits at the interrupt and the wait
    lives in Postgres. What can die is the process answering it; the approval stays
    pending until an answer is checkpointed, and answering again neither double-counts
    the reviewer nor pays twice."""
    thread = f"crash-answering-{point.replace(':', '-')}"
    view = payables_json(cli_env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread)
    asked = [a["interrupt_id"] for a in view["pending_approvals"]]
    assert len(asked) == 1

    killed(cli_env, point, "resume", thread, *APPROVE)
    decisions = "SELECT count(*) FROM approval_decisions WHERE thread_id = %s"
    assert count(db_uri, decisions, thread) == recorded
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 0
    if not recorded:  # an answer that committed is finished by `continue` too (test_answer_races)
        assert "waiting for approval" in payables_fails(cli_env, "continue", thread)

    # The same answer again: taken as the one recorded, not counted twice.
    done = payables_json(cli_env, "resume", thread, *APPROVE)
    assert done["status"] == "completed", done["reason"]
    assert count(db_uri, decisions, thread) == 1
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1


def dead_letters(db_uri: str, thread: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_uri, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT * FROM dead_letters WHERE thread_id = %s ORDER BY dead_letter_id", (thread,)
        ).fetchall()


def test_an_unexpected_failure_becomes_a_dead_letter_and_continue_finishes_the_run(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "bug-in-verifier"
    proc = payables(
        {**cli_env, "PAYABLES_FAILPOINTS": "raise:verifier"},
        "run",
        "Validate INV-1002",
        "--user",
        "clerk-ana",
        "--thread",
        thread,
    )
    assert proc.returncode == 1, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    [letter] = dead_letters(db_uri, thread)
    assert f"dead letter {letter['dead_letter_id']}" in proc.stderr, explain(proc)
    assert f"deadletters replay {letter['dead_letter_id']}" in proc.stderr, explain(proc)
    assert letter["tenant"] == "default"
    assert letter["action"] == "start"
    assert letter["step"] == "verifier"
    assert letter["error_class"] == "runtime.failpoints.FailpointError"
    assert "failpoint verifier raised" in letter["message"]
    assert letter["attempts"] == 1  # a bug is not retried
    assert letter["status"] == "open"
    payload = letter["payload"]
    assert payload["action"] == "start"
    assert payload["input"]["request"] == "Validate INV-1002"
    assert payload["input"]["user"] == "clerk-ana"
    assert payload["next"] == ["verifier"]
    assert payload["context"]["tenant"] == "default"
    history = payables_json(cli_env, "show", thread, "--history")
    assert history["status"] == "failed"
    assert payload["checkpoint_id"] == history["history"][-1]["checkpoint_id"]

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert done["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]


def test_transient_database_errors_are_retried_and_a_step_that_runs_out_is_a_dead_letter(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "flaky-database"
    # The planner loses its connection twice and succeeds on its third attempt; the
    # verifier loses it every time and gives up after the policy's five attempts.
    proc = payables(
        {**cli_env, "PAYABLES_FAILPOINTS": "flaky:before:planner:2,flaky:before:verifier:99"},
        "run",
        "Validate INV-1002",
        "--user",
        "clerk-ana",
        "--thread",
        thread,
    )
    assert proc.returncode == 1, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    [letter] = dead_letters(db_uri, thread)
    assert letter["step"] == "verifier"
    assert letter["error_class"] == "psycopg.OperationalError"
    assert letter["attempts"] == 5
    assert "after 5 attempt(s)" in proc.stderr, explain(proc)

    stalled = payables_json(cli_env, "show", thread)
    assert stalled["status"] == "failed"
    assert [s["tool"] for s in stalled["plan"]] == ["get_invoice", "compute_match"]

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert done["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    assert len(dead_letters(db_uri, thread)) == 1
