"""Budgets and loop detection stop a runaway run before the next call, with the reason."""

from __future__ import annotations

import pytest

from runtime.agent import open_agent
from runtime.context import Context
from state.db import Database
from tests.fakes import ScriptedChatModel, ScriptedModels, plan_reply

pytestmark = pytest.mark.integration


async def test_a_plan_that_repeats_itself_is_stopped_as_a_loop(database: Database) -> None:
    planner = ScriptedChatModel(
        [plan_reply(False, ("get_invoice", {"invoice_id": "INV-1002"})) for _ in range(4)]
    )
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "escalated"
    assert "loop_detected" in view["reason"] and "get_invoice" in view["reason"]
    calls = [c["tool"] for c in view["result"]["tool_calls"]]
    assert calls == ["get_invoice", "get_invoice"]  # stopped before the third
    assert len(planner.script) == 1  # and before asking the model for more


async def test_the_tool_call_budget_is_checked_before_each_call(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Validate INV-1002", user="clerk-ana", context=Context(max_tool_calls=2)
        )
    assert view["status"] == "escalated"
    assert "budget of 2 tool calls" in view["reason"]
    assert [c["tool"] for c in view["result"]["tool_calls"]] == ["get_invoice", "compute_match"]
    async with database.connection() as conn:
        cur = await conn.execute("SELECT status FROM invoices WHERE invoice_id = 'INV-1002'")
        row = await cur.fetchone()
    assert row is not None and row["status"] == "received"  # nothing half-done


async def test_normal_runs_stay_within_the_defaults(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "completed"
