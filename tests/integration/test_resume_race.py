"""Two processes answer the same approval at once: one pays, the other is told why not.

Each `payables resume` takes the thread's advisory lock before it reads the interrupt, so
only one process drives the thread; the other gets exit 2 and a message saying the
approval is being resolved (it arrived while the first ran) or was already resolved (it
arrived after).
"""

from __future__ import annotations

import signal

import pytest

from runtime.agent import open_agent
from state.db import Database
from tests.cli import explain, payables, payables_json
from tests.integration.test_crash_recovery import count
from tests.running import start

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PAYMENTS = "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'"
PAYMENT_CALLS = "SELECT count(*) FROM tool_calls WHERE tool = 'schedule_payment' AND thread_id = %s"
DECISIONS = "SELECT count(*) FROM approval_decisions WHERE thread_id = %s"


def approve(reviewer: str) -> tuple[str, ...]:
    return ("--approve", "--reviewer", reviewer, "--role", "approver")


def paused_for_payment(env: dict[str, str], thread: str) -> None:
    view = payables_json(env, "run", "Pay INV-1001", "--user", "clerk-ana", "--thread", thread)
    assert [a["action"] for a in view["pending_approvals"]] == ["schedule_payment"]


def test_a_resume_that_arrives_while_another_runs_is_refused(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "race-overlap"
    paused_for_payment(cli_env, thread)

    # The first reviewer's process is frozen inside the approval step, lock held.
    with start(
        {**cli_env, "PAYABLES_FAILPOINTS": "sleep:before:approval:5"},
        "resume",
        thread,
        *approve("rev-1"),
        "--json",
    ) as first:
        first.wait_for("failpoint before:approval: sleeping")
        first.proc.send_signal(signal.SIGSTOP)
        try:
            rival = payables(cli_env, "resume", thread, *approve("rev-2"))
        finally:
            first.proc.send_signal(signal.SIGCONT)
        winner = first.finish()

    assert rival.returncode == 2, explain(rival)
    assert "being run by another process right now" in rival.stderr, explain(rival)
    assert "Traceback" not in rival.stderr, explain(rival)
    assert winner.returncode == 0, explain(winner)
    assert '"status": "completed"' in winner.stdout, explain(winner)
    assert count(db_uri, PAYMENTS) == 1
    assert count(db_uri, PAYMENT_CALLS, thread) == 1
    assert count(db_uri, DECISIONS, thread) == 1  # only the winner's decision


def test_two_resumes_started_together_pay_once(cli_env: dict[str, str], db_uri: str) -> None:
    thread = "race-together"
    paused_for_payment(cli_env, thread)

    with (
        start(cli_env, "resume", thread, *approve("rev-1")) as one,
        start(cli_env, "resume", thread, *approve("rev-2")) as two,
    ):
        finished = [one.finish(), two.finish()]

    codes = sorted(proc.returncode for proc in finished)
    assert codes == [0, 2], "\n".join(explain(proc) for proc in finished)
    loser = next(proc for proc in finished if proc.returncode == 2)
    assert (
        "being run by another process right now" in loser.stderr
        or "it was already resolved" in loser.stderr
    ), explain(loser)
    assert "Traceback" not in loser.stderr, explain(loser)
    assert count(db_uri, PAYMENTS) == 1
    assert count(db_uri, PAYMENT_CALLS, thread) == 1
    assert count(db_uri, DECISIONS, thread) == 1


async def test_back_to_back_resumes_in_one_process_are_not_taken_for_a_race(
    database: Database,
) -> None:
    # Dual control: two reviewers answer one after the other, as fast as a script can. The
    # first resume's thread lock must be gone when the second starts.
    async with open_agent(database=database) as agent:
        for attempt in range(5):
            view = await agent.start("Pay INV-1020 today", user="clerk-ben")
            thread = view["thread_id"]
            for reviewer in ("ctl-1", "ctl-2"):
                value = {
                    "decisions": [{"type": "approve"}],
                    "reviewer": {"id": reviewer, "role": "controller"},
                }
                view = await agent.resume(thread, value)
            assert view["status"] == "completed", (attempt, view["reason"])
            async with database.connection() as conn:
                await conn.execute("DELETE FROM payments WHERE invoice_id = 'INV-1020'")
                await conn.execute(
                    "UPDATE invoices SET status = 'received' WHERE invoice_id = 'INV-1020'"
                )
