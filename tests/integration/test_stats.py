"""`payables stats`: every figure checked against runs the agent really made.

The runs go through the real graph on Postgres (rules model unless a test scripts a
billed planner); the step rows come from the budget guard, the tool calls and approval
requests from the audit chain, the decisions from the approval node.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runtime.agent import Agent, RunFailed, open_agent
from runtime.context import Context
from runtime.errors import BadInput
from state.costs import spent_today
from state.db import Database
from state.stats import parse_since, reason_kind, run_stats
from state.step_metrics import FLUSH_DELAY_S, StepMetric, flush_step_metrics, record_step
from state.world import SAMPLE_WORLD_PATH, load_world, read_world
from tests.billing import PRICES, billed, read_and_match, stage
from tests.cli import explain, payables, payables_fails, payables_json
from tests.fakes import ScriptedChatModel, ScriptedModels, plan_reply

pytestmark = pytest.mark.integration

APPROVER = {"id": "appr-1", "role": "approver"}


async def approve_once(agent: Agent, thread_id: str) -> dict[str, Any]:
    pending = await agent.pending(thread_id)
    actions = len(pending[0][1]["action_requests"])
    return await agent.resume(
        thread_id, {"decisions": [{"type": "approve"}] * actions, "reviewer": APPROVER}
    )


async def rows(database: Database, query: str, *params: Any) -> list[dict[str, Any]]:
    async with database.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (what percentile_cont computes)."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def make_runs(database: Database) -> dict[str, dict[str, Any]]:
    """Five runs: completed alone, escalated, refused, approved then completed, waiting."""
    views = {}
    async with open_agent(database=database) as agent:
        views["clean"] = await agent.start("Validate INV-1002", user="clerk-ana")
        views["unknown"] = await agent.start("Validate INV-9999", user="clerk-ana")
        views["flight"] = await agent.start("Book me a flight to Denver", user="clerk-ana")
        paid = await agent.start("Validate INV-1001 and pay it if it matches", user="clerk-ana")
        assert paid["status"] == "interrupted"
        views["approved"] = await approve_once(agent, paid["thread_id"])
        views["waiting"] = await agent.start(
            "Please pay INV-1005, it is due this week.", user="clerk-ana"
        )
    statuses = {name: view["status"] for name, view in views.items()}
    assert statuses == {
        "clean": "completed",
        "unknown": "escalated",
        "flight": "refused",
        "approved": "completed",
        "waiting": "interrupted",
    }
    return views


async def test_stats_count_runs_steps_tools_approvals_and_reasons(database: Database) -> None:
    views = await make_runs(database)
    stats = await run_stats(database, since=timedelta(hours=1))

    runs = stats["runs"]
    assert runs["total"] == 5
    assert runs["by_status"] == {"completed": 2, "escalated": 1, "interrupted": 1, "refused": 1}
    assert runs["by_route"] == {"invoice_processing": 4, "out_of_scope": 1}
    assert {(r["status"], r["route"], r["runs"]) for r in runs["by_status_and_route"]} == {
        ("completed", "invoice_processing", 2),
        ("escalated", "invoice_processing", 1),
        ("interrupted", "invoice_processing", 1),
        ("refused", "out_of_scope", 1),
    }

    # Node latency: every run passed the router once; the four finished runs, respond once.
    steps = await rows(database, "SELECT * FROM step_metrics")
    latency = stats["node_latency_ms"]
    assert latency["router"]["steps"] == 5 and latency["respond"]["steps"] == 4
    assert {"planner", "executor", "verifier", "approval"} <= set(latency)
    for node, figures in latency.items():
        durations = [s["duration_ms"] for s in steps if s["node"] == node]
        assert figures["steps"] == len(durations) and figures["failed"] == 0
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert figures[name] == pytest.approx(percentile(durations, fraction), abs=0.051)
        assert figures["p50"] <= figures["p95"] <= figures["p99"]
    # The guard records exactly the steps it adds to the run's usage, with the same time.
    clean = views["clean"]
    mine = [s for s in steps if s["thread_id"] == clean["thread_id"]]
    usage = clean["result"]["usage"]  # the run's whole usage, respond's own step included
    assert len(mine) == usage["steps"]
    assert sum(s["duration_ms"] for s in mine) / 1000 == pytest.approx(usage["wall_clock_s"])
    assert all(s["ok"] and s["tenant"] == "default" for s in steps)

    # Rules model: nothing is billed. Successful = completed; failed = escalated + refused.
    assert stats["cost_per_task_usd"] == {
        "successful": {"runs": 2, "total_usd": 0.0, "per_task_usd": 0.0},
        "failed": {"runs": 2, "total_usd": 0.0, "per_task_usd": 0.0},
    }

    tools = stats["tool_calls"]
    assert set(tools) == {
        "get_invoice",
        "compute_match",
        "stage_invoice",
        "schedule_payment",
        "flag_exception",
    }
    # INV-1002, INV-9999 (not found), INV-1001, INV-1005 were read.
    assert tools["get_invoice"] == {
        "calls": 4,
        "ok": 3,
        "errors": 1,
        "approval_flow": 0,
        "errors_by_code": {"invoice_not_found": 1},
        "error_rate": 0.25,
    }
    # INV-1001's payment was held for approval, then made; INV-1005's staging is held.
    assert tools["schedule_payment"]["calls"] == 2
    assert tools["schedule_payment"]["ok"] == 1
    assert tools["schedule_payment"]["approval_flow"] == 1
    assert tools["schedule_payment"]["error_rate"] == 0.0
    assert tools["stage_invoice"]["calls"] == 3
    assert tools["stage_invoice"]["ok"] == 2
    assert tools["stage_invoice"]["approval_flow"] == 1
    assert tools["compute_match"]["calls"] == 3 and tools["compute_match"]["errors"] == 0
    assert tools["flag_exception"] == {
        "calls": 1,
        "ok": 1,
        "errors": 0,
        "approval_flow": 0,
        "errors_by_code": {},
        "error_rate": 0.0,
    }

    # Approval latency: one decision, measured from the request the approval node recorded.
    approved = views["approved"]["thread_id"]
    (asked,) = await rows(
        database,
        "SELECT created_at FROM audit_events WHERE kind = 'approval_requested' AND thread_id = %s",
        approved,
    )
    (decided,) = await rows(
        database, "SELECT created_at FROM approval_decisions WHERE thread_id = %s", approved
    )
    wait = (decided["created_at"] - asked["created_at"]).total_seconds()
    assert wait > 0
    figures = stats["approval_latency_s"]
    assert figures["decisions"] == 1 and figures["measured"] == 1
    for name in ("p50", "p95", "p99", "max"):
        assert figures[name] == pytest.approx(wait, abs=0.0006)

    # Containment: of four finished runs only the clean one completed without a reviewer.
    assert stats["containment"] == {"finished": 4, "completed_without_a_human": 1, "rate": 0.25}

    reasons = {(g["status"], g["reason"]): g for g in stats["escalation_reasons"]}
    assert set(reasons) == {
        ("escalated", "Could not finish: INV-#: No invoice 'INV-#' exists."),
        ("refused", reason_kind(views["flight"]["reason"])),
    }
    assert all(g["runs"] == 1 for g in reasons.values())
    # respond writes the reason to the run index with the final status.
    (unknown,) = await rows(
        database, "SELECT reason FROM runs WHERE thread_id = %s", views["unknown"]["thread_id"]
    )
    assert unknown["reason"] == views["unknown"]["reason"] != ""


async def test_the_window_leaves_out_older_runs_and_steps(database: Database) -> None:
    async with open_agent(database=database) as agent:
        old = await agent.start("Validate INV-1002", user="clerk-ana")
        new = await agent.start("Validate INV-9999", user="clerk-ana")
    async with database.connection() as conn:
        await conn.execute(
            "UPDATE runs SET created_at = created_at - interval '2 days' WHERE thread_id = %s",
            (old["thread_id"],),
        )
        await conn.execute(
            "UPDATE step_metrics SET started_at = started_at - interval '2 days'"
            " WHERE thread_id = %s",
            (old["thread_id"],),
        )
    recent = await run_stats(database, since=timedelta(days=1))
    everything = await run_stats(database)
    assert recent["runs"]["by_status"] == {"escalated": 1}
    assert everything["runs"]["by_status"] == {"completed": 1, "escalated": 1}
    assert recent["node_latency_ms"]["router"]["steps"] == 1
    assert everything["node_latency_ms"]["router"]["steps"] == 2
    assert recent["containment"] == {"finished": 1, "completed_without_a_human": 0, "rate": 0.0}
    assert everything["since"] is None and recent["since"] is not None
    assert new["status"] == "escalated"


async def test_a_reseeded_world_starts_the_statistics_afresh(database: Database) -> None:
    async with open_agent(database=database) as agent:
        await agent.start("Validate INV-9999", user="clerk-ana")
    before = await run_stats(database)
    assert before["runs"]["total"] == 1 and before["tool_calls"]["get_invoice"]["errors"] == 1
    async with database.connection() as conn:
        await load_world(conn, read_world(SAMPLE_WORLD_PATH))
    after = await run_stats(database)
    assert after["runs"]["total"] == 0
    assert after["node_latency_ms"] == {} and after["tool_calls"] == {}
    assert after["containment"]["rate"] is None
    assert after["cost_per_task_usd"]["failed"] == {
        "runs": 0,
        "total_usd": 0.0,
        "per_task_usd": None,
    }
    # The audit chain keeps the old world's calls; statistics follow the run index.
    (calls,) = await rows(
        database, "SELECT count(*) AS n FROM audit_events WHERE kind = 'tool_call'"
    )
    assert calls["n"] == before["tool_calls"]["get_invoice"]["calls"]


async def test_cost_per_successful_and_failed_task_from_billed_steps(database: Database) -> None:
    succeeding = ScriptedChatModel([read_and_match("INV-1002"), stage("INV-1002")])
    looping = ScriptedChatModel(
        [billed(plan_reply(False, ("get_invoice", {"invoice_id": "INV-1002"}))) for _ in range(3)]
    )
    context = Context(model_prices=PRICES, max_cost_usd=5.0)
    async with open_agent(models=ScriptedModels(planner=succeeding), database=database) as agent:
        done = await agent.start("Validate INV-1002", user="clerk-ana", context=context)
    async with open_agent(models=ScriptedModels(planner=looping), database=database) as agent:
        loop = await agent.start("Validate INV-1002", user="clerk-ana", context=context)
    assert done["status"] == "completed" and loop["status"] == "escalated"

    stats = await run_stats(database, since=timedelta(hours=1))
    # Two billed plans at $0.80 each, against three (the third one ends the loop).
    assert stats["cost_per_task_usd"] == {
        "successful": {"runs": 1, "total_usd": 1.6, "per_task_usd": 1.6},
        "failed": {"runs": 1, "total_usd": 2.4, "per_task_usd": 2.4},
    }
    assert done["result"]["usage"]["cost_usd"] == pytest.approx(1.6)
    # The same statement that wrote each step charged the tenant's day.
    assert (await spent_today(database, "default")).cost_usd == pytest.approx(4.0)
    planner_steps = await rows(
        database, "SELECT model_calls, tokens, cost_usd FROM step_metrics WHERE node = 'planner'"
    )
    assert len(planner_steps) == 5
    assert {(s["model_calls"], s["tokens"], float(s["cost_usd"])) for s in planner_steps} == {
        (1, 700, 0.8)
    }
    assert stats["escalation_reasons"][0]["reason"] == "loop_detected"


async def test_a_node_that_raises_is_recorded_as_failed(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYABLES_FAILPOINTS", "raise:verifier")
    async with open_agent(database=database) as agent:
        with pytest.raises(RunFailed, match="failed in verifier"):
            await agent.start("Validate INV-1002", user="clerk-ana")
    failed = await rows(database, "SELECT node, ok FROM step_metrics WHERE NOT ok")
    assert failed == [{"node": "verifier", "ok": False}]
    stats = await run_stats(database)
    assert stats["node_latency_ms"]["verifier"]["failed"] == 1
    assert stats["node_latency_ms"]["executor"]["failed"] == 0


async def test_a_run_failed_into_a_dead_letter_counts_as_failed_in_every_figure(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run index still says running; its open dead letter makes it failed, as
    `payables threads` and the runs table of the report say. Cost per failed task,
    containment and the reasons must count the same run, with the dead letter's reason."""
    monkeypatch.setenv("PAYABLES_FAILPOINTS", "raise:verifier")
    async with open_agent(database=database) as agent:
        with pytest.raises(RunFailed, match="failed in verifier"):
            await agent.start("Validate INV-1002", user="clerk-ana")
    stats = await run_stats(database)
    assert stats["runs"]["by_status"] == {"failed": 1}
    assert stats["cost_per_task_usd"]["failed"]["runs"] == 1
    assert stats["containment"] == {"finished": 1, "completed_without_a_human": 0, "rate": 0.0}
    [reason] = stats["escalation_reasons"]
    assert reason["status"] == "failed" and reason["runs"] == 1
    assert "verifier" in reason["example"], reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (" 90s ", timedelta(seconds=90)),
    ],
)
def test_since_takes_a_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "0h", "-1h", "1.5h", "3 days", "1y", "1h30m"])
def test_a_bad_since_is_refused_with_examples(text: str) -> None:
    with pytest.raises(BadInput, match=r"not a duration.*30m, 24h or 7d"):
        parse_since(text)


