"""Budgets and loop detection stop a runaway run before the next step, with the reason.

Every budget kind ends the run as ``escalated`` (``failed`` before any plan) with a
``budget_exhausted`` or ``loop_detected`` reason and a partial result; soft warnings show
in the result, the logs and the trace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import nodes.verifier
from runtime.agent import Agent, open_agent
from runtime.context import Context
from runtime.tracing import redacting_client
from state.db import Database
from tests.approvals import paid_first_and_asked_second, pay_then_ask_again
from tests.billing import PRICES, billed, read_and_match, stage
from tests.fakes import ScriptedChatModel, ScriptedModels, Slow, plan_reply
from tests.trace_capture import captured_text

pytestmark = pytest.mark.integration


async def invoice_status(database: Database, invoice_id: str) -> str:
    async with database.connection() as conn:
        cur = await conn.execute("SELECT status FROM invoices WHERE invoice_id = %s", (invoice_id,))
        row = await cur.fetchone()
    assert row is not None
    status: str = row["status"]
    return status


async def state_of(agent: Agent, thread_id: str) -> dict[str, Any]:
    snapshot = await agent.graph.aget_state(agent.config(thread_id))
    return dict(snapshot.values)


# --- loops ---------------------------------------------------------------------------------


async def test_a_plan_that_repeats_itself_is_stopped_as_a_loop(database: Database) -> None:
    planner = ScriptedChatModel(
        [plan_reply(False, ("get_invoice", {"invoice_id": "INV-1002"})) for _ in range(4)]
    )
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
        state = await state_of(agent, view["thread_id"])
    assert view["status"] == "escalated"
    assert "loop_detected" in view["reason"] and "get_invoice" in view["reason"]
    assert "same plan" in view["reason"] and "phase 3" in view["reason"]
    calls = [c["tool"] for c in view["result"]["tool_calls"]]
    assert calls == ["get_invoice", "get_invoice"]  # stopped before the third
    assert len(planner.script) == 1  # and before asking the model for more
    assert len(state["plan_fingerprints"]) == 3 and len(set(state["plan_fingerprints"])) == 1
    assert any("loop_detected" in note for note in view["result"]["notes"])


async def test_no_repeat_allowed_stops_at_the_first_identical_plan(database: Database) -> None:
    planner = ScriptedChatModel(
        [plan_reply(False, ("get_invoice", {"invoice_id": "INV-1002"})) for _ in range(3)]
    )
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start(
            "Validate INV-1002", user="clerk-ana", context=Context(max_identical_plans=0)
        )
    assert view["status"] == "escalated" and "loop_detected" in view["reason"]
    assert [c["tool"] for c in view["result"]["tool_calls"]] == ["get_invoice"]
    assert len(planner.script) == 1


async def test_the_tool_call_budget_is_checked_before_each_call(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Validate INV-1002", user="clerk-ana", context=Context(max_tool_calls=2)
        )
    assert view["status"] == "escalated"
    assert "budget of 2 tool calls" in view["reason"]
    assert [c["tool"] for c in view["result"]["tool_calls"]] == ["get_invoice", "compute_match"]
    assert await invoice_status(database, "INV-1002") == "received"  # nothing half-done
    assert any(w.startswith("tool calls budget: ") for w in view["result"]["usage"]["warnings"])


@pytest.mark.parametrize("stop", ["tool_calls", "identical_calls"])
async def test_a_run_the_executor_stops_spends_nothing_more_on_models(
    database: Database, stop: str
) -> None:
    """Its summary comes from the rules, as after the budget guard's own stops."""
    respond = ScriptedChatModel([])
    if stop == "tool_calls":
        models, context = ScriptedModels(respond=respond), Context(max_tool_calls=2)
    else:
        same = ("get_invoice", {"invoice_id": "INV-1002"})
        planner = ScriptedChatModel([plan_reply(False, same, same, same)])
        models, context = ScriptedModels(planner=planner, respond=respond), Context()
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=context)
    assert view["status"] == "escalated", view["reason"]
    assert ("budget_exhausted" if stop == "tool_calls" else "loop_detected") in view["reason"]
    assert respond.received == []
    assert view["result"]["usage"]["model_calls"] == (0 if stop == "tool_calls" else 1)


