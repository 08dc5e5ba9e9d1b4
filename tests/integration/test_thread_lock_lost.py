"""A run whose thread lock dies under it stops; the process that takes the thread finishes it.

The lock is a session advisory lock: when its connection dies (Postgres restarts, an
operator kills the backend) any other process can take the thread. The run that held it
must notice and stop rather than go on beside the new one. Here the lock's backend is
killed while a `payables resume` sleeps inside the approval step (its answer recorded),
and `payables continue` then takes the thread over.
"""

from __future__ import annotations

import psycopg
import pytest

from state.db import THREAD_LOCK_CLASS
from tests.cli import explain, payables_json
from tests.integration.test_crash_recovery import APPROVE, count
from tests.running import start

pytestmark = [pytest.mark.integration]


def kill_lock_holder(db_uri: str, thread_id: str) -> None:
    """Terminate the backend holding ``thread_id``'s lock, as a Postgres restart would.

    With a timeout, the call returns once the backend has exited: its goodbye is then
    already in the lock connection's socket, where the run's check reads it.
    """
    with psycopg.connect(db_uri, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND classid = %s::oid"
            " AND objid = (hashtext(%s)::bigint & 4294967295)::oid AND objsubid = 2",
            (THREAD_LOCK_CLASS, thread_id),
        ).fetchone()
    assert row is not None and row[0], "nobody held the thread's lock"


def test_a_run_whose_lock_died_stops_and_the_run_that_took_over_pays_once(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "lock-lost"
    paused = payables_json(
        cli_env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread
    )
    assert paused["status"] == "interrupted"

    with start(
        {**cli_env, "PAYABLES_FAILPOINTS": "sleep:after:approval:3"},
        "resume",
        thread,
        *APPROVE,
    ) as first:
        first.wait_for("failpoint after:approval: sleeping")
        kill_lock_holder(db_uri, thread)
        # The thread is free now: another process takes it and finishes the run from the
        # answer the first one recorded.
        took_over = payables_json(cli_env, "continue", thread)
        stopped = first.finish()

    assert took_over["status"] == "completed", took_over["reason"]
    assert stopped.returncode == 1, explain(stopped)
    assert "Traceback" not in stopped.stderr, explain(stopped)
    assert f"Thread {thread}'s lock was lost" in " ".join(stopped.stderr.split())
    # The first process wrote nothing after its lock died: the thread is as the second
    # left it, with one payment, one decision and one outcome in the audit chain.
    final = payables_json(cli_env, "show", thread)
    assert final["status"] == "completed" and final["pending_approvals"] == []
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1
    assert (
        count(db_uri, "SELECT count(*) FROM approval_decisions WHERE thread_id = %s", thread) == 1
    )
    outcomes = "SELECT count(*) FROM audit_events WHERE thread_id = %s AND kind = 'outcome'"
    assert count(db_uri, outcomes, thread) == 1
    # Nothing is left for an operator: no dead letter for a run another process finished.
    assert count(db_uri, "SELECT count(*) FROM dead_letters WHERE thread_id = %s", thread) == 0