@pytest.mark.parametrize("text", ["36501d", "5215w", "999999d", "999999w", "876001h"])
async def test_a_since_beyond_a_hundred_years_is_refused_not_a_crash(
    text: str, database: Database
) -> None:
    """Six digits of days or weeks reached before year 1 (Python's datetime cannot hold the
    cutoff) or out of Postgres's range: run_stats failed with a database error."""
    with pytest.raises(BadInput, match=r"longer than 100 years.*leave --since out"):
        await run_stats(database, since=parse_since(text))


async def test_a_since_of_a_hundred_years_is_all_runs(database: Database) -> None:
    async with open_agent(database=database) as agent:
        await agent.start("Validate INV-1002", user="clerk-ana")
    for text in ("36500d", "5214w"):
        report = await run_stats(database, since=parse_since(text))
        assert report["runs"]["total"] == 1, text


def test_reasons_group_by_code_or_first_sentence() -> None:
    assert reason_kind("Stopped before the planner step (budget_exhausted: steps 8/8).") == (
        "budget_exhausted"
    )
    assert reason_kind("Refused before starting (tenant_cost_cap): tenant 'a'") == (
        "tenant_cost_cap"
    )
    assert reason_kind("Which invoice? Name it by id, e.g. INV-1001.") == "Which invoice?"
    assert reason_kind("Could not finish: INV-1: gone") == reason_kind(
        "Could not finish: INV-22: gone"
    )
    assert reason_kind("  ") == "(no reason recorded)"


