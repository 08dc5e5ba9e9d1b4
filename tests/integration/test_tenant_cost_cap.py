"""The tenant's daily cost cap lives in Postgres and holds across processes.

A run whose budget does not fit under what is left of the tenant's day is refused before
any model call, and nothing but the refusal is written; every node's model spend is added
to the tenant's row, which other processes read before they admit a run or take a step.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from typing import Any

import pytest

from runtime.agent import Agent, RunFailed, open_agent
from runtime.context import Context
from runtime.replay import replay_dead_letter
from runtime.settings import PROJECT_ROOT
from state.costs import add_spend, admit_run, spent_today
from state.db import Database
from tests.billing import PRICES, billed, read_and_match, stage
from tests.cli import CLI_TIMEOUT_S, payables_json
from tests.fakes import ScriptedChatModel, ScriptedModels, tool_reply

pytestmark = pytest.mark.integration

APPROVE = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}}

SPEND_SCRIPT = """
import asyncio, os, sys
from state.costs import add_spend
from state.db import Database

async def main() -> None:
    db = Database(os.environ["DATABASE_URI"], max_size=2)
    try:
        for _ in range(int(sys.argv[2])):
            await add_spend(db, sys.argv[1], cost_usd=float(sys.argv[3]), model_calls=1)
    finally:
        await db.close()