async def test_normal_runs_stay_within_the_defaults(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "completed"
    assert view["result"]["usage"]["warnings"] == []
    assert view["result"]["usage"]["steps"] >= 8


# --- steps, and a guard stop before every kind of node --------------------------------------


@pytest.mark.parametrize(
    ("max_steps", "node", "status", "tools"),
    [
        (1, "planner", "failed", []),
        (2, "executor", "escalated", []),
        (4, "verifier", "escalated", ["get_invoice", "compute_match"]),
    ],
)
async def test_the_step_budget_stops_the_run_before_the_next_node(
    database: Database, max_steps: int, node: str, status: str, tools: list[str]
) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Validate INV-1002", user="clerk-ana", context=Context(max_steps=max_steps)
        )
    assert view["status"] == status
    assert f"Stopped before the {node} step" in view["reason"]
    assert f"budget_exhausted: steps {max_steps}/{max_steps}" in view["reason"]
    assert [c["tool"] for c in view["result"]["tool_calls"]] == tools
    # A stop with outcomes in the phase still has the verifier check them: one step more,
    # a check in code (no model call), which ends the run. Respond's own step counts too.
    assert view["result"]["usage"]["steps"] == max_steps + (1 if tools else 0) + 1
    assert view["summary"].startswith(f"[{status}]")
    assert await invoice_status(database, "INV-1002") == "received"


async def test_a_step_stop_keeps_the_invoices_validated_so_far(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runtime.budgets")
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Validate INV-1001 and INV-1002",
            user="clerk-ana",
            context=Context(max_steps=4, budget_warn_fraction=0.75),
        )
    assert view["status"] == "escalated"
    assert "budget_exhausted: steps 4/4" in view["reason"]
    invoices = view["result"]["invoices"]
    assert invoices["INV-1001"]["verdict"] == "match"  # validated before the stop
    assert "INV-1002" not in invoices  # never reached
    assert view["result"]["usage"]["warnings"] == [
        "steps budget: 75% used (3/4; PAYABLES_MAX_STEPS)"
    ]
    logged = [r.getMessage() for r in caplog.records]
    assert any("budget warning" in m and "steps budget: 75%" in m for m in logged)
    assert any("run stopped" in m and "budget_exhausted" in m for m in logged)


async def test_approval_is_never_blocked_and_the_next_step_is(database: Database) -> None:
    async with open_agent(database=database) as agent:
        paused = await agent.start("Validate INV-1001 and pay it if it matches", user="clerk-ana")
        assert paused["status"] == "interrupted"
        used = (await state_of(agent, paused["thread_id"]))["usage"]["steps"]
        view = await agent.resume(
            paused["thread_id"],
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
            context=Context(max_steps=used),
        )
    assert view["status"] == "escalated"
    assert "Stopped before the executor step" in view["reason"]
    assert f"steps {used + 1}/{used}" in view["reason"]  # the approval step itself ran
    assert [d["reviewer_id"] for d in view["result"]["decisions"]] == ["rev-1"]
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM approval_decisions WHERE thread_id = %s",
            (paused["thread_id"],),
        )
        decided = await cur.fetchone()
        cur = await conn.execute("SELECT count(*) AS n FROM payments WHERE invoice_id = 'INV-1001'")
        paid = await cur.fetchone()
    assert decided is not None and decided["n"] == 1  # the reviewer's decision is kept
    assert paid is not None and paid["n"] == 0  # and nothing ran after the budget was gone


# --- wall clock ------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock where every reading moves time forward by ``tick`` seconds."""

    def __init__(self, tick: float) -> None:
        self.now = 1000.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


async def test_the_wall_clock_counts_time_inside_nodes(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runtime.budgets.monotonic", FakeClock(5.0))  # every node takes 5 s
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Validate INV-1002", user="clerk-ana", context=Context(max_wall_clock_s=12)
        )
    assert view["status"] == "escalated"
    assert "Stopped before the executor step" in view["reason"]
    assert "budget_exhausted: wall clock 15.0s/12.0s" in view["reason"]
    assert [c["tool"] for c in view["result"]["tool_calls"]] == ["get_invoice"]