async def test_stats_command_prints_json_and_refuses_a_bad_since(
    database: Database, cli_env: dict[str, str]
) -> None:
    async with open_agent(database=database) as agent:
        await agent.start("Validate INV-1002", user="clerk-ana")
    report = payables_json(cli_env, "stats", "--since", "1h")
    assert report["runs"]["by_status"] == {"completed": 1}
    assert report["containment"]["rate"] == 1.0
    assert report["node_latency_ms"]["router"]["steps"] == 1
    assert report["tool_calls"]["stage_invoice"]["ok"] == 1
    text = payables(cli_env, "stats", "--since", "24h")
    assert text.returncode == 0, explain(text)
    assert "containment: 100.0% (1 of 1 finished runs completed without a human)" in text.stdout
    assert "cost per successful task: $0.0000 (1 run," in text.stdout
    error = payables_fails(cli_env, "stats", "--since", "yesterday")
    assert "--since 'yesterday' is not a duration" in error and "24h" in error
    error = payables_fails(cli_env, "stats", "--since", "999999w")
    assert "longer than 100 years" in error


# --- how step rows reach the table --------------------------------------------------------


def unpaid_step(node: str) -> StepMetric:
    return StepMetric(
        thread_id="t-steps",
        tenant="acme",
        node=node,
        started_at=datetime.now(UTC),
        duration_ms=1.5,
        model_calls=0,
        tokens=0,
        cost_usd=0.0,
        ok=True,
    )


