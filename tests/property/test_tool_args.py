"""Tool arguments: whatever a model (or a reviewer's edit) proposes, the gate either runs
the call or returns a structured `ToolError`; invalid arguments never reach a handler.

`ToolGate.validate` (no database) sees every tool in `DEFAULT_REGISTRY` with arguments
generated from each tool's fields, arbitrary JSON, and mutations of valid arguments.
`ToolGate.call` on real Postgres sees a smaller sample: the outcome is always a
`ToolOutcome`, never an exception, and nothing is written unless the call ran whole.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from runtime.context import Context
from state.db import Database
from state.routes import Route
from tests.property.checks import SIDE_EFFECT_TABLES, assert_no_partial_writes, db_examples, rows
from tests.property.strategies import JSON_VALUES, mutations_of, nasty_text
from tools.contract import Tier, canonical_json
from tools.gate import ToolGate
from tools.registry import DEFAULT_REGISTRY

VALID_ARGS: dict[str, dict[str, Any]] = {
    "get_invoice": {"invoice_id": "INV-1001"},
    "get_purchase_order": {"po_number": "PO-2001"},
    "get_goods_receipts": {"po_number": "PO-2001"},
    "get_vendor": {"vendor_id": "V-001"},
    "find_invoices": {"vendor_id": "V-001", "status": "received", "limit": 5},
    "compute_match": {"invoice_id": "INV-1001"},
    "search_policy": {"query": "price variance tolerance", "limit": 3},
    "payment_status": {"invoice_id": "INV-1001"},
    "stage_invoice": {"invoice_id": "INV-1002", "note": "matched"},
    "flag_exception": {
        "invoice_id": "INV-1005",
        "codes": ["price_variance_over_tolerance"],
        "detail": "Price over tolerance on line 1.",
    },
    "schedule_payment": {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"},
    "send_vendor_email": {"vendor_id": "V-001", "subject": "Invoice", "body": "Received."},
    "update_vendor_bank_account": {
        "vendor_id": "V-001",
        "new_account": "NL23KNAB0257394811",
        "reason": "The clerk asked.",
    },
}

# Plausible and almost-plausible values per field name: what a model gets nearly right.
PLAUSIBLE: dict[str, list[Any]] = {
    "invoice_id": ["INV-1001", "INV-1002", "INV-1006", "INV-9999", " INV-1001 ", "inv-1001", ""],
    "vendor_id": ["V-001", "V-014", "V-999", "", "V-001; DROP TABLE vendors"],
    "po_number": ["PO-2001", "PO-9999", ""],
    "invoice_number": ["ACME-5551", ""],
    "amount": ["3340.97", "0.01", "0", "-5", "1e3", 3340.97, 1e-9, "99999999999999", "12.345"],
    "currency": ["USD", "EUR", "usd", "US", "USDX"],
    "pay_on": ["2026-03-01", "2026-02-30", "9999-12-31", "0001-01-01", "tomorrow", 20260301],
    "codes": [["price_variance_over_tolerance"], [], ["x"] * 21, [""], "price_variance"],
    "status": ["received", "paid", "PAID", "unknown"],
    "limit": [0, 1, 100, 101, -1, 2**63, "5", 5.0, 5.5],
    "new_account": ["NL23KNAB0257394811", "nl23knab0257394811", "NL23 KNAB 0257 3948 11", "1234"],
}


def _field_values(name: str) -> st.SearchStrategy[Any]:
    plausible = PLAUSIBLE.get(name, [])
    options = [JSON_VALUES, nasty_text(max_size=40)]
    if plausible:
        options.insert(0, st.sampled_from(plausible))
    return st.one_of(*options)


def generated_args(tool: str) -> st.SearchStrategy[Any]:
    """Arguments for ``tool``: any subset of its fields with plausible or hostile values,
    maybe unknown keys; mutations of valid arguments; or any JSON at all."""
    spec = DEFAULT_REGISTRY.get(tool)
    assert spec is not None
    fields = list(spec.args_model.model_fields)
    by_field = st.fixed_dictionaries(
        {}, optional={name: _field_values(name) for name in fields}
    ).flatmap(
        lambda args: (
            st.dictionaries(nasty_text(max_size=10), JSON_VALUES, max_size=2).map(
                lambda extra: {**extra, **args}
            )
            | st.just(args)
        )
    )
    return st.one_of(by_field, mutations_of(VALID_ARGS[tool]), JSON_VALUES)


TOOLS = st.sampled_from(DEFAULT_REGISTRY.names())
CALLS = TOOLS.flatmap(lambda tool: st.tuples(st.just(tool), generated_args(tool)))
ROUTES = [r.value for r in Route]
ERROR_CODES = {"unknown_tool", "out_of_scope", "invalid_arguments"}


def test_every_registered_tool_has_valid_example_arguments() -> None:
    gate = ToolGate(lambda: Database("postgresql://unused"))
    assert set(VALID_ARGS) == set(DEFAULT_REGISTRY.names())
    for tool, args in VALID_ARGS.items():
        spec = DEFAULT_REGISTRY.get(tool)
        assert spec is not None
        route = sorted(spec.scopes)[0]
        assert isinstance(gate.validate(route, tool, args), tuple), (tool, args)


@given(CALLS, st.sampled_from(ROUTES))
@example(
    ("schedule_payment", {**VALID_ARGS["schedule_payment"], "amount": "1e30"}), "invoice_processing"
)
@example(("stage_invoice", {"invoice_id": "INV-1001", "note": "ok\x00"}), "invoice_processing")
@example(
    ("flag_exception", {**VALID_ARGS["flag_exception"], "codes": ["\ud800"]}), "invoice_processing"
)
def test_validate_accepts_canonical_arguments_or_returns_a_structured_error(
    call: tuple[str, Any], route: str
) -> None:
    tool, args = call
    gate = ToolGate(lambda: Database("postgresql://unused"))  # validate never connects
    checked = gate.validate(route, tool, args)
    if not isinstance(checked, tuple):
        assert checked["code"] in ERROR_CODES, checked
        assert len(checked["message"]) > 10 and checked["retryable"] is False
        return
    spec, validated = checked
    assert route in spec.scopes
    # The validated form is plain JSON, and validating it again changes nothing: approvals
    # are bound to a hash of exactly this form.
    assert json.loads(canonical_json(validated)) == validated
    again = gate.validate(route, tool, validated)
    assert isinstance(again, tuple) and again[1] == validated


@given(nasty_text(max_size=30), st.sampled_from(ROUTES), JSON_VALUES)
def test_unknown_tools_are_refused_by_name(tool: str, route: str, args: Any) -> None:
    gate = ToolGate(lambda: Database("postgresql://unused"))
    checked = gate.validate(route, tool, args)
    if tool in DEFAULT_REGISTRY.names():
        return
    assert not isinstance(checked, tuple)
    assert checked["code"] == "unknown_tool"


# --- through ToolGate.call on Postgres -----------------------------------------------------


def _written(uri: str, thread: str) -> dict[str, int]:
    return {
        table: len(rows(uri, f"SELECT 1 FROM {table} WHERE thread_id = %s", thread))
        for table in (*SIDE_EFFECT_TABLES, "tool_calls")
    }


def _master_data(uri: str) -> list[tuple[Any, ...]]:
    """What a reversible or destructive call may change in place."""
    return rows(uri, "SELECT invoice_id, status FROM invoices ORDER BY 1") + rows(
        uri, "SELECT vendor_id, remit_bank_account FROM vendors ORDER BY 1"
    )


def test_gate_call_returns_an_outcome_and_writes_only_whole_calls(db_uri: str) -> None:
    seen_ok: list[str] = []

    @settings(max_examples=db_examples(30))
    @given(CALLS)
    @example(("stage_invoice", {"invoice_id": "INV-1002", "note": "ok\x00"}))
    @example(("flag_exception", {**VALID_ARGS["flag_exception"], "detail": "\ud800"}))
    @example(("send_vendor_email", {**VALID_ARGS["send_vendor_email"], "body": "a\x00"}))
    @example(("get_invoice", {"invoice_id": "INV-1001", "\x00key": 1}))
    @example(("get_invoice", {"invoice_id": "INV-1001"}))
    @example(("stage_invoice", VALID_ARGS["stage_invoice"]))
    @example(("flag_exception", VALID_ARGS["flag_exception"]))
    @example(("schedule_payment", VALID_ARGS["schedule_payment"]))
    def call_one(call: tuple[str, Any]) -> None:
        tool, args = call
        spec = DEFAULT_REGISTRY.get(tool)
        assert spec is not None
        route = sorted(spec.scopes)[0]
        thread = f"prop-{uuid.uuid4()}"

        async def go() -> Any:
            database = Database(db_uri, max_size=2)
            try:
                return await ToolGate(database).call(
                    thread_id=thread,
                    step_id="s1",
                    route=route,
                    requester="clerk-ana",
                    tool=tool,
                    args=args,
                    run=Context(),
                )
            finally:
                await database.close()

        before = _master_data(db_uri)
        outcome = asyncio.run(go())
        assert outcome["tool"] == tool and isinstance(outcome["ok"], bool)
        written = _written(db_uri, thread)
        if outcome["ok"]:
            seen_ok.append(tool)
            assert outcome["error"] is None
            ledger = 0 if spec.tier is Tier.READ else 1
            assert written["tool_calls"] == ledger, written
        else:
            error = outcome["error"]
            assert error is not None and error["code"] and len(error["message"]) > 10, error
            # Refused, failed or unapproved: nothing of the call stays behind.
            assert written == dict.fromkeys(written, 0), (error, written)
            assert _master_data(db_uri) == before
        if spec.tier.needs_approval:  # nobody approved anything here
            assert not outcome["ok"]
            assert outcome["error"]["code"] in {"invalid_arguments", "approval_required"}
        assert_no_partial_writes(db_uri)

    call_one()
    assert seen_ok, "no generated call ran; the success branch went untested"
