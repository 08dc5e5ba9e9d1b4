"""The safety plane as the nodes apply it: what is trusted, what is flagged, what is tainted."""

from __future__ import annotations

import json
import re
from typing import Any

from langchain.agents.middleware.pii import detect_credit_card
from stdnum import iban

from guards.injection import REQUEST_INTENT_RULES, scan
from guards.input_checks import split_pasted
from guards.redaction import extract_accounts, mask_account
from guards.taint import TaintFinding, find_taint
from guards.untrusted import ECHOING_TOOLS, untrusted_texts, wrap, wrap_result
from state.graph_state import AgentState, Attachment, PlanStep
from tools.gate import ToolOutcome


def third_party_texts(state: AgentState) -> list[tuple[str, str]]:
    """Text a third party wrote that came with the request: pasted blocks and attachments."""
    _, pasted = split_pasted(state.get("request", ""))
    return [(f"pasted text {i}", text) for i, text in enumerate(pasted, start=1)] + [
        (f"attachment {a['name']}", a["text"]) for a in state.get("attachments", [])
    ]


def request_for_model(state: AgentState) -> str:
    """The request as a model sees it: the clerk's words, then third-party text wrapped."""
    own_words, _ = split_pasted(state.get("request", ""))
    wrapped = [wrap(text, source) for source, text in third_party_texts(state)]
    return f"<request>\n{own_words}\n</request>\n" + "\n".join(wrapped)


def request_flags(request: str, attachments: list[Attachment]) -> list[dict[str, Any]]:
    """Injection and PII flags for the clerk's request, pasted text and attachments."""
    flags: list[dict[str, Any]] = []
    own_words, pasted = split_pasted(request)
    found = scan(own_words, "request", ignore=REQUEST_INTENT_RULES)
    if found:
        flags.append(found.as_dict())
    for index, text in enumerate(pasted, start=1):
        found = scan(text, f"pasted text {index}")
        if found:
            flags.append(found.as_dict())
    pii = pii_flag(request, "request")
    if pii:
        flags.append(pii)
    for attachment in attachments:
        source = f"attachment {attachment['name']}"
        found = scan(attachment["text"], source)
        if found:
            flags.append(found.as_dict())
        pii = pii_flag(attachment["text"], source)
        if pii:
            flags.append(pii)
    return flags


def pii_flag(text: str, source: str) -> dict[str, Any] | None:
    """A flag naming the card numbers and valid IBANs in ``text`` (masked), or None."""
    cards = detect_credit_card(text)
    accounts = [a for a in extract_accounts(text) if iban.is_valid(a)]
    if not (cards or accounts):
        return None
    return {
        "kind": "pii",
        "source": source,
        "score": 1.0,
        "rules": ["card_number"] * bool(cards) + ["bank_account"] * bool(accounts),
        "evidence": [f"card ****{c['value'][-4:]}" for c in cards]
        + [f"account {mask_account(a)}" for a in accounts],
    }


def outcome_flags(outcome: ToolOutcome) -> list[dict[str, Any]]:
    """Injection flags for the third-party text inside one tool result."""
    if outcome["tool"] in ECHOING_TOOLS:
        return []  # its text is get_invoice's, flagged where that tool returns it
    subject = outcome["args"].get("invoice_id") or outcome["tool"]
    flags = []
    for field, text in untrusted_texts(outcome["tool"], outcome["result"]):
        found = scan(text, f"{subject} {field}")
        if found:
            flags.append({**found.as_dict(), "step_id": outcome["step_id"]})
    return flags


