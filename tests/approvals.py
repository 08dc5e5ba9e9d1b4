"""Recording reviewer decisions directly, for tests of what the gate does with them."""

from __future__ import annotations

from typing import Any

import psycopg

from guards.redaction import mask_account
from runtime.agent import Agent
from state.db import Database
from tests.fakes import ScriptedChatModel, ScriptedModels, plan_reply
from tools.contract import args_hash, payee_digest
from tools.policy import PAYEE_TOOLS


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
    """Record ``reviewer``'s approval of exactly ``tool(args)`` at ``step_id``.

    A payment's approval covers the payee too, as the approval node records it: the
    vendor master account of the invoice it names, as it is now.
    """
    digest = masked = None
    if tool in PAYEE_TOOLS:
        cur = await conn.execute(
            "SELECT v.remit_bank_account FROM invoices i JOIN vendors v USING (vendor_id)"
            " WHERE i.invoice_id = %s",
            (args["invoice_id"],),
        )
        row = await cur.fetchone()
        if row is not None:
            account = row["remit_bank_account"] if isinstance(row, dict) else row[0]
            digest, masked = payee_digest(account), mask_account(account)
    await conn.execute(
        "INSERT INTO approval_decisions (thread_id, step_id, tool, args_hash, reviewer_id,"
        " reviewer_role, decision, payee_digest, payee_masked)"
        " VALUES (%s, %s, %s, %s, %s, %s, 'approve', %s, %s)",
        (thread_id, step_id, tool, args_hash(tool, args), reviewer, role, digest, masked),
    )


CONTROLLERS = ("ctl-1", "ctl-2")
"""Two distinct controllers: what dual control asks for."""


async def grant_dual_control(
    conn: psycopg.AsyncConnection[Any],
    *,
    step_id: str,
    tool: str,
    args: dict[str, Any],
    thread_id: str = "t",
) -> None:
    """Record both `CONTROLLERS`' approvals of exactly ``tool(args)`` at ``step_id``."""
    for reviewer in CONTROLLERS:
        await grant(
            conn,
            step_id=step_id,
            tool=tool,
            args=args,
            reviewer=reviewer,
            role="controller",
            thread_id=thread_id,
        )


async def sign_as_two_controllers(agent: Agent, thread: str) -> list[dict[str, Any]]:
    """Each of `CONTROLLERS` in turn approves every action waiting on ``thread``.

    Returns the view after each answer; the thread must be waiting before each.
    """
    views = []
    for reviewer in CONTROLLERS:
        [(_, request)] = await agent.pending(thread)
        answer = {
            "decisions": [{"type": "approve"}] * len(request["action_requests"]),
            "reviewer": {"id": reviewer, "role": "controller"},
        }
        views.append(await agent.resume(thread, answer))
    return views


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
