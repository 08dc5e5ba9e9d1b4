"""Every tool contract is complete, strict and scoped; the gate's checks need no database."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from state.routes import Route
from tools.contract import Tier, args_hash, idempotency_key
from tools.gate import ToolGate
from tools.registry import DEFAULT_REGISTRY

REQUIRED_TOOLS = {
    "get_invoice",
    "get_purchase_order",
    "get_goods_receipts",
    "get_vendor",
    "find_invoices",
    "compute_match",
    "search_policy",
    "payment_status",
    "stage_invoice",
    "flag_exception",
    "schedule_payment",
    "send_vendor_email",
    "update_vendor_bank_account",
}
EXPECTED_TIERS = {
    "stage_invoice": Tier.REVERSIBLE,
    "flag_exception": Tier.REVERSIBLE,
    "schedule_payment": Tier.IRREVERSIBLE,
    "send_vendor_email": Tier.IRREVERSIBLE,
    "update_vendor_bank_account": Tier.DESTRUCTIVE,
}
TOOLS = list(DEFAULT_REGISTRY)


def _no_database() -> Any:
    raise AssertionError("these checks must not touch the database")


GATE = ToolGate(_no_database)


def test_every_required_tool_is_registered() -> None:
    assert REQUIRED_TOOLS <= set(DEFAULT_REGISTRY.names())


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_contract_is_described_strict_and_tiered(tool: Any) -> None:
    assert len(tool.description) > 20, f"{tool.name} needs a real description"
    schema = tool.parameters_schema()
    for name, prop in schema.get("properties", {}).items():
        assert prop.get("description"), f"{tool.name}.{name} has no description"
    assert tool.args_model.model_config.get("extra") == "forbid"
    assert tool.tier is EXPECTED_TIERS.get(tool.name, Tier.READ)
    assert tool.scopes, f"{tool.name} is usable on no route"
    assert tool.scopes <= {r.value for r in Route}
    assert tool.as_openai_tool()["function"]["name"] == tool.name


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_unknown_argument_is_rejected(tool: Any) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        tool.args_model.model_validate({"surprise": 1})


def test_tiers_decide_approval_and_keys() -> None:
    assert not Tier.READ.needs_approval and not Tier.READ.needs_idempotency_key
    assert not Tier.REVERSIBLE.needs_approval and Tier.REVERSIBLE.needs_idempotency_key
    assert Tier.IRREVERSIBLE.needs_approval and Tier.DESTRUCTIVE.needs_approval


def test_routes_grant_least_privilege() -> None:
    policy_tools = {t.name for t in DEFAULT_REGISTRY.for_route(Route.POLICY_QUESTION)}
    assert policy_tools == {"search_policy"}
    status_tools = {t.name for t in DEFAULT_REGISTRY.for_route(Route.PAYMENT_STATUS)}
    assert all(DEFAULT_REGISTRY.get(n).tier is Tier.READ for n in status_tools)  # type: ignore[union-attr]
    assert DEFAULT_REGISTRY.for_route(Route.OUT_OF_SCOPE) == []
    assert DEFAULT_REGISTRY.for_route(Route.ESCALATE) == []
    vendor_tools = {t.name for t in DEFAULT_REGISTRY.for_route(Route.VENDOR_CHANGE)}
    assert "schedule_payment" not in vendor_tools


def test_gate_refuses_unknown_tool_with_the_allowed_list() -> None:
    error = GATE.validate("policy_question", "wire_money", {})
    assert isinstance(error, dict)
    assert error["code"] == "unknown_tool"
    assert "search_policy" in error["hint"]


def test_gate_refuses_tool_outside_route_scope() -> None:
    args = {"invoice_id": "INV-1001", "amount": "10.00", "currency": "USD"}
    error = GATE.validate("policy_question", "schedule_payment", args)
    assert isinstance(error, dict) and error["code"] == "out_of_scope"


@pytest.mark.parametrize(
    "args, field",
    [
        ({"invoice_id": "INV-1001", "amount": "-5", "currency": "USD"}, "amount"),
        ({"invoice_id": "INV-1001", "amount": "5", "currency": "dollars"}, "currency"),
        ({"invoice_id": "INV-1001", "amount": "5", "currency": "USD", "payee": "X"}, "payee"),
        ({"amount": "5", "currency": "USD"}, "invoice_id"),
    ],
)
def test_gate_names_the_bad_field(args: dict[str, Any], field: str) -> None:
    error = GATE.validate("invoice_processing", "schedule_payment", args)
    assert isinstance(error, dict) and error["code"] == "invalid_arguments"
    assert field in error["message"]


def test_gate_refuses_non_object_arguments() -> None:
    error = GATE.validate("invoice_processing", "get_invoice", ["INV-1001"])
    assert isinstance(error, dict) and error["code"] == "invalid_arguments"


def test_gate_normalizes_valid_arguments() -> None:
    checked = GATE.validate(
        "invoice_processing",
        "schedule_payment",
        {"invoice_id": " INV-1001 ", "amount": 12.5, "currency": "USD"},
    )
    assert isinstance(checked, tuple)
    assert checked[1] == {
        "invoice_id": "INV-1001",
        "amount": "12.50",
        "currency": "USD",
        "pay_on": None,
    }


def test_idempotency_key_depends_on_thread_step_tool_and_args_only() -> None:
    args = {"invoice_id": "INV-1", "amount": "1.00"}
    key = idempotency_key("t1", "p2s1", "schedule_payment", args)
    assert key == idempotency_key("t1", "p2s1", "schedule_payment", dict(reversed(args.items())))
    assert key != idempotency_key("t2", "p2s1", "schedule_payment", args)
    assert key != idempotency_key("t1", "p2s2", "schedule_payment", args)
    assert key != idempotency_key("t1", "p2s1", "schedule_payment", {**args, "amount": "2.00"})
    assert args_hash("schedule_payment", args) != args_hash("stage_invoice", args)
