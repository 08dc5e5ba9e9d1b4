"""The rules model: routing table and plan templates."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.rules_model import extract_entities, extractive_answer, rules_plan, rules_route
from state.routes import Route
from tools.gate import ToolOutcome


@pytest.mark.parametrize(
    "text, route",
    [
        ("Validate INV-1001 and pay it if it matches", Route.INVOICE_PROCESSING),
        ("Validate INV-1002", Route.INVOICE_PROCESSING),
        ("Please pay INV-1005, it is due this week.", Route.INVOICE_PROCESSING),
        ("What is the status of payment for INV-1006?", Route.PAYMENT_STATUS),
        ("Has INV-1006 been paid?", Route.PAYMENT_STATUS),
        ("What is our price variance tolerance for invoice matching?", Route.POLICY_QUESTION),
        ("Who must approve a payment over 50,000?", Route.POLICY_QUESTION),
        ("Change the bank account of vendor V-006 to NL23KNAB0257394811", Route.VENDOR_CHANGE),
        ("Update the bank details for our supplier", Route.ESCALATE),
        ("pay the invoice please", Route.ESCALATE),
        ("Book me a flight to Denver", Route.OUT_OF_SCOPE),
    ],
)
def test_routes(text: str, route: Route) -> None:
    assert rules_route(text).route is route


def test_entities_are_extracted_verbatim_and_normalized() -> None:
    e = extract_entities("pay inv-1001 and INV-1002 for V-003, account nl23 knab 0257 3948 11")
    assert e["invoice_ids"] == ["INV-1001", "INV-1002"]
    assert e["vendor_ids"] == ["V-003"]
    assert e["bank_accounts"] == ["NL23KNAB0257394811"]
    assert e["wants_payment"] is True


@pytest.mark.parametrize(
    ("text", "wants_payment"),
    [
        ("Validate INV-1001 and pay it if it matches", True),
        ("Pay INV-1001", True),
        ("Process and pay INV-1014", True),
        ("Validate INV-1001 and, if it matches, pay it", True),
        ("Don't forget to pay INV-1001", True),
        ("Validate INV-1001 and schedule its payment", True),
        ("Process INV-1001 for payment", True),
        ("Please make the payment for INV-1001", True),
        # the clerk says not to pay
        ("Validate INV-1001 but do not pay it", False),
        ("Validate INV-1001, don't pay it yet", False),
        ("Validate INV-1001 without paying it", False),
        ("Check INV-1001; never pay it before the credit note arrives", False),
        ("Validate INV-1001 and hold off on paying it", False),
        ("Validate INV-1001, no need to pay it", False),
        ("Validate INV-1001 and do not schedule a payment", False),
        ("Validate INV-1001. No payment yet, please.", False),
        ("Pay INV-1001 but don't pay INV-1002", False),  # one intent for the run: none
        # "payment" as a noun is not a request to pay
        ("Check the payment terms on INV-1001", False),
        ("Verify INV-1001 and its payment details", False),
    ],
)
def test_pay_intent_is_read_from_what_the_clerk_asks(text: str, wants_payment: bool) -> None:
    assert extract_entities(text)["wants_payment"] is wants_payment
    assert rules_route(text).wants_payment is wants_payment
    entities = {**ENTITIES, "wants_payment": extract_entities(text)["wants_payment"]}
    steps, _ = rules_plan("invoice_processing", entities, [match("match")], 2, text)
    assert ("schedule_payment" in [s["tool"] for s in steps]) is wants_payment


@pytest.mark.parametrize(
    "text",
    [
        "Change the bank account of vendor V-006 from NL23KNAB0257394811 to NL91ABNA0417164300",
        "Change the bank account of vendor V-006 from nl23knab0257394811 to gb94barc10201530093459",
        "Update V-006: old account NL23 KNAB 0257 3948 11, new account GB94 BARC 1020 1530 0934 59",
    ],
)
def test_a_bank_change_naming_two_accounts_escalates(text: str) -> None:
    """Which one is the new account is a guess; the plan template would take the first,
    the one being replaced."""
    assert len(extract_entities(text)["bank_accounts"]) == 2
    decision = rules_route(text)
    assert decision.route is Route.ESCALATE
    assert "one new account" in decision.rationale


def test_a_bank_change_for_two_vendors_escalates() -> None:
    decision = rules_route("Change the bank account of V-006 and V-007 to NL91ABNA0417164300")
    assert decision.route is Route.ESCALATE
    assert "one vendor" in decision.rationale


def outcome(
    tool: str,
    args: dict[str, Any],
    result: dict[str, Any] | None,
    ok: bool = True,
    step: str = "p1s2",
) -> ToolOutcome:
    return ToolOutcome(
        step_id=step,
        tool=tool,
        tier="read",
        ok=ok,
        args=args,
        result=result,
        error=None
        if ok
        else {"code": "already_paid", "message": "paid", "hint": "", "retryable": False},
        idempotency_key=None,
        replayed=False,
    )


def match(verdict: str, exceptions: list[dict[str, Any]] | None = None) -> ToolOutcome:
    return outcome(
        "compute_match",
        {"invoice_id": "INV-1"},
        {
            "verdict": verdict,
            "exceptions": exceptions or [],
            "invoice_total": "100.00",
            "currency": "USD",
        },
    )


ENTITIES: Any = {
    "invoice_ids": ["INV-1"],
    "po_numbers": [],
    "vendor_ids": [],
    "bank_accounts": [],
    "wants_payment": True,
}


def test_first_phase_reads_and_matches() -> None:
    steps, final = rules_plan("invoice_processing", ENTITIES, [], 1, "pay INV-1")
    assert [s["tool"] for s in steps] == ["get_invoice", "compute_match"]
    assert [s["step_id"] for s in steps] == ["p1s1", "p1s2"]
    assert final is False


def test_clean_match_stages_then_pays_in_full() -> None:
    steps, final = rules_plan("invoice_processing", ENTITIES, [match("match")], 2, "")
    assert [s["tool"] for s in steps] == ["stage_invoice", "schedule_payment"]
    assert steps[1]["args"] == {"invoice_id": "INV-1", "amount": "100.00", "currency": "USD"}
    assert final is True


def test_without_pay_intent_only_stages() -> None:
    entities = {**ENTITIES, "wants_payment": False}
    steps, _ = rules_plan("invoice_processing", entities, [match("match")], 2, "")
    assert [s["tool"] for s in steps] == ["stage_invoice"]


def test_exception_is_flagged_and_never_paid() -> None:
    exc = [{"code": "duplicate_invoice", "detail": "dup", "blocking": True}]
    steps, _ = rules_plan("invoice_processing", ENTITIES, [match("exception", exc)], 2, "")
    assert [s["tool"] for s in steps] == ["flag_exception"]
    assert steps[0]["args"]["codes"] == ["duplicate_invoice"]


def test_review_flags_then_asks_for_override() -> None:
    exc = [{"code": "price_variance_over_tolerance", "detail": "10%", "blocking": False}]
    steps, _ = rules_plan("invoice_processing", ENTITIES, [match("review", exc)], 2, "")
    assert [s["tool"] for s in steps] == ["flag_exception", "stage_invoice", "schedule_payment"]


def test_failed_payment_is_flagged_on_replan() -> None:
    history = [
        match("match"),
        outcome("stage_invoice", {"invoice_id": "INV-1"}, {}, step="p2s1"),
        outcome("schedule_payment", {"invoice_id": "INV-1"}, None, ok=False, step="p2s2"),
    ]
    steps, final = rules_plan("invoice_processing", ENTITIES, history, 3, "")
    assert [s["tool"] for s in steps] == ["flag_exception"]
    assert steps[0]["args"]["codes"] == ["already_paid"] and final


def test_extractive_answer_cites_what_was_retrieved() -> None:
    search = outcome(
        "search_policy",
        {"query": "q"},
        {
            "passages": [
                {"passage_id": "AP-TOL-1", "body": "Two percent."},
                {"passage_id": "AP-TOL-2", "body": "Measured per line."},
                {"passage_id": "AP-X", "body": "Other."},
            ]
        },
    )
    answer = extractive_answer([search])
    assert answer["citations"] == ["AP-TOL-1", "AP-TOL-2"]
    assert "Two percent. [AP-TOL-1]" in answer["answer"]
    assert extractive_answer([]) == {"answer": "", "citations": []}
