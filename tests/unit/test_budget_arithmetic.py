"""The budget arithmetic: what is exhausted, what warns, which plans repeat, what is left."""

from __future__ import annotations

from datetime import date
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from runtime.budgets import (
    Budget,
    exhausted_reason,
    meter_for,
    new_warnings,
    plan_cycle_reason,
    plan_fingerprint,
    run_budgets,
    tenant_refusal,
)
from runtime.context import Context
from state.costs import TenantDay
from state.graph_state import Plan, PlanStep, Usage, add_usage

TODAY = TenantDay(tenant="acme", day=date(2030, 1, 2), cost_usd=0.0)


def plan(phase: int, *steps: tuple[str, dict[str, Any]], final: bool = False) -> Plan:
    return Plan(
        phase=phase,
        steps=[
            PlanStep(step_id=f"p{phase}s{i}", tool=tool, args=args, why=f"why {phase}")
            for i, (tool, args) in enumerate(steps, start=1)
        ],
        final=final,
        source="model",
    )


def test_steps_at_the_limit_stop_the_next_node_and_say_what_to_raise() -> None:
    ctx = Context(max_steps=80)
    reason = exhausted_reason("planner", run_budgets(Usage(steps=80), 0, ctx, TODAY))
    assert reason is not None
    assert "before the planner step" in reason
    assert "budget_exhausted: steps 80/80" in reason
    assert "PAYABLES_MAX_STEPS" in reason
    assert exhausted_reason("planner", run_budgets(Usage(steps=79), 0, ctx, TODAY)) is None


def test_every_used_up_budget_is_named_in_the_reason() -> None:
    ctx = Context(max_model_calls=3, max_tokens=1000, max_cost_usd=0.01, max_wall_clock_s=5)
    usage = Usage(
        steps=4,
        model_calls=3,
        input_tokens=900,
        output_tokens=150,
        cost_usd=0.012,
        wall_clock_s=6.25,
    )
    reason = exhausted_reason("executor", run_budgets(usage, 0, ctx, TODAY))
    assert reason is not None
    for part in (
        "model calls 3/3",
        "tokens 1050/1000",
        "cost $0.0120/$0.0100",
        "wall clock 6.2s/5.0s",
    ):
        assert part in reason
    assert "steps" not in reason.split("(budget_exhausted:")[1].split(")")[0]


def test_the_tool_call_budget_is_left_to_the_executor() -> None:
    ctx = Context(max_tool_calls=2)
    assert exhausted_reason("executor", run_budgets(Usage(), 2, ctx, TODAY)) is None


def test_the_tenant_day_counts_as_a_budget() -> None:
    ctx = Context(tenant="acme", tenant_daily_cost_cap_usd=5.0)
    spent = TenantDay(tenant="acme", day=date(2030, 1, 2), cost_usd=5.0)
    reason = exhausted_reason("verifier", run_budgets(Usage(), 0, ctx, spent))
    assert reason is not None
    assert "tenant acme daily cost (2030-01-02 UTC) $5.0000/$5.0000" in reason
    assert "PAYABLES_TENANT_DAILY_COST_CAP_USD" in reason


def test_a_zero_cost_budget_with_nothing_spent_lets_a_rules_only_run_go_on() -> None:
    ctx = Context(max_cost_usd=0.0, tenant_daily_cost_cap_usd=0.0)
    assert exhausted_reason("planner", run_budgets(Usage(steps=3), 1, ctx, TODAY)) is None
    spent = run_budgets(Usage(cost_usd=0.0001), 0, ctx, TODAY)
    assert exhausted_reason("planner", spent) is not None


def test_a_warning_comes_once_per_budget_at_the_configured_fraction() -> None:
    ctx = Context(max_steps=10, max_tool_calls=10, budget_warn_fraction=0.5)
    assert new_warnings(run_budgets(Usage(steps=4), 4, ctx, TODAY), 0.5, []) == []
    first = new_warnings(run_budgets(Usage(steps=5), 4, ctx, TODAY), 0.5, [])
    assert first == ["steps budget: 50% used (5/10; PAYABLES_MAX_STEPS)"]
    later = new_warnings(run_budgets(Usage(steps=9), 6, ctx, TODAY), 0.5, first)
    assert later == ["tool calls budget: 60% used (6/10; PAYABLES_MAX_TOOL_CALLS)"]


def test_the_tenant_warning_names_the_tenant_and_the_day() -> None:
    ctx = Context(tenant="acme", tenant_daily_cost_cap_usd=10.0)
    day = TenantDay(tenant="acme", day=date(2030, 1, 2), cost_usd=8.5)
    (warning,) = new_warnings(run_budgets(Usage(), 0, ctx, day), 0.8, [])
    assert warning.startswith("tenant acme daily cost (2030-01-02 UTC) budget: 85% used")


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 400)),
        min_size=1,
        max_size=30,
    ),
    st.floats(0.05, 1.0),
)
def test_warnings_accumulate_once_each_and_only_past_the_fraction(
    increments: list[tuple[int, int, int]], fraction: float
) -> None:
    ctx = Context(max_steps=20, max_model_calls=10, max_tokens=2000)
    usage = Usage()
    for steps, calls, tokens in increments:
        step = Usage(steps=steps, model_calls=calls, input_tokens=tokens)
        total = add_usage(usage, step)
        step["warnings"] = new_warnings(
            run_budgets(total, 0, ctx, TODAY), fraction, usage.get("warnings", [])
        )
        usage = add_usage(usage, step)
    warnings = usage.get("warnings", [])
    kinds = [w.split(" budget: ")[0] for w in warnings]
    assert len(kinds) == len(set(kinds))
    reached = {
        b.kind for b in run_budgets(usage, 0, ctx, TODAY) if b.used and b.used >= fraction * b.limit
    }
    assert set(kinds) == reached


