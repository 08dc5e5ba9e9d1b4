"""Crashes between a database write and the checkpoint that follows it: what each command says.

Two windows, each made by a SIGKILL failpoint (`runtime.failpoints`) in a child process:

- ``after:respond``: respond recorded the run's final status in the run index, and the
  process died before the checkpoint. `threads` (the index) says the run ended; the
  checkpoint says respond is still to run, and no result was saved.
- ``after:approval``: a reviewer's answer committed to `approval_decisions` (and the index
  says running), and the process died before the checkpoint, which still shows the interrupt.

Either way `show` must say what happened and that `payables continue THREAD` finishes the
run, and `continue` must finish it from what was recorded.
"""

from __future__ import annotations

import psycopg
import pytest

from state.db import THREAD_LOCK_CLASS
from tests.cli import killed, payables, payables_fails, payables_json, scalar

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

APPROVE = ("--approve", "--reviewer", "rev-1", "--role", "approver")


def plain(text: str) -> str:
    """CLI text without the terminal's line wrapping and box drawing."""
    return " ".join(text.replace("│", " ").split())


def age(db_uri: str, days: int, thread: str) -> None:
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute(
            "UPDATE runs SET updated_at = now() - make_interval(days => %s) WHERE thread_id = %s",
            (days, thread),
        )


def test_a_crash_after_respond_is_pointed_to_continue_which_writes_the_result(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "crash-after-respond"
    killed(
        cli_env,
        "after:respond",
        *("run", "Validate INV-1002", "--user", "clerk-ana", "--thread", thread),
    )
    # The index holds the final status; the checkpoint does not have the result.
    listed = {r["thread_id"]: r["status"] for r in payables_json(cli_env, "threads")["threads"]}
    assert listed[thread] == "completed"
    stalled = payables_json(cli_env, "show", thread)
    assert stalled["status"] == "running" and stalled["result"] is None, stalled
    note = plain(stalled["note"])
    assert "completed" in note and f"payables continue {thread}" in note, note
    text = plain(payables(cli_env, "show", thread).stdout)
    assert f"payables continue {thread}" in text, text

    # Prune lists it as kept, says why and what finishes it; it does not delete it.
    age(db_uri, 40, thread)
    report = payables_json(cli_env, "prune", "--older-than", "30")
    assert report["pruned"]["threads"] == 0, report
    [kept] = report["kept"]
    assert kept["thread_id"] == thread
    reason = plain(kept["kept_because"])
    assert "final status" in reason and f"payables continue {thread}" in reason, reason

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert done["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    shown = payables_json(cli_env, "show", thread)
    assert shown["status"] == "completed" and shown["result"] is not None
    assert shown["note"] == ""
    # One outcome in the audit chain, although respond ran twice.
    outcomes = "SELECT count(*) FROM audit_events WHERE thread_id = %s AND kind = 'outcome'"
    assert scalar(db_uri, outcomes, thread) == 1
    assert "already finished" in payables_fails(cli_env, "continue", thread)
    # Finished now, it goes with the next prune.
    age(db_uri, 40, thread)
    assert payables_json(cli_env, "prune", "--older-than", "30")["pruned"]["threads"] == 1


def test_show_says_an_answer_recorded_before_a_crash_is_finished_by_continue(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "crash-after-answer"
    view = payables_json(cli_env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread)
    assert view["status"] == "interrupted"
    killed(cli_env, "after:approval", "resume", thread, *APPROVE)

    stalled = payables_json(cli_env, "show", thread)
    # The approval is answered: `show` agrees with `threads` and `approvals`.
    assert stalled["status"] == "running" and stalled["pending_approvals"] == [], stalled
    note = plain(stalled["note"])
    assert "rev-1" in note and f"payables continue {thread}" in note, note
    assert payables_json(cli_env, "approvals")["pending_approvals"] == []

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert scalar(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1


def test_show_says_a_thread_another_process_is_running_is_running_now(
    cli_env: dict[str, str], db_uri: str
) -> None:
    # A thread a crash stopped between steps looks the same in its checkpoint as one a run
    # (a `continue`, a server run) is executing now; the thread's lock tells them apart.
    thread = "crash-mid-run"
    killed(
        cli_env,
        "before:verifier",
        *("run", "Validate INV-1002", "--user", "clerk-ana", "--thread", thread),
    )
    stopped = plain(payables_json(cli_env, "show", thread)["note"])
    assert "stopped between steps" in stopped and f"payables continue {thread}" in stopped

    with psycopg.connect(db_uri, autocommit=True) as holder:
        locked = holder.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (THREAD_LOCK_CLASS, thread)
        ).fetchone()
        assert locked == (True,)
        running = payables_json(cli_env, "show", thread)
        assert running["status"] == "running", running
        note = plain(running["note"])
        assert "executing this thread now" in note and "continue" not in note, note
    # The holder gone, its lock is released: stopped again, and `continue` finishes it.
    assert "stopped between steps" in plain(payables_json(cli_env, "show", thread)["note"])
    assert payables_json(cli_env, "continue", thread)["status"] == "completed"