asyncio.run(main())
"""


def spend_in_child(
    env: dict[str, str], tenant: str, times: int, usd: float
) -> subprocess.Popen[str]:
    """Start another process that charges ``usd`` to ``tenant`` ``times`` times."""
    return subprocess.Popen(
        [sys.executable, "-c", SPEND_SCRIPT, tenant, str(times), str(usd)],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str]) -> None:
    out, errors = child.communicate(timeout=CLI_TIMEOUT_S)
    assert child.returncode == 0, f"exit {child.returncode}\n{out}\n{errors}"


async def rows(database: Database, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with database.connection() as conn:
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())


async def final_usage(agent: Agent, thread_id: str) -> dict[str, Any]:
    snapshot = await agent.graph.aget_state(agent.config(thread_id))
    return dict(snapshot.values["usage"])


async def test_a_run_that_would_exceed_the_cap_is_refused_up_front(database: Database) -> None:
    await add_spend(database, "acme", cost_usd=49.5, model_calls=10)
    router, planner, respond = (ScriptedChatModel([]) for _ in range(3))
    models = ScriptedModels(router=router, planner=planner, respond=respond)
    cap = Context(tenant="acme", tenant_daily_cost_cap_usd=50.0, max_cost_usd=1.0)
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=cap)
    assert view["status"] == "refused"
    reason = view["reason"]
    assert "tenant 'acme'" in reason and "$49.5000" in reason and "$50.00" in reason
    assert "up to $1.00" in reason and "PAYABLES_TENANT_DAILY_COST_CAP_USD" in reason
    assert view["summary"].startswith("[refused]")
    assert router.received == planner.received == respond.received == []  # no model call
    # Nothing is written but the refusal: no tool call, no request or route event, the
    # run index says refused, the tenant's spend is unchanged and the refusal is counted.
    thread = view["thread_id"]
    assert await rows(database, "SELECT 1 FROM tool_calls WHERE thread_id = %s", thread) == []
    events = await rows(
        database, "SELECT kind FROM audit_events WHERE thread_id = %s ORDER BY seq", thread
    )
    assert [e["kind"] for e in events] == ["outcome"]
    (run,) = await rows(database, "SELECT status, route FROM runs WHERE thread_id = %s", thread)
    assert run == {"status": "refused", "route": None}
    today = await spent_today(database, "acme")
    assert (today.cost_usd, today.model_calls, today.runs, today.refused_runs) == (49.5, 10, 0, 1)
    assert await invoice_status(database, "INV-1002") == "received"


async def test_a_run_that_fits_is_admitted_and_every_node_is_charged(database: Database) -> None:
    await add_spend(database, "acme", cost_usd=10.0, model_calls=3)
    planner = ScriptedChatModel([read_and_match("INV-1002"), stage("INV-1002")])
    respond = ScriptedChatModel([billed(tool_reply("Summary", {"summary": "INV-1002 staged."}))])
    run = Context(
        tenant="acme", tenant_daily_cost_cap_usd=50.0, max_cost_usd=3.0, model_prices=PRICES
    )
    async with open_agent(
        models=ScriptedModels(planner=planner, respond=respond), database=database
    ) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=run)
        usage = await final_usage(agent, view["thread_id"])
    assert view["status"] == "completed", view["reason"]
    assert view["summary"] == "INV-1002 staged."
    assert usage["cost_usd"] == pytest.approx(2.4)  # two plans and a summary, $0.80 each
    today = await spent_today(database, "acme")
    assert today.cost_usd == pytest.approx(10.0 + usage["cost_usd"])
    assert (today.model_calls, today.runs, today.refused_runs) == (6, 1, 0)
    assert (await spent_today(database, "default")).cost_usd == 0.0  # per tenant


async def test_a_second_process_sees_the_first_ones_spend(
    database: Database, cli_env: dict[str, str]
) -> None:
    planner = ScriptedChatModel([read_and_match("INV-1002"), stage("INV-1002")])
    first = Context(
        tenant="acme", tenant_daily_cost_cap_usd=5.0, max_cost_usd=2.0, model_prices=PRICES
    )
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=first)
    assert view["status"] == "completed"  # spent $1.60 of acme's $5.00
    env = {**cli_env, "PAYABLES_TENANT": "acme", "PAYABLES_TENANT_DAILY_COST_CAP_USD": "5"}

    refused = payables_json({**env, "PAYABLES_MAX_COST_USD": "3.5"}, "run", "Validate INV-1001")
    assert refused["status"] == "refused"
    assert "tenant 'acme' has spent $1.6000 of its $5.00" in refused["reason"]
    assert refused["result"]["tool_calls"] == []

    admitted = payables_json({**env, "PAYABLES_MAX_COST_USD": "3.4"}, "run", "Validate INV-1001")
    assert admitted["status"] == "completed", admitted["reason"]  # $1.60 + $3.40 fits

    today = await spent_today(database, "acme")
    assert (today.runs, today.refused_runs) == (2, 1)  # counted by three processes


async def test_spend_from_concurrent_processes_is_never_lost(
    database: Database, cli_env: dict[str, str]
) -> None:
    children = [spend_in_child(cli_env, "acme", 40, 0.0125) for _ in range(3)]
    for child in children:
        finish(child)
    today = await spent_today(database, "acme")
    assert today.cost_usd == pytest.approx(1.5)
    assert today.model_calls == 120


async def test_the_cap_holds_mid_run_when_another_process_spends(
    database: Database, cli_env: dict[str, str]
) -> None:
    cap = Context(tenant="acme", tenant_daily_cost_cap_usd=5.0, max_cost_usd=1.0)
    async with open_agent(database=database) as agent:
        paused = await agent.start(
            "Validate INV-1001 and pay it if it matches", user="clerk-ana", context=cap
        )
        assert paused["status"] == "interrupted"
        finish(spend_in_child(cli_env, "acme", 1, 5.0))  # while the run waits for a reviewer
        view = await agent.resume(paused["thread_id"], APPROVE, context=cap)
    assert view["status"] == "escalated"
    assert "Stopped before the executor step" in view["reason"]
    assert "budget_exhausted: tenant acme daily cost" in view["reason"]
    assert "$5.0000/$5.0000" in view["reason"]
    assert [d["decision"] for d in view["result"]["decisions"]] == ["approve"]
    payments = await rows(database, "SELECT 1 FROM payments WHERE invoice_id = 'INV-1001'")
    assert payments == []


async def test_only_todays_spend_counts(database: Database) -> None:
    (row,) = await rows(database, "SELECT (now() AT TIME ZONE 'UTC')::date AS today")
    today: date = row["today"]
    await add_spend(database, "acme", cost_usd=100.0, model_calls=1, day=today - timedelta(1))
    cap = Context(tenant="acme", tenant_daily_cost_cap_usd=5.0, max_cost_usd=1.0)
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=cap)
    assert view["status"] == "completed"
    spent = await spent_today(database, "acme")
    assert (spent.day, spent.cost_usd, spent.runs) == (today, 0.0, 1)


async def test_admission_is_decided_and_counted_in_one_statement(database: Database) -> None:
    await add_spend(database, "acme", cost_usd=4.0, model_calls=1)
    fits = await admit_run(database, "acme", thread_id="t1", max_cost_usd=1.0, cap_usd=5.0)
    too_much = await admit_run(database, "acme", thread_id="t2", max_cost_usd=1.01, cap_usd=5.0)
    fresh = await admit_run(database, "new-tenant", thread_id="t3", max_cost_usd=6.0, cap_usd=5.0)
    assert (fits.admitted, too_much.admitted, fresh.admitted) == (True, False, False)
    assert (too_much.today.runs, too_much.today.refused_runs) == (1, 1)
    assert (fresh.today.cost_usd, fresh.today.refused_runs) == (0.0, 1)
    # Once per thread: t1 again is neither counted nor checked; refused t2 is decided again.
    again = await admit_run(database, "acme", thread_id="t1", max_cost_usd=1.01, cap_usd=5.0)
    still = await admit_run(database, "acme", thread_id="t2", max_cost_usd=1.01, cap_usd=5.0)
    assert (again.admitted, still.admitted) == (True, False)
    assert (still.today.runs, still.today.refused_runs) == (1, 2)
    with pytest.raises(ValueError, match="spend must be >= 0"):
        await add_spend(database, "acme", cost_usd=-1.0, model_calls=0)


async def invoice_status(database: Database, invoice_id: str) -> str:
    (row,) = await rows(database, "SELECT status FROM invoices WHERE invoice_id = %s", invoice_id)
    status: str = row["status"]
    return status


async def test_a_replayed_router_is_not_admitted_or_counted_again(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission is once per thread: the router's step re-run by a replay was admitted."""
    # A replay runs with this environment's budgets (and the dead letter's tenant).
    monkeypatch.setenv("PAYABLES_TENANT_DAILY_COST_CAP_USD", "5")
    monkeypatch.setenv("PAYABLES_MAX_COST_USD", "1")
    cap = Context(tenant="acme")
    assert (cap.tenant_daily_cost_cap_usd, cap.max_cost_usd) == (5.0, 1.0)
    monkeypatch.setenv("PAYABLES_FAILPOINTS", "raise:after:router")
    async with open_agent(database=database) as agent:
        with pytest.raises(RunFailed) as failed:
            await agent.start("Validate INV-1002", user="clerk-ana", context=cap)
        assert failed.value.dead_letter_id is not None
        admitted = await spent_today(database, "acme")
        assert (admitted.runs, admitted.refused_runs) == (1, 0)
        # Other runs spent meanwhile: a new run's budget no longer fits under the cap, but
        # this one was admitted when it started (the spend still stops it at the cap).
        await add_spend(database, "acme", cost_usd=4.5, model_calls=1)
        monkeypatch.delenv("PAYABLES_FAILPOINTS")
        replay = await replay_dead_letter(agent, failed.value.dead_letter_id)
    assert replay.how == "continue" and replay.view is not None
    assert replay.view["status"] == "completed", replay.view["reason"]
    today = await spent_today(database, "acme")
    assert (today.runs, today.refused_runs) == (1, 0)
    assert await invoice_status(database, "INV-1002") == "staged"


async def test_a_router_retried_after_a_transient_error_is_counted_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYABLES_FAILPOINTS", "flaky:after:router:1")
    cap = Context(tenant="acme", tenant_daily_cost_cap_usd=5.0, max_cost_usd=1.0)
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=cap)
    assert view["status"] == "completed", view["reason"]
    today = await spent_today(database, "acme")
    assert (today.runs, today.refused_runs) == (1, 0)
