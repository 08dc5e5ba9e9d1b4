"""SIGTERM stops a run cleanly: the step in flight finishes, is checkpointed, exit 0.

A sleep failpoint holds the child inside a known step; the test sends a real SIGTERM while
it is there. The process must finish that step (its side effect and its checkpoint), stop
before the next one, exit 0 and say how to go on; `payables continue` then finishes the run
without repeating anything.
"""

from __future__ import annotations

import signal

import pytest

from tests.cli import explain, payables_json
from tests.integration.test_crash_recovery import APPROVE, count
from tests.running import start

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def stopped_by_sigterm(env: dict[str, str], point: str, *args: str) -> str:
    """Run `payables ARGS` held at ``point``, SIGTERM it there; require exit 0; stderr."""
    with start({**env, "PAYABLES_FAILPOINTS": f"sleep:{point}:3"}, *args) as child:
        child.wait_for(f"failpoint {point}: sleeping")
        child.proc.send_signal(signal.SIGTERM)
        proc = child.finish()
    assert proc.returncode == 0, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    return proc.stderr


def test_sigterm_in_the_payment_step_checkpoints_it_and_continue_pays_once(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "sigterm-payment"
    view = payables_json(cli_env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread)
    assert view["status"] == "interrupted"

    # The signal lands after the payment committed, inside the executor's step.
    stderr = stopped_by_sigterm(
        cli_env, "after_commit:schedule_payment", "resume", thread, *APPROVE
    )
    assert f"continue {thread}" in stderr, stderr
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1

    stopped = payables_json(cli_env, "show", thread, "--history")
    assert stopped["status"] == "running"
    last = stopped["history"][-1]
    assert last["next"] == ["verifier"], last  # the payment step (the last) is checkpointed
    assert stopped["pending_approvals"] == []

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    payments = [c for c in done["result"]["tool_calls"] if c["tool"] == "schedule_payment"]
    # Checkpointed before the stop, so the payment is not even replayed: it is just done.
    assert [c["replayed"] for c in payments] == [False]
    assert count(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1
    assert (
        count(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE tool = 'schedule_payment' AND thread_id = %s",
            thread,
        )
        == 1
    )


def test_sigterm_in_the_verifier_of_a_run_stops_after_it(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "sigterm-verifier"
    stderr = stopped_by_sigterm(
        cli_env,
        "before:verifier",
        "run",
        "Validate INV-1002",
        "--user",
        "clerk-ana",
        "--thread",
        thread,
    )
    assert f"continue {thread}" in stderr, stderr

    stopped = payables_json(cli_env, "show", thread, "--history")
    assert stopped["status"] == "running"
    # The verifier of the first (read-only) phase finished and sent the run on to plan
    # the next phase, which has not started.
    assert stopped["history"][-1]["next"] == ["planner"]
    stage_calls = "SELECT count(*) FROM tool_calls WHERE tool = 'stage_invoice' AND thread_id = %s"
    assert count(db_uri, stage_calls, thread) == 0

    done = payables_json(cli_env, "continue", thread)
    assert done["status"] == "completed", done["reason"]
    assert done["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    assert count(db_uri, stage_calls, thread) == 1
