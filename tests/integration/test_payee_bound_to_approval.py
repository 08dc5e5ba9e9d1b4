"""A payment's approval covers the account it pays, as the reviewer was shown it.

schedule_payment pays the vendor master account, which is not one of its arguments, and
approvals were bound to the arguments only. A bank change (dual-approved, through its own
tool) that committed after the reviewer saw the payment's evidence, masked, and before the
payment ran sent the money to the new account. Now the approval node records the account
its request shows, each decision is bound to it, and the gate refuses to pay another: the
run ends escalated, saying why, with nothing paid.
"""

from __future__ import annotations

from typing import Any

import pytest

from guards.redaction import mask_account
from runtime.agent import Agent, open_agent
from runtime.context import Context
from state.db import Database
from tests.approvals import grant, grant_dual_control
from tools.contract import payee_digest
from tools.gate import PAYEE_CHANGED, PAYEE_UNCONFIRMED, ToolGate, ToolOutcome

pytestmark = pytest.mark.integration

OLD = "DE89370400440532013000"
NEW = "NL23KNAB0257394811"
PAY = {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD", "pay_on": None}
CHANGE = {"vendor_id": "V-001", "new_account": NEW, "reason": "called back"}
APPROVE = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}}


async def rows(database: Database, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with database.connection() as conn:
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())


async def change_bank_account(database: Database, gate: ToolGate) -> None:
    """V-001's account becomes NEW through the real tool, dual-approved on its own thread."""
    async with database.connection() as conn:
        await conn.execute(
            "INSERT INTO runs (thread_id, request, requester, tenant, status)"
            " VALUES ('bank', %s, 'clerk-bob', 'default', 'running')",
            (f"Change V-001 to {NEW}",),
        )
        await grant_dual_control(
            conn, step_id="s1", tool="update_vendor_bank_account", args=CHANGE, thread_id="bank"
        )
    changed = await gate.call(
        thread_id="bank",
        step_id="s1",
        route="vendor_change",
        requester="clerk-bob",
        tool="update_vendor_bank_account",
        args=CHANGE,
        run=Context(),
    )
    assert changed["ok"], changed["error"]


async def asked_to_pay(agent: Agent) -> str:
    view = await agent.start("Pay INV-1001", user="clerk-ana")
    [pending] = view["pending_approvals"]
    assert pending["action"] == "schedule_payment", view
    # What the reviewer is shown: the account the payment goes to, masked.
    evidence = pending["evidence"]
    assert evidence["invoice"]["vendor_master_account"] == mask_account(OLD), evidence
    return str(view["thread_id"])


