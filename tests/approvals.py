"""Recording reviewer decisions directly, for tests of what the gate does with them."""

from __future__ import annotations

from typing import Any

import psycopg

from runtime.agent import Agent
from state.db import Database
from tests.fakes import ScriptedChatModel, ScriptedModels, plan_reply
from tools.contract import args_hash


async def grant(
    conn: psycopg.AsyncConnection[Any],
    *,
    step_id: str,
    tool: str,
    args: dict[str, Any],
    reviewer: str,
    role: str,
    thread_id: str = "t",
) -> None:
    """Record ``reviewer``'s approval of exactly ``tool(args)`` at ``step_id``."""
    await conn.execute(
        "INSERT INTO approval_decisions (thread_id, step_id, tool, args_hash, reviewer_id,"
        " reviewer_role, decision) VALUES (%s, %s, %s, %s, %s, %s, 'approve')",
        (thread_id, step_id, tool, args_hash(tool, args), reviewer, role),
    )


def pay_then_ask_again() -> ScriptedModels:
    """One phase: pay INV-1001 (one approval), then INV-1002 (a second approval)."""
    return ScriptedModels(
        planner=ScriptedChatModel(
            [
                plan_reply(
                    True,
                    ("stage_invoice", {"invoice_id": "INV-1001"}),
                    (
                        "schedule_payment",
                        {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"},
                    ),
                    ("stage_invoice", {"invoice_id": "INV-1002"}),
                    (
                        "schedule_payment",
                        {"invoice_id": "INV-1002", "amount": "4064.02", "currency": "USD"},
                    ),
                )
            ]
        )
    )


async def paid_first_and_asked_second(agent: Agent, database: Database) -> str:
    """INV-1001 paid, INV-1002's payment awaiting approval; then INV-1001's vendor master
    account changes under the payment (what the verifier is there to notice)."""
    approve = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}}
    view = await agent.start("Pay INV-1001 and INV-1002", user="clerk-ana")
    assert [p["args"]["invoice_id"] for p in view["pending_approvals"]] == ["INV-1001"], view
    thread = str(view["thread_id"])
    view = await agent.resume(thread, approve)
    assert [p["args"]["invoice_id"] for p in view["pending_approvals"]] == ["INV-1002"], view
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM payments WHERE thread_id = %s", (thread,)
        )
        paid = await cur.fetchone()
        assert paid is not None and paid["n"] == 1
        await conn.execute(
            "UPDATE vendors SET remit_bank_account = 'NL91ABNA0417164300' WHERE vendor_id ="
            " (SELECT vendor_id FROM invoices WHERE invoice_id = 'INV-1001')"
        )
    return thread