async def test_waiting_for_a_reviewer_does_not_count(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(1.0)  # every node takes 1 s
    monkeypatch.setattr("runtime.budgets.monotonic", clock)
    budget = Context(max_wall_clock_s=60)
    async with open_agent(database=database) as agent:
        paused = await agent.start(
            "Validate INV-1001 and pay it if it matches", user="clerk-ana", context=budget
        )
        assert paused["status"] == "interrupted"
        clock.now += 3 * 86400  # the reviewer answers three days later
        view = await agent.resume(
            paused["thread_id"],
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
            context=budget,
        )
    assert view["status"] == "completed", view["reason"]
    usage = view["result"]["usage"]
    assert usage["wall_clock_s"] == pytest.approx(usage["steps"] * 1.0)


# --- model calls, tokens, cost ------------------------------------------------------------


async def test_the_model_call_budget_stops_the_run_with_a_partial_result(
    database: Database,
) -> None:
    planner = ScriptedChatModel([read_and_match("INV-1002"), stage("INV-1002")])
    respond = ScriptedChatModel([])
    async with open_agent(
        models=ScriptedModels(planner=planner, respond=respond), database=database
    ) as agent:
        view = await agent.start(
            "Validate INV-1002", user="clerk-ana", context=Context(max_model_calls=2)
        )
    assert view["status"] == "escalated"
    assert "budget_exhausted: model calls 2/2" in view["reason"]
    assert view["result"]["invoices"]["INV-1002"]["verdict"] == "match"
    assert [c["tool"] for c in view["result"]["tool_calls"]] == ["get_invoice", "compute_match"]
    assert await invoice_status(database, "INV-1002") == "received"  # staging never ran
    assert respond.received == []  # a stopped run spends nothing more: rules summary
    assert view["result"]["usage"]["model_calls"] == 2


async def test_the_token_budget_counts_usage_metadata(database: Database) -> None:
    planner = ScriptedChatModel([read_and_match("INV-1002"), stage("INV-1002")])
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start(
            "Validate INV-1002",
            user="clerk-ana",
            context=Context(max_tokens=1000, budget_warn_fraction=0.5),
        )
    assert view["status"] == "escalated"
    # The meter allows a call while tokens are left; that call may overshoot, the next
    # step may not run.
    assert "budget_exhausted: tokens 1400/1000" in view["reason"]
    usage = view["result"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (1200, 200)
    assert "tokens budget: 70% used (700/1000; PAYABLES_MAX_TOKENS)" in usage["warnings"]


async def test_the_cost_budget_prices_tokens_per_model(database: Database) -> None:
    planner = ScriptedChatModel([read_and_match("INV-1002"), stage("INV-1002")])
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start(
            "Validate INV-1002",
            user="clerk-ana",
            context=Context(model_prices=PRICES, max_cost_usd=1.0),
        )
    assert view["status"] == "escalated"
    assert "budget_exhausted: cost $1.6000/$1.0000" in view["reason"]
    usage = view["result"]["usage"]
    assert usage["cost_usd"] == pytest.approx(1.6)
    assert usage["warnings"] == ["cost budget: 80% used ($0.8000/$1.0000; PAYABLES_MAX_COST_USD)"]
    assert view["result"]["invoices"]["INV-1002"]["verdict"] == "match"


async def test_a_call_past_the_budget_is_refused_inside_the_node(database: Database) -> None:
    # The first plan is invalid and costs the whole budget: the repair call is refused by
    # the meter (no call made, rules plan used), and the guard stops the run before the
    # next step.
    planner = ScriptedChatModel(
        [billed(plan_reply(False, ("no_such_tool", {}))), read_and_match("INV-1002")]
    )
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start(
            "Validate INV-1002",
            user="clerk-ana",
            context=Context(model_prices=PRICES, max_cost_usd=0.8),
        )
    assert view["status"] == "escalated"
    assert "Stopped before the executor step" in view["reason"]
    assert "budget_exhausted: cost $0.8000/$0.8000" in view["reason"]
    assert len(planner.received) == 1 and len(planner.script) == 1
    assert view["result"]["usage"]["model_calls"] == 1
    assert "cost budget exhausted" in view["model_path"]["planner"]


# --- warnings in traces ---------------------------------------------------------------------


async def test_warnings_and_stops_are_tagged_on_the_node_traces(
    database: Database, trace_endpoint: str
) -> None:
    client = redacting_client(api_url=trace_endpoint, api_key="test-key", auto_batch_tracing=False)
    async with open_agent(database=database, tracing_client=client) as agent:
        view = await agent.start(
            "Validate INV-1001 and INV-1002",
            user="clerk-ana",
            context=Context(max_steps=4, budget_warn_fraction=0.75),
        )
    client.flush()
    assert view["status"] == "escalated"
    traces = captured_text()
    assert "budget_warning" in traces and "steps budget: 75% used" in traces
    assert "budget_exhausted" in traces and "Stopped before the executor step" in traces


async def test_a_budget_stop_mid_phase_still_verifies_what_the_phase_did(
    database: Database,
) -> None:
    """The stop passes through the verifier, which checks and ends the run (no re-plan)."""
    async with open_agent(models=pay_then_ask_again(), database=database) as agent:
        thread = await paid_first_and_asked_second(agent, database)
        used = (await state_of(agent, thread))["usage"]["steps"]
        view = await agent.resume(
            thread,
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
            context=Context(max_steps=used),
        )
    assert view["status"] == "escalated"
    assert "Stopped before the executor step" in view["reason"]
    assert "payment for INV-1001 is not to the vendor master account" in view["reason"]
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM payments WHERE thread_id = %s", (thread,)
        )
        paid = await cur.fetchone()
    assert paid is not None and paid["n"] == 1  # INV-1002 was not paid after the stop


async def test_an_executor_stop_mid_phase_verifies_what_the_phase_did(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool-call budget runs out after the phase staged INV-1002: the verifier checks
    that staging in the database, then the run ends (no re-plan)."""
    checked: list[list[str]] = []
    check = nodes.verifier.check_outcomes

    async def recording(database: Database, outcomes: list[Any]) -> list[str]:
        checked.append([o["tool"] for o in outcomes])
        return await check(database, outcomes)

    monkeypatch.setattr(nodes.verifier, "check_outcomes", recording)
    read = ("get_invoice", {"invoice_id": "INV-1002"})
    planner = ScriptedChatModel(
        [
            plan_reply(False, read, ("compute_match", {"invoice_id": "INV-1002"})),
            plan_reply(True, ("stage_invoice", {"invoice_id": "INV-1002"}), read),
        ]
    )
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start(
            "Validate INV-1002", user="clerk-ana", context=Context(max_tool_calls=3)
        )
    assert view["status"] == "escalated" and "budget of 3 tool calls" in view["reason"]
    assert checked[-1] == ["stage_invoice"]  # the stopped phase, verified
    assert await invoice_status(database, "INV-1002") == "staged"
    assert planner.script == []  # and no third plan was asked for


# --- node attempts that raise (retried by the graph's RetryPolicy) ------------------------


async def refuse_rows_of_failed_steps(database: Database) -> None:
    """The database refuses a failed step's row and charge (a full disk, say)."""
    async with database.connection() as conn:
        await conn.execute(
            "CREATE FUNCTION refuse_failed_steps() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NOT NEW.ok THEN RAISE EXCEPTION 'could not extend file'; END IF;"
            " RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER refuse_failed_steps BEFORE INSERT ON step_metrics"
            " FOR EACH ROW EXECUTE FUNCTION refuse_failed_steps()"
        )


async def tenant_day(database: Database, tenant: str) -> tuple[int, float]:
    """The tenant's model calls and spend today."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT cost_usd, model_calls FROM tenant_daily_costs WHERE tenant = %s", (tenant,)
        )
        today = await cur.fetchone()
    return (0, 0.0) if today is None else (today["model_calls"], float(today["cost_usd"]))


async def test_spend_of_a_failed_attempt_that_could_not_be_recorded_is_charged_later(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed attempt's row and charge are refused by the database; the retry that
    succeeds charges them, so the tenant's day and the run's usage hold every call made."""
    await refuse_rows_of_failed_steps(database)
    monkeypatch.setattr("runtime.failpoints._flaky_hits", {})
    monkeypatch.setenv("PAYABLES_FAILPOINTS", "flaky:after:planner:1")
    planner = ScriptedChatModel([read_and_match("INV-1002"), read_and_match("INV-1002")])
    planner.script.append(stage("INV-1002"))
    run = Context(tenant="acme", max_cost_usd=3.0, model_prices=PRICES)
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=run)
        usage = (await state_of(agent, view["thread_id"]))["usage"]
    assert view["status"] == "completed", view["reason"]
    calls = len(planner.received)
    assert calls == 3  # the failed attempt's, its retry's, the second phase's
    assert await tenant_day(database, "acme") == (usage["model_calls"], pytest.approx(0.8 * calls))
    assert usage["model_calls"] == calls and usage["cost_usd"] == pytest.approx(0.8 * calls)


@pytest.mark.parametrize(
    "refused", [False, True], ids=["charged as it failed", "its charge refused by the database"]
)
async def test_a_retried_node_cannot_spend_its_model_budget_again(
    database: Database, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    """The planner calls its model, then a transient database error fails the step, twice.

    The graph retries the step; the calls the failed attempts made count against the run's
    budget (their state update was discarded, their money was not), so the retry is
    stopped by the budget it no longer has, and the run's usage says what was spent. The
    tenant's day holds it too: charged as the attempt failed, or, when the database refused
    that, by the stop that follows.
    """
    if refused:
        await refuse_rows_of_failed_steps(database)
    monkeypatch.setattr("runtime.failpoints._flaky_hits", {})
    monkeypatch.setenv("PAYABLES_FAILPOINTS", "flaky:after:planner:2")
    planner = ScriptedChatModel([read_and_match("INV-1002") for _ in range(3)])
    run = Context(tenant="acme", max_model_calls=1, model_prices=PRICES)
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=run)
        usage = (await state_of(agent, view["thread_id"]))["usage"]
    assert len(planner.received) == 1, "a retry made a model call past the budget"
    assert view["status"] == "failed"  # no plan was made: nothing to salvage
    assert "Stopped before the planner step (budget_exhausted: model calls 1/1)" in view["reason"]
    assert usage["model_calls"] == 1 and usage["cost_usd"] == pytest.approx(0.8)
    assert await tenant_day(database, "acme") == (1, pytest.approx(0.8))


async def test_a_cancelled_step_charges_the_calls_it_paid_for(database: Database) -> None:
    """A run cancelled during a model call (its server client cancelled it, or sent another
    input in its place) after a paid one: the tenant is charged for the paid call, and the
    thread's next step counts it in the run's usage."""
    started = asyncio.Event()
    planner = ScriptedChatModel(
        [
            billed(plan_reply(False, ("no_such_tool", {"invoice_id": "INV-1002"}))),  # repaired
            Slow(60, read_and_match("INV-1002"), started=started),
        ]
    )
    planner.script.extend([read_and_match("INV-1002"), stage("INV-1002")])  # after continue
    run = Context(tenant="acme", model_prices=PRICES, max_cost_usd=4.0)
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        task = asyncio.create_task(
            agent.start("Validate INV-1002", user="clerk-ana", thread_id="cancelled", context=run)
        )
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(planner.received) == 2
        # Both calls count (the one in flight was started); the paid one's cost is charged.
        assert await tenant_day(database, "acme") == (2, pytest.approx(0.8))
        view = await agent.continue_run("cancelled", context=run)
        usage = (await state_of(agent, "cancelled"))["usage"]
    assert view["status"] == "completed", view["reason"]
    # The run's usage holds the cancelled attempt's calls too, as the tenant's day does.
    calls, cost = await tenant_day(database, "acme")
    assert (usage["model_calls"], usage["cost_usd"]) == (calls, pytest.approx(cost))
    assert usage["model_calls"] == len(planner.received) == 4
