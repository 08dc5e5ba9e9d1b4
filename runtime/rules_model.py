"""The rules model: deterministic routing, plan templates and extractive answers.

It is the default when no chat model is configured and the floor when a model fails or
keeps returning invalid plans. Everything here is a pure function of its inputs.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

from guards.redaction import extract_accounts, mask_account
from state.graph_state import Entities, PlanStep
from state.routes import Route
from tools.gate import ToolOutcome

INVOICE_RE = re.compile(r"\bINV-\d{3,}\b", re.IGNORECASE)
PO_RE = re.compile(r"\bPO-\d{3,}\b", re.IGNORECASE)
VENDOR_RE = re.compile(r"\bV-\d{3,}\b", re.IGNORECASE)

_PAY = re.compile(
    r"\bpay(?:ing)?\b|\bschedule\b|\bfor\s+payment\b|"
    r"\b(?:make|release|issue|send|process|approve|authori[sz]e)\s+"
    r"(?:the\s+|a\s+|its\s+|their\s+)?payments?\b",
    re.IGNORECASE,
)
"""A request to pay: the verb, or making a payment ("payment" alone, as in "payment terms",
is not one)."""
_NOT_PAY = re.compile(
    r"(?:\bnot|\bnever|\bno|\bwithout|n['’]t)\s+(?:\w+\s+)?$|\bhold(?:ing)?\s+off\s+(?:on\s+)?$"
    r"|\bno\s+need\s+to\s+$",
    re.IGNORECASE,
)
"""Matches the text just before a `_PAY` match that negates it ("do not pay", "don't yet
pay", "without paying", "hold off on paying", "no need to pay"); one word may stand
between."""


def refuses_payment(request: str) -> bool:
    """Whether the text says not to pay, anywhere ("do not pay", "without paying", ...)."""
    return any(_NOT_PAY.search(request[: found.start()]) for found in _PAY.finditer(request))


def wants_payment(request: str) -> bool:
    """Whether the clerk asks to pay: a request to pay, and nowhere a request not to.

    Any negated request to pay wins, whatever else the text asks: one intent holds for the
    whole run, and paying is the side of a doubt that cannot be undone.
    """
    return bool(_PAY.search(request)) and not refuses_payment(request)


_STATUS = re.compile(
    r"\bstatus\b|\bwas .* paid\b|\bhas .* been paid\b|\bwhen will\b|"
    r"\bpaid yet\b|\bbeen paid\b|\bwhere(?:'s| is| are)\b",
    re.IGNORECASE,
)
_VENDOR_CHANGE = re.compile(
    r"\b(bank|remittance|iban|account)\b.*\b(change|update|new|"
    r"replace)\b|\b(change|update|new|replace)\b.*\b(bank|remittance|"
    r"iban)\b",
    re.IGNORECASE,
)
_POLICY = re.compile(
    r"\bpolicy\b|\bwhat is\b|\bwhat are\b|\bhow (many|much|long|do|does)\b|"
    r"\bwho (can|may|must)\b|\bthreshold\b|\btolerance\b|\ballowed\b|\brules?\b",
    re.IGNORECASE,
)
_INVOICE_WORDS = re.compile(
    r"\b(invoice|validate|match|stage|process|approve|pay|check|verify|review|reconcile)\w*\b",
    re.IGNORECASE,
)
_AP_WORDS = re.compile(
    r"\b(invoice|vendor|supplier|payment|pay|po|purchase order|receipt|ap|bank detail|"
    r"bank account|remittance|payable)s?\b",
    re.IGNORECASE,
)


class RouteDecision(BaseModel):
    """A router's answer: route, confidence and the ids it found."""

    route: Route = Field(description="The route for this request.")
    confidence: float = Field(ge=0, le=1, description="Confidence in the route, 0..1.")
    invoice_ids: list[str] = Field(default=[], description="Invoice ids, e.g. INV-1001.")
    po_numbers: list[str] = Field(default=[], description="PO numbers, e.g. PO-2001.")
    vendor_ids: list[str] = Field(default=[], description="Vendor ids, e.g. V-001.")
    bank_accounts: list[str] = Field(default=[], description="Bank accounts in the request.")
    wants_payment: bool = Field(default=False, description="True if the clerk asks to pay.")
    rationale: str = Field(default="", description="One sentence on why.")


def _unique_upper(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(value.upper().replace(" ", ""), None)
    return list(seen)


def extract_entities(request: str) -> Entities:
    """Ids and accounts that literally appear in the request."""
    return Entities(
        invoice_ids=_unique_upper(INVOICE_RE.findall(request)),
        po_numbers=_unique_upper(PO_RE.findall(request)),
        vendor_ids=_unique_upper(VENDOR_RE.findall(request)),
        bank_accounts=extract_accounts(request),
        wants_payment=wants_payment(request),
    )


def vendor_change_problem(entities: Entities) -> str | None:
    """Why a bank change cannot be planned from these entities, or None if it can.

    It needs one vendor and one account: with two accounts, which is the new one is a guess
    (the plan takes the first, in "from OLD to NEW" the one being replaced).
    """
    vendors, accounts = entities["vendor_ids"], entities["bank_accounts"]
    if not (vendors and accounts):
        return "A bank change needs the vendor id (V-…) and the new account in the request."
    if len(vendors) > 1:
        return (
            f"A bank change is for one vendor; the request names {len(vendors)} "
            f"({', '.join(vendors)}). Send one request per vendor."
        )
    if len(accounts) > 1:
        return (
            f"A bank change needs exactly one new account; the request names {len(accounts)} "
            f"({', '.join(mask_account(a) or '' for a in accounts)}). Write only the new "
            "account in the request."
        )
    return None


def rules_route(request: str) -> RouteDecision:
    """Classify a request with keyword rules; ambiguity escalates rather than guesses."""
    e = extract_entities(request)
    base: dict[str, Any] = {
        "invoice_ids": e["invoice_ids"],
        "po_numbers": e["po_numbers"],
        "vendor_ids": e["vendor_ids"],
        "bank_accounts": e["bank_accounts"],
        "wants_payment": e["wants_payment"],
    }
    if _VENDOR_CHANGE.search(request) and (e["vendor_ids"] or e["bank_accounts"]):
        unclear = vendor_change_problem(e)
        if unclear is None:
            return RouteDecision(
                route=Route.VENDOR_CHANGE,
                confidence=0.9,
                rationale="bank account change for a named vendor",
                **base,
            )
        return RouteDecision(route=Route.ESCALATE, confidence=0.4, rationale=unclear, **base)
    if e["invoice_ids"] and _STATUS.search(request):
        return RouteDecision(
            route=Route.PAYMENT_STATUS,
            confidence=0.85,
            rationale="asks where an invoice's payment stands",
            **base,
        )
    if e["vendor_ids"] and not e["invoice_ids"] and _STATUS.search(request):
        return RouteDecision(
            route=Route.PAYMENT_STATUS,
            confidence=0.8,
            rationale="asks where a vendor's invoices stand",
            **base,
        )
    if e["invoice_ids"] and _INVOICE_WORDS.search(request):
        return RouteDecision(
            route=Route.INVOICE_PROCESSING,
            confidence=0.9,
            rationale="asks to process named invoices",
            **base,
        )
    if (_POLICY.search(request) and _AP_WORDS.search(request)) or re.search(
        r"\bpolicy\b", request, re.IGNORECASE
    ):
        return RouteDecision(
            route=Route.POLICY_QUESTION,
            confidence=0.75,
            rationale="asks what AP policy says",
            **base,
        )
    if _AP_WORDS.search(request) or e["invoice_ids"] or e["vendor_ids"]:
        return RouteDecision(
            route=Route.ESCALATE,
            confidence=0.3,
            rationale="about accounts payable, but no actionable ids",
            **base,
        )
    return RouteDecision(
        route=Route.OUT_OF_SCOPE,
        confidence=0.8,
        rationale="not an accounts-payable request",
        **base,
    )


def _step(phase: int, index: int, tool: str, args: dict[str, Any], why: str) -> PlanStep:
    return PlanStep(step_id=f"p{phase}s{index}", tool=tool, args=args, why=why)


def _last_ok(outcomes: list[ToolOutcome], tool: str, key: str, value: str) -> ToolOutcome | None:
    for outcome in reversed(outcomes):
        if outcome["tool"] == tool and outcome["args"].get(key) == value:
            return outcome if outcome["ok"] else None
    return None


def _failed_action(outcomes: list[ToolOutcome], invoice_id: str) -> ToolOutcome | None:
    for outcome in reversed(outcomes):
        if outcome["args"].get("invoice_id") != invoice_id:
            continue
        if outcome["tool"] in {"stage_invoice", "schedule_payment"}:
            return None if outcome["ok"] else outcome
    return None


def rules_plan(
    route: str, entities: Entities, outcomes: list[ToolOutcome], phase: int, request: str
) -> tuple[list[PlanStep], bool]:
    """The next steps for ``route`` given what has happened so far, and whether final."""
    steps: list[PlanStep] = []

    def add(tool: str, args: dict[str, Any], why: str) -> None:
        steps.append(_step(phase, len(steps) + 1, tool, args, why))

    if route == Route.INVOICE_PROCESSING:
        for inv in entities["invoice_ids"]:
            match = _last_ok(outcomes, "compute_match", "invoice_id", inv)
            if match is None:
                if any(
                    o["tool"] == "get_invoice"
                    and o["args"].get("invoice_id") == inv
                    and not o["ok"]
                    for o in outcomes
                ):
                    continue  # unknown invoice: respond reports it
                add("get_invoice", {"invoice_id": inv}, f"Read {inv} and its lines.")
                add(
                    "compute_match",
                    {"invoice_id": inv},
                    f"Three-way match {inv} against its PO and goods receipts.",
                )
        if steps:
            return steps, False
        for inv in entities["invoice_ids"]:
            match = _last_ok(outcomes, "compute_match", "invoice_id", inv)
            if match is None or match["result"] is None:
                continue
            failed = _failed_action(outcomes, inv)
            if failed is not None:
                if not _last_ok(outcomes, "flag_exception", "invoice_id", inv):
                    err = failed["error"] or {"code": "failed", "message": ""}
                    add(
                        "flag_exception",
                        {
                            "invoice_id": inv,
                            "codes": [err["code"]],
                            "detail": err["message"] or err["code"],
                        },
                        f"{failed['tool']} failed for {inv}; people must look at it.",
                    )
                continue
            if any(
                o["tool"] in {"stage_invoice", "flag_exception", "schedule_payment"}
                and o["args"].get("invoice_id") == inv
                for o in outcomes
            ):
                continue  # already acted on in an earlier phase
            result = match["result"]
            exceptions = result["exceptions"]
            codes = [e["code"] for e in exceptions]
            detail = " ".join(e["detail"] for e in exceptions)
            if result["verdict"] == "exception":
                add(
                    "flag_exception",
                    {"invoice_id": inv, "codes": codes, "detail": detail},
                    f"{inv} does not match ({', '.join(codes)}); route it to people.",
                )
                continue
            if result["verdict"] == "review":
                add(
                    "flag_exception",
                    {"invoice_id": inv, "codes": codes, "detail": detail},
                    f"{inv} needs a reviewer's override ({', '.join(codes)}).",
                )
                if not entities["wants_payment"]:
                    continue  # validation only: the flag hands it to people; no override asked
                add(
                    "stage_invoice",
                    {"invoice_id": inv, "note": "Staged on reviewer override: " + ", ".join(codes)},
                    f"Stage {inv} if a controller accepts: {detail}",
                )
            else:
                add(
                    "stage_invoice",
                    {"invoice_id": inv, "note": "Three-way match clean."},
                    f"{inv} matches its PO and receipts; stage it for payment.",
                )
            if entities["wants_payment"]:
                add(
                    "schedule_payment",
                    {
                        "invoice_id": inv,
                        "amount": result["invoice_total"],
                        "currency": result["currency"],
                    },
                    f"Pay {inv} in full ({result['invoice_total']} {result['currency']}) "
                    "to the vendor master account, as requested.",
                )
        return steps, True

    if route == Route.VENDOR_CHANGE:
        vendor, account = entities["vendor_ids"][0], entities["bank_accounts"][0]
        add("get_vendor", {"vendor_id": vendor}, f"Read the vendor master of {vendor}.")
        add(
            "update_vendor_bank_account",
            {"vendor_id": vendor, "new_account": account, "reason": request[:1000]},
            f"Change {vendor}'s remittance account to one ending {account[-4:]}, as requested.",
        )
        add(
            "send_vendor_email",
            {
                "vendor_id": vendor,
                "subject": "Your remittance account was changed",
                "body": (
                    "We changed the bank account we pay you to one ending "
                    f"{account[-4:]}. If you did not ask for this, call your AP contact "
                    "at once using the number in your contract, not one from an email."
                ),
            },
            f"Tell {vendor}'s contact on file, so a fraudulent change is noticed.",
        )
        return steps, True

    if route == Route.PAYMENT_STATUS:
        for inv in entities["invoice_ids"]:
            add("payment_status", {"invoice_id": inv}, f"Look up payments for {inv}.")
        for vendor in entities["vendor_ids"]:
            add("find_invoices", {"vendor_id": vendor}, f"List {vendor}'s invoices.")
        return steps, True

    if route == Route.POLICY_QUESTION:
        add("search_policy", {"query": request[:500]}, "Find the policy passages that answer.")
        return steps, True

    return steps, True


def extractive_answer(outcomes: list[ToolOutcome], max_passages: int = 2) -> dict[str, Any]:
    """Answer a policy question with the best retrieved passages, cited by id."""
    passages: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome["tool"] == "search_policy" and outcome["ok"] and outcome["result"]:
            passages.extend(outcome["result"]["passages"])
    chosen = passages[:max_passages]
    if not chosen:
        return {"answer": "", "citations": []}
    answer = " ".join(f"{p['body']} [{p['passage_id']}]" for p in chosen)
    return {"answer": answer, "citations": [p["passage_id"] for p in chosen]}