@pytest.mark.parametrize("when", ["while_the_reviewer_looks", "after_the_approval"])
async def test_a_bank_change_after_the_reviewer_saw_the_payment_refuses_it(
    database: Database, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    async with open_agent(database=database) as agent:
        thread = await asked_to_pay(agent)
        if when == "while_the_reviewer_looks":
            # On resume the approval node runs again and reads the new account: the
            # decision must still be bound to the one the reviewer saw.
            await change_bank_account(database, agent.gate)
        else:
            # The approval has committed; the change commits before the payment runs.
            real_call = ToolGate.call

            async def change_first(self: ToolGate, **call: Any) -> ToolOutcome:
                if call["tool"] == "schedule_payment" and await rows(
                    database, "SELECT 1 FROM approval_decisions WHERE thread_id = %s", thread
                ):
                    monkeypatch.setattr(ToolGate, "call", real_call)
                    await change_bank_account(database, self)
                return await real_call(self, **call)

            monkeypatch.setattr(ToolGate, "call", change_first)
        done = await agent.resume(thread, APPROVE)

    assert done["status"] == "escalated", done
    reason = done["reason"]
    assert "bank account of vendor V-001 changed after this payment of INV-1001" in reason
    assert f"rev-1 approved paying {mask_account(OLD)}" in reason, reason
    assert f"now {mask_account(NEW)}" in reason, reason
    assert "ask for approval again" in reason, reason
    assert NEW not in reason and OLD not in reason
    assert await rows(database, "SELECT 1 FROM payments WHERE invoice_id = 'INV-1001'") == []
    [invoice] = await rows(database, "SELECT status FROM invoices WHERE invoice_id = 'INV-1001'")
    assert invoice["status"] == "staged"  # nothing half-applied: still ready to pay
    [run] = await rows(database, "SELECT status, reason FROM runs WHERE thread_id = %s", thread)
    assert (run["status"], run["reason"]) == ("escalated", reason)
    # The refusal is on the audit chain, as the gate's other refusals are.
    refused = await rows(
        database,
        "SELECT payload FROM audit_events WHERE thread_id = %s AND kind = 'tool_call'"
        " AND payload->>'tool' = 'schedule_payment' AND payload->>'error_code' = %s",
        thread,
        PAYEE_CHANGED,
    )
    assert len(refused) == 1, refused
    # The run ends there: no re-plan asks for the payment again or flags the invoice.
    calls = [c["tool"] for c in done["result"]["tool_calls"]]
    assert calls[-1] == "schedule_payment" and "flag_exception" not in calls, calls


async def test_an_unchanged_account_is_paid_and_a_paid_payment_is_replayed_after_a_change(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_agent(database=database) as agent:
        thread = await asked_to_pay(agent)
        # The payment commits, then the process fails before the graph checkpoints it.
        monkeypatch.setenv("PAYABLES_FAILPOINTS", "raise:after_commit:schedule_payment")
        with pytest.raises(Exception, match="failpoint"):
            await agent.resume(thread, APPROVE)
        monkeypatch.delenv("PAYABLES_FAILPOINTS")
        [decision] = await rows(
            database,
            "SELECT payee_digest, payee_masked FROM approval_decisions WHERE thread_id = %s",
            thread,
        )
        assert decision == {"payee_digest": payee_digest(OLD), "payee_masked": mask_account(OLD)}
        [paid] = await rows(
            database, "SELECT payment_id, payee_account FROM payments WHERE thread_id = %s", thread
        )
        assert paid["payee_account"] == OLD
        # A bank change after the payment does not turn its re-execution into a refusal.
        await change_bank_account(database, agent.gate)
        done = await agent.continue_run(thread)

    [payment] = [c for c in done["result"]["tool_calls"] if c["tool"] == "schedule_payment"]
    assert (payment["ok"], payment["replayed"], payment["error"]) == (True, True, None), done
    paid_to = done["result"]["invoices"]["INV-1001"]["payment"]
    assert paid_to["payment_id"] == paid["payment_id"]
    assert paid_to["payee_account_masked"] == mask_account(OLD)
    assert len(await rows(database, "SELECT 1 FROM payments WHERE invoice_id = 'INV-1001'")) == 1


async def staged_payment(database: Database) -> ToolGate:
    async with database.connection() as conn:
        await conn.execute(
            "INSERT INTO runs (thread_id, request, requester, tenant, status)"
            " VALUES ('pay', 'Pay INV-1001', 'clerk-ana', 'default', 'running')"
        )
        await conn.execute("UPDATE invoices SET status = 'staged' WHERE invoice_id = 'INV-1001'")
    return ToolGate(database)


async def pay(gate: ToolGate) -> ToolOutcome:
    return await gate.call(
        thread_id="pay",
        step_id="s2",
        route="invoice_processing",
        requester="clerk-ana",
        tool="schedule_payment",
        args=PAY,
        run=Context(approval_threshold="1000", dual_control_threshold="2000"),  # dual
    )


async def test_a_second_signature_is_not_asked_for_once_the_first_covers_another_account(
    database: Database,
) -> None:
    gate = await staged_payment(database)
    async with database.connection() as conn:
        await grant(conn, step_id="s2", tool="schedule_payment", args=PAY, reviewer="ctl-1",
                    role="controller", thread_id="pay")  # fmt: skip
    await change_bank_account(database, gate)
    refused = await pay(gate)
    assert refused["error"] is not None and refused["error"]["code"] == PAYEE_CHANGED, refused
    assert await rows(database, "SELECT 1 FROM payments WHERE invoice_id = 'INV-1001'") == []


async def test_under_dual_control_every_signature_must_cover_the_account_paid(
    database: Database,
) -> None:
    """A second signature given after the bank change covers the new account; the first
    still covers the old one, so the payment is refused, naming it."""
    gate = await staged_payment(database)
    async with database.connection() as conn:
        await grant(conn, step_id="s2", tool="schedule_payment", args=PAY, reviewer="ctl-1",
                    role="controller", thread_id="pay")  # fmt: skip
    await change_bank_account(database, gate)
    async with database.connection() as conn:
        await grant(conn, step_id="s2", tool="schedule_payment", args=PAY, reviewer="ctl-2",
                    role="controller", thread_id="pay")  # fmt: skip
    refused = await pay(gate)
    error = refused["error"]
    assert error is not None and error["code"] == PAYEE_CHANGED, refused
    assert f"ctl-1 approved paying {mask_account(OLD)}" in error["message"]
    assert "ctl-2" not in error["message"]
    assert await rows(database, "SELECT 1 FROM payments WHERE invoice_id = 'INV-1001'") == []


async def test_an_approval_recorded_without_its_payee_does_not_pay(database: Database) -> None:
    """A decision from a release before approvals covered the payee (a rolling deploy)."""
    gate = await staged_payment(database)
    async with database.connection() as conn:
        await grant_dual_control(
            conn, step_id="s2", tool="schedule_payment", args=PAY, thread_id="pay"
        )
        await conn.execute("UPDATE approval_decisions SET payee_digest = NULL, payee_masked = NULL")
    refused = await pay(gate)
    error = refused["error"]
    assert error is not None and error["code"] == PAYEE_UNCONFIRMED, refused
    assert "ctl-1, ctl-2" in error["message"] and "ask for approval again" in error["hint"]
    assert await rows(database, "SELECT 1 FROM payments WHERE invoice_id = 'INV-1001'") == []