def provenance(state: AgentState) -> tuple[list[str], list[tuple[str, str]]]:
    """Trusted texts (request, our own structured records) and untrusted ones, by source."""
    own_words, _ = split_pasted(state.get("request", ""))
    trusted = [own_words]
    untrusted = third_party_texts(state)
    for outcome in state.get("outcomes", []):
        if not outcome["ok"]:
            continue
        subject = outcome["args"].get("invoice_id") or outcome["tool"]
        untrusted += [
            (f"{subject} {field}", text)
            for field, text in untrusted_texts(outcome["tool"], outcome["result"])
        ]
        if outcome["result"] is not None:
            stripped = _strip_fields(outcome["tool"], outcome["result"])
            trusted.append(json.dumps(_strip_echoes(stripped, outcome["args"]), default=str))
    return trusted, untrusted


def _strip_fields(tool: str, result: dict[str, Any]) -> dict[str, Any]:
    """The result with its third-party fields emptied."""
    stripped: dict[str, Any] = json.loads(json.dumps(result, default=str))
    for field, _ in untrusted_texts(tool, result):
        target: Any = stripped
        parts = field.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        target[parts[-1]] = ""
    return stripped


def _compact(value: Any) -> str:
    return re.sub(r"[\s,]", "", str(value)).upper()


def _arg_values(args: Any) -> set[str]:
    """Every scalar in a call's arguments, compacted as taint compares them."""
    if isinstance(args, dict):
        return set().union(*(_arg_values(v) for v in args.values()))
    if isinstance(args, list | tuple):
        return set().union(*(_arg_values(v) for v in args))
    if args is None or isinstance(args, bool):
        return set()
    return {_compact(args)}


def _strip_echoes(result: Any, args: dict[str, Any]) -> Any:
    """``result`` with every value that only repeats one of the call's own arguments emptied.

    A result that echoes its arguments (get_invoice's invoice_id, search_policy's query,
    flag_exception's codes) says nothing about where they came from: whoever planned the
    call chose them, perhaps from a vendor's note. Counted as our record, such an echo would
    clear the taint of any value a model first passed through a read.
    """
    echoed = _arg_values(args)

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return "" if _compact(value) in echoed else value
        return value

    return strip(result)


def step_taint(state: AgentState, step: PlanStep) -> list[TaintFinding]:
    """Values in the step's arguments that only third-party text supplied."""
    trusted, untrusted = provenance(state)
    return find_taint(step["args"], trusted=trusted, untrusted=untrusted)


def taint_block_reason(step: PlanStep, findings: list[TaintFinding]) -> str | None:
    """Why policy blocks this step outright, or None when approval (with evidence) suffices."""
    tainted = {f.arg for f in findings}
    if step["tool"] == "schedule_payment" and "invoice_id" in tainted:
        return (
            "Only invoices the clerk named are paid; this one was named only in a document "
            "or message. The payment was not scheduled."
        )
    if step["tool"] == "update_vendor_bank_account" and "new_account" in tainted:
        return (
            "The new bank account comes from a document or message, not from the clerk's "
            "request. Bank details are changed only on the clerk's own instruction after a "
            "call-back to the vendor; the change was not made."
        )
    return None


def planner_view(state: AgentState) -> list[dict[str, Any]]:
    """Outcomes as the planner model sees them: third-party text wrapped as untrusted."""
    return [
        {
            "step_id": o["step_id"],
            "tool": o["tool"],
            "args": o["args"],
            "ok": o["ok"],
            "result": wrap_result(
                o["tool"], o["result"], str(o["args"].get("invoice_id") or o["tool"])
            ),
            "error": o["error"],
        }
        for o in state.get("outcomes", [])
    ]


def respond_view(result: dict[str, Any]) -> dict[str, Any]:
    """The result as the summary model sees it: the policy answer (passage text) wrapped."""
    answer = result.get("answer")
    if not isinstance(answer, dict) or not answer.get("answer"):
        return result
    return {**result, "answer": {**answer, "answer": wrap(answer["answer"], "policy passages")}}


def wrapped_attachments(state: AgentState) -> list[str]:
    """Pasted text and attachments as the models see them."""
    return [wrap(text, source) for source, text in third_party_texts(state)]
