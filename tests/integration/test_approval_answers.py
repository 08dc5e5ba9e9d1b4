"""A reviewer's answer is recorded whole, and what it shows the reviewer is masked.

One answer can decide several actions (approve one payment, reject another). A transient
database error while recording it makes LangGraph run the approval node again; the
outcome must be the one the reviewer chose, whether the error struck before the answer
committed or after.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

import nodes.approval
from runtime.agent import Agent, open_agent
from state.db import Database
from tests.approvals import paid_first_and_asked_second, pay_then_ask_again
from tests.fakes import ScriptedChatModel, ScriptedModels, plan_reply

pytestmark = pytest.mark.integration

APPROVE_FIRST_REJECT_SECOND = {
    "decisions": [{"type": "approve"}, {"type": "reject", "message": "not this one"}],
    "reviewer": {"id": "rev-1", "role": "approver"},
}


def two_payments() -> ScriptedModels:
    """A plan whose two payments come up for approval together (one interrupt, 2 actions)."""
    return ScriptedModels(
        planner=ScriptedChatModel(
            [
                plan_reply(
                    True,
                    ("stage_invoice", {"invoice_id": "INV-1001"}),
                    ("stage_invoice", {"invoice_id": "INV-1002"}),
                    (
                        "schedule_payment",
                        {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"},
                    ),
                    (
                        "schedule_payment",
                        {"invoice_id": "INV-1002", "amount": "4064.02", "currency": "USD"},
                    ),
                )
            ]
        )
    )


async def answer_two_payments(agent: Agent) -> tuple[str, dict[str, Any]]:
    view = await agent.start("Pay INV-1001 and INV-1002", user="clerk-ana")
    assert [p["action"] for p in view["pending_approvals"]] == ["schedule_payment"] * 2, view
    done = await agent.resume(view["thread_id"], APPROVE_FIRST_REJECT_SECOND)
    return str(view["thread_id"]), done


async def count(database: Database, sql: str, *params: Any) -> int:
    async with database.connection() as conn:
        row = await (await conn.execute(sql, params)).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


async def assert_rejected_and_unpaid(database: Database, thread: str, done: Any) -> None:
    assert done["status"] == "completed", done
    assert "not this one" in done["reason"]
    assert await count(database, "SELECT count(*) FROM payments WHERE thread_id = %s", thread) == 0
    decisions = await count(
        database, "SELECT count(*) FROM approval_decisions WHERE thread_id = %s", thread
    )
    audited = await count(
        database,
        "SELECT count(*) FROM audit_events WHERE thread_id = %s AND kind = 'decision'",
        thread,
    )
    assert (decisions, audited) == (2, 2)


async def test_an_answer_that_approves_one_payment_and_rejects_another_pays_nothing(
    database: Database,
) -> None:
    async with open_agent(models=two_payments(), database=database) as agent:
        thread, done = await answer_two_payments(agent)
    await assert_rejected_and_unpaid(database, thread, done)


async def test_an_error_before_the_answer_commits_records_it_whole_on_the_retry(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = nodes.approval.record
    failed: list[str] = []

    async def drops_the_connection_once(*args: Any, **kwargs: Any) -> Any:
        if args[3].kind == "decision" and not failed:
            failed.append("decision")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return await record(*args, **kwargs)

    monkeypatch.setattr(nodes.approval, "record", drops_the_connection_once)
    async with open_agent(models=two_payments(), database=database) as agent:
        thread, done = await answer_two_payments(agent)
    assert failed
    await assert_rejected_and_unpaid(database, thread, done)


async def test_an_error_after_the_answer_commits_still_ends_the_run_on_its_reject(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry finds the first payment approved and nothing to ask: the reject still holds."""
    reason = nodes.approval.rejection_reason
    failed: list[str] = []

    def fails_once_after_commit(*args: Any) -> str:
        if not failed:
            failed.append("after commit")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return reason(*args)

    monkeypatch.setattr(nodes.approval, "rejection_reason", fails_once_after_commit)
    async with open_agent(models=two_payments(), database=database) as agent:
        thread, done = await answer_two_payments(agent)
    assert failed
    await assert_rejected_and_unpaid(database, thread, done)


