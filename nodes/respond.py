"""respond: the structured result and a short summary for the clerk."""

from __future__ import annotations

import json
import logging
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from guards.output_checks import echoes_system_prompt
from guards.redaction import redact, redact_text
from nodes.deps import Node, NodeDeps, current_thread_id
from nodes.safety import respond_view
from runtime.context import Context
from runtime.models import ask_model
from runtime.prompts import RESPOND_SYSTEM
from runtime.rules_model import extractive_answer
from state.audit import outcome_event, record
from state.graph_state import AgentState, appended
from state.routes import Route
from state.runs import record_run
from tools.gate import ToolOutcome

log = logging.getLogger(__name__)


class Summary(BaseModel):
    """A short summary for the clerk."""

    summary: str = Field(description="At most three sentences.")


def _invoice_results(outcomes: list[ToolOutcome]) -> dict[str, dict[str, Any]]:
    invoices: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        invoice_id = o["args"].get("invoice_id")
        if not isinstance(invoice_id, str):
            continue
        entry = invoices.setdefault(
            invoice_id, {"verdict": None, "exceptions": [], "actions": [], "errors": []}
        )
        if not o["ok"]:
            entry["errors"].append({"tool": o["tool"], **(o["error"] or {})})
            continue
        result = o["result"] or {}
        if o["tool"] == "compute_match":
            entry["verdict"] = result.get("verdict")
            entry["exceptions"] = [e["code"] for e in result.get("exceptions", [])]
            entry["flags"] = result.get("approval_flags", [])
        elif o["tool"] == "stage_invoice":
            entry["actions"].append("staged")
        elif o["tool"] == "flag_exception":
            entry["actions"].append("flagged")
            entry["exception_id"] = result.get("exception_id")
        elif o["tool"] == "schedule_payment":
            entry["actions"].append("payment_scheduled")
            entry["payment"] = {
                k: result.get(k)
                for k in ("payment_id", "amount", "currency", "pay_on", "payee_account_masked")
            }
        elif o["tool"] == "payment_status":
            entry["payment_status"] = result
    return invoices


def build_result(state: AgentState) -> tuple[str, str, dict[str, Any]]:
    """Final status, reason and structured result from the state alone."""
    outcomes = state.get("outcomes", [])
    route = state.get("route", "")
    status = state.get("status") or "completed"
    reason = state.get("reason", "")
    result: dict[str, Any] = {"route": route}
    per_invoice = route in (Route.INVOICE_PROCESSING, Route.PAYMENT_STATUS)
    unresolved: list[str] = []
    if per_invoice:
        invoices = _invoice_results(outcomes)
        result["invoices"] = invoices
        unresolved = [
            f"{inv}: {err['message']}"
            for inv, entry in invoices.items()
            for err in entry["errors"]
            if "flagged" not in entry["actions"]
        ]
    # A failed call about no invoice in particular (a vendor's invoice list, a bank change,
    # a policy search) is resolved by nothing later in the run: the run did not finish.
    unresolved += [
        f"{o['tool']}: {o['error']['message']}"
        for o in outcomes
        if o["error"] and not (per_invoice and isinstance(o["args"].get("invoice_id"), str))
    ]
    if unresolved and status == "completed" and not reason:
        status, reason = "escalated", "Could not finish: " + "; ".join(unresolved)
    if route == Route.POLICY_QUESTION:
        result["answer"] = extractive_answer(outcomes)
    if route == Route.VENDOR_CHANGE:
        result["vendor_change"] = [
            {"tool": o["tool"], "ok": o["ok"], "result": o["result"], "error": o["error"]}
            for o in outcomes
            if o["tool"] in {"update_vendor_bank_account", "send_vendor_email"}
        ]
    if route == Route.PAYMENT_STATUS:
        result["vendor_invoices"] = [
            o["result"] for o in outcomes if o["tool"] == "find_invoices" and o["ok"]
        ]
    decisions = state.get("decisions", [])
    if any(d["decision"] == "reject" for d in decisions):
        result["outcome"] = "rejected_by_reviewer"
    result["decisions"] = decisions
    result["tool_calls"] = [
        {
            "step_id": o["step_id"],
            "tool": o["tool"],
            "tier": o["tier"],
            "ok": o["ok"],
            "replayed": o["replayed"],
            "error": o["error"]["code"] if o["error"] else None,
        }
        for o in outcomes
    ]
    return status, reason, result


