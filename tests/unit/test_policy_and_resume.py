"""Who must approve what, and what a valid resume looks like."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from runtime.context import Context
from runtime.errors import ConfigError, ResumeError
from state.approvals import ApprovalRequest, parse_resume
from tools.contract import Reviewer, Tier
from tools.policy import approval_requirement

CTX = Context(approval_threshold="10000", dual_control_threshold="50000")


def pay(amount: str) -> Any:
    return approval_requirement(
        "schedule_payment", Tier.IRREVERSIBLE, {"invoice_id": "INV-1", "amount": amount}, CTX
    )


def test_reads_and_reversible_steps_need_nobody() -> None:
    assert not approval_requirement("get_invoice", Tier.READ, {}, CTX).required
    assert not approval_requirement("stage_invoice", Tier.REVERSIBLE, {}, CTX).required


def test_every_payment_needs_one_approver() -> None:
    req = pay("100.00")
    assert req.required and req.min_approvers == 1 and req.required_role is None
    assert req.unmet((), "clerk") != []
    assert req.unmet((Reviewer("rev", "approver"),), "clerk") == []


def test_requester_never_counts() -> None:
    assert pay("100.00").unmet((Reviewer("clerk", "controller"),), "clerk") != []


def test_a_requester_who_is_a_controller_does_not_give_the_controllers_signature() -> None:
    req = pay("20000.00")
    both = (Reviewer("clerk", "controller"), Reviewer("rev", "approver"))
    assert req.unmet(both, "clerk") == ["needs an approver with role 'controller'"]


def test_an_amount_at_a_threshold_is_not_over_it() -> None:
    at_limit = pay("10000.00")
    assert (at_limit.min_approvers, at_limit.required_role) == (1, None)
    at_dual = pay("50000.00")
    assert (at_dual.min_approvers, at_dual.required_role) == (1, "controller")


def test_over_approval_threshold_needs_a_controller() -> None:
    req = pay("10000.01")
    assert req.required_role == "controller"
    assert req.unmet((Reviewer("rev", "approver"),), "clerk") == [
        "needs an approver with role 'controller'"
    ]
    assert req.unmet((Reviewer("boss", "controller"),), "clerk") == []


def test_over_dual_threshold_needs_two_distinct_one_controller() -> None:
    req = pay("50000.01")
    assert req.min_approvers == 2
    assert req.unmet((Reviewer("boss", "controller"),), "clerk")
    assert req.unmet((Reviewer("a", "approver"), Reviewer("b", "approver")), "clerk")
    assert req.unmet((Reviewer("boss", "controller"), Reviewer("a", "approver")), "clerk") == []


def test_destructive_needs_dual_control() -> None:
    req = approval_requirement("update_vendor_bank_account", Tier.DESTRUCTIVE, {}, CTX)
    assert req.min_approvers == 2 and req.required_role == "controller"


def test_context_rejects_inconsistent_thresholds() -> None:
    with pytest.raises(ConfigError, match="dual_control_threshold"):
        Context(approval_threshold="100", dual_control_threshold="50")
    with pytest.raises(ConfigError, match="approval_threshold"):
        Context(approval_threshold="lots")


def pay_in(amount: str, currency: str, fx_rates: str = "") -> Any:
    run = Context(approval_threshold="10000", dual_control_threshold="50000", fx_rates=fx_rates)
    args = {"invoice_id": "INV-1", "amount": amount, "currency": currency}
    return approval_requirement("schedule_payment", Tier.IRREVERSIBLE, args, run)


def test_thresholds_compare_a_foreign_amount_at_its_rate_unrounded() -> None:
    below = pay_in("9000.00", "GBP", "GBP=1.11")  # 9,990 USD
    assert (below.min_approvers, below.required_role) == (1, None)
    over = pay_in("9000.00", "GBP", "GBP=1.27")  # 11,430 USD, though 9,000 < 10,000
    assert (over.min_approvers, over.required_role) == (1, "controller")
    assert over.facts["amount_in_approval_currency"] == "11430.00"
    assert "9000.00 GBP (11430.00 USD)" in over.reasons[-1]
    hair = pay_in("9090.91", "EUR", "EUR=1.1")  # 10,000.001 USD, 10,000.00 when rounded
    assert hair.required_role == "controller"
    dual = pay_in("45500.00", "EUR", "EUR=1.10,GBP=1.27")  # 50,050 USD
    assert (dual.min_approvers, dual.required_role) == (2, "controller")


def test_a_currency_without_a_rate_needs_dual_control() -> None:
    req = pay_in("10.00", "JPY", "EUR=1.08")
    assert (req.min_approvers, req.required_role) == (2, "controller")
    assert "no rate from JPY to USD" in req.reasons[-1]
    assert "PAYABLES_FX_RATES" in req.reasons[-1]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fx_rates": "EUR"}, "'EUR' is not CURRENCY=RATE"),
        ({"fx_rates": "eur=1.08"}, "'eur=1.08' is not CURRENCY=RATE"),
        ({"fx_rates": "EUR=0"}, "rate for EUR must be a number > 0, got '0'"),
        ({"fx_rates": "EUR=abc"}, "rate for EUR must be a number > 0, got 'abc'"),
        ({"fx_rates": "EUR=NaN"}, "rate for EUR must be a number > 0"),
        ({"fx_rates": "EUR=1.08,EUR=1.1"}, "names EUR twice"),
        ({"fx_rates": "USD=1"}, "names the approval currency USD itself"),
        ({"approval_currency": "usd"}, "approval_currency .* must be an ISO 4217 code"),
    ],
)
def test_context_rejects_bad_currency_settings(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Context(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PAYABLES_MAX_STEPS", "0", r"max_steps \(PAYABLES_MAX_STEPS\) must be >= 1, got 0"),
        (
            "PAYABLES_BREAKER_FAILURES",
            "0",
            r"breaker_failure_threshold \(PAYABLES_BREAKER_FAILURES\) must be >= 1",
        ),
        ("PAYABLES_MAX_COST_USD", "nan", r"max_cost_usd \(PAYABLES_MAX_COST_USD\) must be >= 0"),
        (
            "PAYABLES_BUDGET_WARN_FRACTION",
            "1.5",
            r"budget_warn_fraction \(PAYABLES_BUDGET_WARN_FRACTION\) must be in \(0, 1\]",
        ),
        (
            "PAYABLES_APPROVAL_THRESHOLD",
            "-1",
            r"approval_threshold \(PAYABLES_APPROVAL_THRESHOLD\) must be a finite number >= 0",
        ),
        # Once a tenant named "" (its own audit chain, cost cap and run listing).
        ("PAYABLES_TENANT", "  ", r"tenant \(PAYABLES_TENANT\) must name a tenant, got '  '"),
    ],
)
def test_a_bad_setting_from_the_environment_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    # The operator set a variable, not a field: the error must say which one to change.
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        Context()


def test_an_empty_setting_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYABLES_TENANT", "")
    monkeypatch.setenv("PAYABLES_APPROVAL_CURRENCY", "")
    monkeypatch.setenv("PAYABLES_MAX_STEPS", "")
    settings = Context()
    assert (settings.tenant, settings.approval_currency, settings.max_steps) == (
        "default",
        "USD",
        80,
    )


def test_a_bad_setting_without_a_variable_is_named_alone() -> None:
    with pytest.raises(ConfigError, match=r"^max_replans must be >= 0, got -1\.$"):
        Context(max_replans=-1)


def test_fx_rates_are_in_the_approval_currency() -> None:
    run = Context(approval_currency="EUR", fx_rates=" USD = 0.5 , ")
    assert run.in_approval_currency(Decimal("10"), "USD") == Decimal("5.0")
    assert run.in_approval_currency(Decimal("10"), "EUR") == Decimal("10")
    assert run.in_approval_currency(Decimal("10"), "GBP") is None


def request(actions: int = 1, approved_by: list[dict[str, str]] | None = None) -> ApprovalRequest:
    return ApprovalRequest(
        action_requests=[{"name": "schedule_payment", "args": {}, "description": ""}] * actions,
        review_configs=[
            {"action_name": "schedule_payment", "allowed_decisions": ["approve", "edit", "reject"]}
        ]
        * actions,
        evidence=[{}] * actions,
        steps=[
            {
                "step_id": f"p2s{i}",
                "tool": "schedule_payment",
                "tier": "irreversible",
                "min_approvers": 1,
                "required_role": None,
                "reasons": [],
                "approved_by": approved_by or [],
            }
            for i in range(actions)
        ],
        requester="clerk",
        request="pay",
        error=None,
    )


REVIEWER = {"id": "rev-1", "role": "approver"}


def test_valid_resume_parses() -> None:
    resume = parse_resume({"decisions": [{"type": "approve"}], "reviewer": REVIEWER}, request())
    assert resume.reviewer.id == "rev-1"


@pytest.mark.parametrize(
    "value, message",
    [
        ("yes", "Malformed resume"),
        ({"decisions": [{"type": "approve"}]}, "reviewer"),
        ({"decisions": [{"type": "maybe"}], "reviewer": REVIEWER}, "decisions.0.type"),
        ({"decisions": [], "reviewer": REVIEWER}, "decisions"),
        (
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "x", "role": "ceo"}},
            "reviewer.role",
        ),
        ({"decisions": [{"type": "approve"}], "reviewer": REVIEWER, "extra": 1}, "extra"),
        (
            {"decisions": [{"type": "approve"}, {"type": "approve"}], "reviewer": REVIEWER},
            "one decision per action",
        ),
        (
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "clerk", "role": "controller"}},
            "cannot also approve",
        ),
        ({"decisions": [{"type": "reject"}], "reviewer": REVIEWER}, "needs a message"),
        ({"decisions": [{"type": "edit"}], "reviewer": REVIEWER}, "edited_action"),
        (
            {
                "decisions": [
                    {"type": "edit", "edited_action": {"name": "send_vendor_email", "args": {}}}
                ],
                "reviewer": REVIEWER,
            },
            "must stay 'schedule_payment'",
        ),
    ],
)
def test_bad_resume_is_refused_with_a_reason(value: Any, message: str) -> None:
    with pytest.raises(ResumeError, match=message):
        parse_resume(value, request())


def test_a_malformed_resume_is_shown_a_well_formed_example() -> None:
    with pytest.raises(ResumeError) as refused:
        parse_resume("yes", request())
    example = str(refused.value).split("Expected ", 1)[1].rstrip(".")
    assert parse_resume(json.loads(example), request()).reviewer.role == "controller"


def test_same_reviewer_cannot_approve_twice() -> None:
    with pytest.raises(ResumeError, match="different reviewer"):
        parse_resume(
            {"decisions": [{"type": "approve"}], "reviewer": REVIEWER},
            request(approved_by=[REVIEWER]),
        )


@pytest.mark.parametrize(
    ("signed_as", "missing"),
    [("approver", "a controller's signature"), ("controller", "the next signature")],
)
def test_a_second_signature_refused_says_which_signature_is_missing(
    signed_as: str, missing: str
) -> None:
    dual_control = request(approved_by=[{"id": "rev-1", "role": signed_as}])
    dual_control["steps"][0].update(min_approvers=2, required_role="controller")
    again = {"id": "rev-1", "role": "approver" if signed_as == "controller" else "controller"}
    with pytest.raises(ResumeError) as refused:
        parse_resume({"decisions": [{"type": "approve"}], "reviewer": again}, dual_control)
    assert f"so {missing} must come from a different reviewer" in str(refused.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"m": [true, 0.1]}', r"PAYABLES_MODEL_PRICES\['m'\] must be \[input, output\]"),
        ('{"m": [0.1, -1]}', r"PAYABLES_MODEL_PRICES\['m'\] must be \[input, output\]"),
        ('{"m": [0.1]}', r"PAYABLES_MODEL_PRICES\['m'\] must be \[input, output\]"),
        ("[1, 2]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_model_prices_from_the_environment_are_checked(
    monkeypatch: pytest.MonkeyPatch, raw: str, message: str
) -> None:
    monkeypatch.setenv("PAYABLES_MODEL_PRICES", raw)
    with pytest.raises(ConfigError, match=message):
        Context()


def test_model_prices_from_the_environment_add_to_the_list_prices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYABLES_MODEL_PRICES", '{"local": [0, 0.5]}')
    prices = Context().model_prices
    assert prices["local"] == (0.0, 0.5) and "gpt-4o-mini" in prices


def test_an_answer_bound_to_another_request_is_refused_and_the_binding_dropped() -> None:
    from nodes.approval import answering
    from state.approvals import ANSWERS_REQUEST

    answer = {"decisions": [{"type": "approve"}], "reviewer": {"id": "ctl-2"}}
    assert answering(answer, "k2") is answer  # the CLI binds nothing
    assert answering({**answer, ANSWERS_REQUEST: "k2"}, "k2") == answer
    with pytest.raises(ResumeError, match="earlier version of this approval request"):
        answering({**answer, ANSWERS_REQUEST: "k1"}, "k2")