async def test_the_approval_request_masks_the_account_the_clerk_typed(
    database: Database,
) -> None:
    """The interrupt value is what the server's API returns and the reviewer inbox shows."""
    account = "NL23KNAB0257394811"
    async with open_agent(database=database) as agent:
        change = await agent.start(
            f"Change the bank account of vendor V-006 to {account}", user="clerk-ana"
        )
        assert change["status"] == "interrupted", change["reason"]
        [(_, payload)] = await agent.pending(change["thread_id"])
    assert payload["request"] == "Change the bank account of vendor V-006 to ****4811"
    assert account not in json.dumps(payload)


async def test_an_error_after_an_approval_commits_keeps_the_decision_in_the_result(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry finds nothing to ask and goes on; the reviewer's approval, committed by
    the failed attempt, is still in the run's result."""
    command = nodes.approval.Command
    failed: list[str] = []

    def fails_once_after_commit(*args: Any, **kwargs: Any) -> Any:
        if not failed and kwargs.get("goto") == "executor" and kwargs.get("update"):
            failed.append("after commit")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return command(*args, **kwargs)

    monkeypatch.setattr(nodes.approval, "Command", fails_once_after_commit)
    async with open_agent(database=database) as agent:
        view = await agent.start("Pay INV-1001", user="clerk-ana")
        done = await agent.resume(
            view["thread_id"],
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
        )
    assert failed
    assert done["status"] == "completed", done
    decided = [(d["step_id"], d["reviewer_id"], d["decision"]) for d in done["result"]["decisions"]]
    assert [who for _, who, _ in decided] == ["rev-1"]
    paid = "SELECT count(*) FROM payments WHERE thread_id = %s"
    assert await count(database, paid, view["thread_id"]) == 1


async def test_a_reject_ends_the_run_only_after_the_verifier_checked_the_phase(
    database: Database,
) -> None:
    """The payment approved and made before the reject is checked against the database."""
    async with open_agent(models=pay_then_ask_again(), database=database) as agent:
        thread = await paid_first_and_asked_second(agent, database)
        reject = {
            "decisions": [{"type": "reject", "message": "not this one"}],
            "reviewer": {"id": "rev-1", "role": "approver"},
        }
        done = await agent.resume(thread, reject)
    assert done["status"] == "escalated", done
    assert "not this one" in done["reason"]
    assert "payment for INV-1001 is not to the vendor master account" in done["reason"]
    assert await count(database, "SELECT count(*) FROM payments WHERE thread_id = %s", thread) == 1


async def test_a_reject_in_a_phase_that_is_not_the_last_is_never_re_planned(
    database: Database,
) -> None:
    """Through the verifier, a reject still ends the run: no next phase, no re-plan."""
    planner = ScriptedChatModel(
        [
            plan_reply(
                False,
                ("stage_invoice", {"invoice_id": "INV-1001"}),
                (
                    "schedule_payment",
                    {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"},
                ),
            )
        ]
    )
    reject = {
        "decisions": [{"type": "reject", "message": "hold it"}],
        "reviewer": {"id": "rev-1", "role": "approver"},
    }
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Pay INV-1001", user="clerk-ana")
        assert [p["action"] for p in view["pending_approvals"]] == ["schedule_payment"], view
        done = await agent.resume(view["thread_id"], reject)
    assert (done["status"], done["reason"]) == (
        "completed",
        "Rejected by rev-1 (approver): hold it",
    )
    assert len(planner.received) == 1  # asked for the first phase only
    assert [c["tool"] for c in done["result"]["tool_calls"]] == ["stage_invoice"]