def rules_summary(status: str, reason: str, result: dict[str, Any]) -> str:
    """A deterministic summary from the result."""
    parts: list[str] = []
    for invoice_id, entry in result.get("invoices", {}).items():
        text = f"{invoice_id}: {entry.get('verdict') or 'not matched'}"
        if entry["exceptions"]:
            text += f" ({', '.join(entry['exceptions'])})"
        if entry["actions"]:
            # Each action once: a payment's stand-ins stage the invoice again after
            # flagging it, which read "staged, flagged, staged".
            text += f"; {', '.join(dict.fromkeys(entry['actions']))}"
        if entry["errors"]:
            # A refused call is what people must act on; it may not hide behind the flag.
            failed = ", ".join(
                dict.fromkeys(f"{e['tool']} ({e.get('code') or 'failed'})" for e in entry["errors"])
            )
            text += f"; not done: {failed}"
        if "payment_status" in entry:
            ps = entry["payment_status"]
            pays = (
                ", ".join(
                    f"{p['payment_id']} {p['status']} {p['amount']} {p['currency']}"
                    f" on {p['pay_on']}"
                    for p in ps["payments"]
                )
                or "no payments"
            )
            text += f"; invoice {ps['invoice_status']}, {pays}"
        parts.append(text)
    for found in result.get("vendor_invoices", []):
        parts.append(
            "invoices found: "
            + (
                ", ".join(
                    f"{i['invoice_id']} {i['status']} {i['total']} {i['currency']}"
                    for i in found["invoices"]
                )
                or "none"
            )
        )
    answer = result.get("answer")
    if answer and answer["answer"]:
        parts.append(answer["answer"])
    for change in result.get("vendor_change", []):
        if change["ok"] and change["tool"] == "update_vendor_bank_account":
            r = change["result"]
            parts.append(
                f"{r['vendor_id']} account changed from {r['old_account_masked']} to "
                f"{r['new_account_masked']}"
            )
    if reason:
        parts.append(reason)
    return f"[{status}] " + (". ".join(parts) if parts else "nothing to do")


RESPOND_INPUT_BUDGET = 20000
"""Characters of the result the respond model is shown; a longer one is summarized by rules."""


def make_respond(deps: NodeDeps) -> Node:
    """Build the respond node."""

    async def respond(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
        """Write the final result and summary, and record the run's final status."""
        ctx = runtime.context
        status, reason, result = build_result(state)
        summary = rules_summary(status, reason, result)
        shown = json.dumps(
            {"status": status, "reason": reason, "result": respond_view(result)}, default=str
        )
        notes: list[str] = []
        degraded: list[str] = []
        if len(shown) > RESPOND_INPUT_BUDGET:
            # Cut at a length, the model's input could end inside an untrusted wrapper and
            # would leave out what came last; the rules summary covers the result whole.
            path = "rules (the result was too long for the respond model)"
            notes.append(
                f"summary written by rules: the result ({len(shown)} characters) is over the "
                f"respond model's {RESPOND_INPUT_BUDGET}"
            )
        else:
            answer = await ask_model(
                deps.models,
                "respond",
                ctx,
                Summary,
                [SystemMessage(RESPOND_SYSTEM), HumanMessage(shown)],
                repairs=ctx.max_plan_repairs,
            )
            path = answer.path
            notes += [answer.note] if answer.note else []
            degraded += [answer.degraded] if answer.degraded else []
            if isinstance(answer.parsed, Summary):
                if echoes_system_prompt(answer.parsed.summary):
                    path = f"rules (fallback: {path} echoed an internal prompt)"
                    notes.append("respond model summary repeated an internal prompt; replaced")
                else:
                    summary = answer.parsed.summary
        model_path = {**state.get("model_path", {}), "respond": path}
        result["flags"] = state.get("flags", [])
        result["model_path"] = model_path
        result["prompt_version"] = ctx.prompt_version
        result["notes"] = [*state.get("notes", []), *notes]
        result["degraded"] = list(dict.fromkeys([*state.get("degraded", []), *degraded]))
        # Usage so far; the budget guard completes it with this step once the node returns.
        result["usage"] = dict(state.get("usage", {}))
        # The output guard: whatever a model or a tool put here, no full account number,
        # card number or secret leaves the run.
        summary, reason, result = redact_text(summary), redact_text(reason), redact(result)
        await record_run(
            deps.database,
            thread_id=current_thread_id(),
            request=state.get("request", ""),
            requester=state.get("user") or "anonymous",
            tenant=ctx.tenant,
            route=state.get("route"),
            status=status,
            summary=summary[:2000],
            reason=reason[:2000],
        )
        # Audit chain: how the run ended.
        ended = outcome_event(
            current_thread_id(), status=status, reason=reason, route=state.get("route")
        )
        await record(deps.database, ctx.tenant, current_thread_id(), ended)
        update: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "result": result,
            "summary": summary,
            "model_path": {"respond": path},
        }
        return {**update, **appended(notes=notes, degraded=degraded)}

    return respond