def test_a_plan_fingerprint_is_its_tools_and_canonical_args() -> None:
    a = plan(1, ("get_invoice", {"invoice_id": "INV-1", "x": [1, 2]}))
    same = plan(4, ("get_invoice", {"x": [1, 2], "invoice_id": "INV-1"}))  # key order, phase
    other = plan(1, ("get_invoice", {"invoice_id": "INV-2", "x": [1, 2]}))
    reordered = plan(1, ("compute_match", {}), ("get_invoice", {"invoice_id": "INV-1"}))
    swapped = plan(1, ("get_invoice", {"invoice_id": "INV-1"}), ("compute_match", {}))
    assert plan_fingerprint(a) == plan_fingerprint(same)
    assert plan_fingerprint(a) != plan_fingerprint(other)
    assert plan_fingerprint(reordered) != plan_fingerprint(swapped)


def test_a_plan_may_repeat_up_to_the_limit_then_is_a_loop() -> None:
    step = ("get_invoice", {"invoice_id": "INV-1002"})
    fingerprint = plan_fingerprint(plan(1, step))
    assert plan_cycle_reason(plan(2, step), [fingerprint], max_identical=1) is None
    reason = plan_cycle_reason(plan(3, step), [fingerprint, fingerprint], max_identical=1)
    assert reason is not None
    assert "loop_detected" in reason and "[get_invoice]" in reason and "phase 3" in reason
    assert plan_cycle_reason(plan(2, step), [fingerprint], max_identical=0) is not None
    other = plan(2, ("compute_match", {"invoice_id": "INV-1002"}))
    assert plan_cycle_reason(other, [fingerprint] * 5, max_identical=0) is None


def test_an_empty_final_plan_is_never_a_loop() -> None:
    empty = plan_fingerprint(plan(1, final=True))
    assert plan_cycle_reason(plan(2, final=True), [empty, empty], max_identical=0) is None


def test_the_meter_holds_what_is_left_and_refuses_past_it() -> None:
    ctx = Context(max_model_calls=5, max_tokens=1000, max_cost_usd=1.0)
    used = Usage(model_calls=4, input_tokens=500, output_tokens=100, cost_usd=0.25)
    meter = meter_for(used, ctx, TODAY, stopped=False)
    assert (meter.calls_left, meter.tokens_left, meter.cost_left_usd) == (1, 400, 0.75)
    assert meter.refusal() is None
    meter.charge("m", 10, 10, 0.01)
    assert meter.refusal() == "model-call budget exhausted"


def test_the_meter_cost_is_capped_by_what_the_tenant_has_left_today() -> None:
    ctx = Context(max_cost_usd=1.0, tenant_daily_cost_cap_usd=10.0)
    tenant = TenantDay(tenant="acme", day=date(2030, 1, 2), cost_usd=9.9)
    meter = meter_for(Usage(), ctx, tenant, stopped=False)
    assert meter.cost_left_usd is not None and abs(meter.cost_left_usd - 0.1) < 1e-9
    over = TenantDay(tenant="acme", day=date(2030, 1, 2), cost_usd=12.0)
    assert meter_for(Usage(), ctx, over, stopped=False).refusal() == "cost budget exhausted"


def test_a_stopped_run_gets_no_more_model_calls() -> None:
    meter = meter_for(Usage(), Context(), TODAY, stopped=True)
    assert meter.refusal() == "model-call budget exhausted"


def test_the_refusal_names_the_tenant_the_spend_the_cap_and_what_to_do() -> None:
    ctx = Context(tenant="acme", tenant_daily_cost_cap_usd=50.0, max_cost_usd=1.0)
    text = tenant_refusal(TenantDay(tenant="acme", day=date(2030, 1, 2), cost_usd=49.5), ctx)
    for part in (
        "'acme'",
        "$49.5000",
        "$50.00",
        "2030-01-02",
        "up to $1.00",
        "after 00:00 UTC",
        "PAYABLES_MAX_COST_USD",
        "PAYABLES_TENANT_DAILY_COST_CAP_USD",
    ):
        assert part in text


def test_budget_formats() -> None:
    assert Budget("cost", 0.5, 1.0, "X", "usd").spent == "$0.5000/$1.0000"
    assert Budget("wall clock", 12.34, 600, "X", "seconds").spent == "12.3s/600.0s"
    assert Budget("steps", 3, 80, "X").spent == "3/80"
