"""What the gate retries and how long it waits, and how a run stands in for a payment.

No database here: these are the decisions the gate and the executor make from an
exception, an error or a plan. The integration suite (tests/integration/test_tool_outage.py)
runs them against a real Postgres.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool
import pytest
from tenacity import AsyncRetrying, RetryCallState

from nodes.executor import (
    PAYMENT_UNAVAILABLE,
    can_stand_in,
    payment_stand_ins,
    read_only_reason,
    stand_in_for,
    why_unavailable,
)
from runtime.context import Context
from state.graph_state import AgentState, Plan, PlanStep
from tools.contract import Tier, ToolFailure
from tools.gate import (
    CIRCUIT_OPEN,
    ToolError,
    ToolGate,
    backoff,
    is_backend_failure,
    refusal,
    retries_allowed,
    unavailable,
)
from tools.registry import DEFAULT_REGISTRY, ToolRegistry


def _no_database() -> Any:
    raise AssertionError("these checks must not touch the database")


GATE = ToolGate(_no_database)


def delay(run: Context, retry: int) -> float:
    """The wait before retry number ``retry`` (1 = after the first failed attempt)."""
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = retry
    return float(backoff(run)(state))


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    run = Context(retry_initial_s=0.5, retry_max_s=3.0)
    for _ in range(50):  # the jitter is random: every draw must stay in its window
        assert 0.5 <= delay(run, 1) <= 1.0
        assert 1.0 <= delay(run, 2) <= 1.5
        assert 2.0 <= delay(run, 3) <= 2.5
        assert delay(run, 4) == 3.0
        assert delay(run, 30) == 3.0
    assert len({delay(run, 1) for _ in range(20)}) > 1  # jittered, not fixed


def test_no_initial_delay_means_retrying_at_once() -> None:
    run = Context(retry_initial_s=0.0, retry_max_s=8.0)
    assert [delay(run, n) for n in (1, 2, 5)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"),
        ToolFailure("bank_busy", "The bank API asked us to slow down.", retryable=True),
    ],
    ids=lambda e: type(e).__name__,
)
def test_backend_failures_are_retried(exc: BaseException) -> None:
    assert is_backend_failure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ToolFailure("invoice_not_found", "No invoice 'INV-0000' exists."),
        psycopg.errors.UniqueViolation("duplicate key value"),
        psycopg.errors.UndefinedColumn("column does not exist"),
        ValueError("a bug"),
        KeyError("a bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_wrong_calls_and_bugs_are_not_retried(exc: BaseException) -> None:
    assert not is_backend_failure(exc)


def test_every_tool_may_be_retried_because_every_write_is_keyed() -> None:
    # A write without an idempotency key would not be retried; no tier makes one today.
    for tier in Tier:
        assert retries_allowed(tier) == (tier is Tier.READ or tier.needs_idempotency_key)
        assert retries_allowed(tier)
    for spec in DEFAULT_REGISTRY:
        assert spec.tier is Tier.READ or spec.tier.needs_idempotency_key


def error(code: str, retryable: bool = False) -> ToolError:
    outcome = refusal("p2s2", "schedule_payment", "irreversible", {}, code, "msg", "", retryable)
    assert outcome["error"] is not None
    return outcome["error"]


def test_unavailable_means_an_open_breaker_or_a_failure_that_outlived_its_retries() -> None:
    assert unavailable(error(CIRCUIT_OPEN))
    assert unavailable(error("timeout", retryable=True))
    assert unavailable(error("backend_error", retryable=True))
    assert not unavailable(error("approval_required"))
    assert not unavailable(error("not_staged"))
    assert not unavailable(None)
    assert why_unavailable(error(CIRCUIT_OPEN)) == "circuit open"
    assert why_unavailable(error("timeout", True)) == "timed out"
    assert why_unavailable(error("backend_error", True)) == "backend error"


PAYMENT = PlanStep(
    step_id="p2s2",
    tool="schedule_payment",
    args={"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"},
    why="Pay INV-1001.",
)


def state_with(*steps: PlanStep, route: str = "invoice_processing") -> AgentState:
    return AgentState(
        request="Validate INV-1001 and pay it",
        route=route,
        plan=Plan(phase=2, steps=list(steps), final=True, source="rules"),
        cursor=0,
        outcomes=[],
    )


def test_a_payment_is_stood_in_for_by_a_flag_then_a_stage_that_pass_the_gate() -> None:
    stand_ins = payment_stand_ins(PAYMENT, error(CIRCUIT_OPEN))
    assert [(s["step_id"], s["tool"]) for s in stand_ins] == [
        ("p2s2-ro1", "flag_exception"),
        ("p2s2-ro2", "stage_invoice"),
    ]
    assert stand_ins[0]["args"]["codes"] == [PAYMENT_UNAVAILABLE]
    assert "circuit open" in stand_ins[0]["args"]["detail"]
    for step in stand_ins:
        assert step["args"]["invoice_id"] == "INV-1001"
        assert stand_in_for(step["step_id"]) == "p2s2"
        checked = GATE.validate("invoice_processing", step["tool"], step["args"])
        assert isinstance(checked, tuple), checked
    assert stand_in_for("p2s2") is None
    assert stand_in_for("p2s2-ro") is None


def test_stand_ins_only_for_payments_once_per_invoice_and_where_in_scope() -> None:
    assert can_stand_in(state_with(PAYMENT), PAYMENT, DEFAULT_REGISTRY)
    email = PlanStep(step_id="p2s3", tool="send_vendor_email", args={"vendor_id": "V-001"}, why="")
    assert not can_stand_in(state_with(email), email, DEFAULT_REGISTRY)
    already = state_with(PAYMENT, *payment_stand_ins(PAYMENT, error(CIRCUIT_OPEN)))
    assert not can_stand_in(already, PAYMENT, DEFAULT_REGISTRY)
    without_flags = ToolRegistry(s for s in DEFAULT_REGISTRY if s.name != "flag_exception")
    assert not can_stand_in(state_with(PAYMENT), PAYMENT, without_flags)


def test_the_reason_lists_each_thing_not_done_once() -> None:
    first = "read-only: schedule_payment unavailable (circuit open), so INV-1001 was not paid"
    second = "read-only: stage_invoice unavailable (timed out), so it was not done for INV-1002"
    reason = read_only_reason([first, second, first])
    assert reason.startswith("Went read-only: schedule_payment unavailable (circuit open)")
    assert reason.count("INV-1001") == 1 and "INV-1002" in reason
