"""verifier: check outcomes in code; re-plan (bounded), escalate, or finish.

The database is the judge: after a payment, exactly one live payment exists for the
invoice, its payee is the vendor master account and its amount does not exceed the
invoice total; a staged invoice is staged; after a bank change, the vendor master account
is the changed one it recorded; a queued email is in the outbox; a policy answer has
passages to cite.

A run that ends before its phase does also passes through here, so what the phase did
is checked all the same: a reviewer's reject (from approval), a budget stop (from the
budget guard or the executor) when the phase has outcomes, and a payment the gate refused
because the vendor's account is no longer the one approved. Such a run only ends: the
verifier checks the phase's outcomes, adds any violation to the reason (escalated), and
goes to respond, never back to the planner.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from nodes.deps import Node, NodeDeps
from runtime import failpoints
from runtime.context import Context
from state.db import Database
from state.graph_state import AgentState, phase_outcomes, phase_step_prefix
from state.routes import Route
from tools.gate import PAYEE_REFUSALS, ToolOutcome

MAX_PHASES = 6


def ends_here(state: AgentState, outcomes: list[ToolOutcome]) -> bool:
    """Whether the run ends after this check of the phase's ``outcomes``.

    It does after a budget stop, a reject in this phase, or a payment in it that the gate
    refused for its payee (only a new approval lifts that; a re-plan cannot).
    """
    if state.get("budget_stop"):
        return True
    if any(o["error"] is not None and o["error"]["code"] in PAYEE_REFUSALS for o in outcomes):
        return True
    prefix = phase_step_prefix(state)
    return prefix is not None and any(
        d["decision"] == "reject" and d["step_id"].startswith(prefix)
        for d in state.get("decisions", [])
    )


async def check_outcomes(database: Database, outcomes: list[ToolOutcome]) -> list[str]:
    """Invariants that must hold in the database after these outcomes; violations listed."""
    problems: list[str] = []
    async with database.connection() as conn:
        for outcome in outcomes:
            if not outcome["ok"] or outcome["result"] is None:
                continue
            invoice_id = outcome["args"].get("invoice_id")
            if outcome["tool"] == "schedule_payment":
                cur = await conn.execute(
                    "SELECT p.payee_account, p.amount, i.total, v.remit_bank_account"
                    " FROM payments p JOIN invoices i USING (invoice_id)"
                    " JOIN vendors v ON v.vendor_id = i.vendor_id"
                    " WHERE p.invoice_id = %s AND p.status <> 'void'",
                    (invoice_id,),
                )
                rows: list[dict[str, Any]] = list(await cur.fetchall())
                if len(rows) != 1:
                    problems.append(f"{invoice_id} has {len(rows)} live payments, expected 1")
                    continue
                row = rows[0]
                if row["payee_account"] != row["remit_bank_account"]:
                    problems.append(f"payment for {invoice_id} is not to the vendor master account")
                if Decimal(row["amount"]) > Decimal(row["total"]):
                    problems.append(f"payment for {invoice_id} exceeds the invoice total")
            elif outcome["tool"] == "stage_invoice":
                cur = await conn.execute(
                    "SELECT status FROM invoices WHERE invoice_id = %s", (invoice_id,)
                )
                status_row = await cur.fetchone()
                if status_row is None or status_row["status"] not in {
                    "staged",
                    "scheduled",
                    "paid",
                }:
                    problems.append(f"{invoice_id} was staged but is not in a staged state")
            elif outcome["tool"] == "update_vendor_bank_account":
                vendor_id = outcome["result"]["vendor_id"]
                cur = await conn.execute(
                    "SELECT c.new_account = v.remit_bank_account AS current"
                    " FROM vendor_bank_changes c JOIN vendors v USING (vendor_id)"
                    " WHERE c.change_id = %s AND c.vendor_id = %s",
                    (outcome["result"]["change_id"], vendor_id),
                )
                change = await cur.fetchone()
                if change is None:
                    problems.append(f"the bank change of {vendor_id} is not on record")
                elif not change["current"]:
                    problems.append(
                        f"{vendor_id}'s master account is not the one its bank change set"
                    )
            elif outcome["tool"] == "send_vendor_email":
                cur = await conn.execute(
                    "SELECT 1 FROM email_outbox WHERE outbox_id = %s",
                    (outcome["result"]["outbox_id"],),
                )
                if await cur.fetchone() is None:
                    problems.append(
                        f"the email to {outcome['result']['vendor_id']} is not in the outbox"
                    )
    return problems


def make_verifier(deps: NodeDeps) -> Node:
    """Build the verifier node."""

    async def verifier(
        state: AgentState, *, runtime: Runtime[Context]
    ) -> Command[Literal["planner", "respond"]]:
        """Check this phase, then re-plan, continue to the next phase, or respond."""
        failpoints.hit("verifier")
        plan = state["plan"]
        outcomes = phase_outcomes(state)
        problems = await check_outcomes(deps.database, outcomes)
        ending = ends_here(state, outcomes)
        if problems:
            failed_check = "Verification failed: " + "; ".join(problems)
            # A run that ends here keeps why it ended (the reject, the budget stop).
            earlier = state.get("reason", "") if ending else ""
            return Command(
                goto="respond",
                update={
                    "status": "escalated",
                    "reason": f"{earlier} {failed_check}" if earlier else failed_check,
                },
            )
        if ending:
            return Command(goto="respond")

        failed = [o for o in outcomes if not o["ok"]]
        replans = state.get("replans", 0)
        if failed and state["route"] == Route.INVOICE_PROCESSING:
            if replans >= runtime.context.max_replans:
                errors = "; ".join(
                    f"{o['tool']}: {o['error']['message']}" for o in failed if o["error"]
                )
                return Command(
                    goto="respond",
                    update={
                        "status": "escalated",
                        "reason": f"Gave up after {replans} re-plans: {errors}",
                    },
                )
            return Command(goto="planner", update={"replans": replans + 1})

        if state["route"] == Route.POLICY_QUESTION and not any(
            o["tool"] == "search_policy" and o["ok"] and o["result"] and o["result"]["passages"]
            for o in state.get("outcomes", [])
        ):
            return Command(
                goto="respond",
                update={
                    "status": "escalated",
                    "reason": "No policy passage answers this; a person from AP will reply.",
                },
            )

        if not plan["final"]:
            if plan["phase"] >= MAX_PHASES:
                return Command(
                    goto="respond",
                    update={
                        "status": "escalated",
                        "reason": f"The plan did not finish within {MAX_PHASES} phases.",
                    },
                )
            return Command(goto="planner")
        return Command(goto="respond")

    return verifier