async def step_nodes(database: Database) -> list[str]:
    found = await rows(database, "SELECT node FROM step_metrics ORDER BY id")
    return [r["node"] for r in found]


async def test_unpaid_steps_wait_and_are_written_together(database: Database) -> None:
    assert await record_step(database, unpaid_step("router")) is None
    assert await step_nodes(database) == []  # waiting in the buffer, not written one by one
    # With nothing else to flush it, the buffer writes on its own.
    deadline = time.monotonic() + 10 * FLUSH_DELAY_S + 5
    while await step_nodes(database) != ["router"]:
        assert time.monotonic() < deadline, "the waiting step row was never written"
        await asyncio.sleep(FLUSH_DELAY_S / 5)
    for node in ("planner", "executor", "verifier"):
        await record_step(database, unpaid_step(node))
    assert await flush_step_metrics(database) == 3  # one statement for the three
    await record_step(database, unpaid_step("respond"))
    await database.close()  # closing writes what waits
    assert await step_nodes(database) == ["router", "planner", "executor", "verifier", "respond"]


async def test_stats_count_the_step_rows_still_waiting_in_this_process(
    database: Database,
) -> None:
    await record_step(database, unpaid_step("router"))
    await record_step(database, unpaid_step("planner"))
    assert await step_nodes(database) == []  # the batch has not been written yet
    stats = await run_stats(database)
    assert {node: figures["steps"] for node, figures in stats["node_latency_ms"].items()} == {
        "router": 1,
        "planner": 1,
    }


async def test_a_paid_step_is_written_at_once_with_its_charge(database: Database) -> None:
    paid = replace(unpaid_step("planner"), model_calls=2, tokens=900, cost_usd=0.25)
    today = await record_step(database, paid)
    assert today is not None and today.cost_usd == pytest.approx(0.25)
    assert await step_nodes(database) == ["planner"]
    assert (await spent_today(database, "acme")).model_calls == 2


async def test_a_failed_write_of_waiting_rows_says_how_many_were_lost(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async with database.connection() as conn:  # every insert into step_metrics now fails
        await conn.execute("ALTER TABLE step_metrics ADD CONSTRAINT refuse CHECK (false) NOT VALID")
    await record_step(database, unpaid_step("router"))
    await record_step(database, unpaid_step("planner"))
    with caplog.at_level("WARNING", logger="state.step_metrics"):
        assert await flush_step_metrics(database) == 0
    assert "could not write 2 step_metrics rows" in caplog.text
    assert "refuse" in caplog.text  # the database's reason, for whoever reads the log
