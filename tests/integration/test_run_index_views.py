"""The run index as operators see it: whose a thread is, what failed, what waits.

`payables threads`, `stats` and `approvals` read the run index; `show` reads the
checkpoint. They must agree, and a thread keeps its tenant whoever goes on with it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import psycopg
import pytest

from runtime.agent import open_agent
from runtime.context import Context
from state.approvals import REVIEWER_ROLES
from state.db import Database
from state.deadletters import DeadLetterAction
from state.routes import RunStatus
from state.runs import RECENT_RUNS_SQL, record_run
from state.stats import TOOL_CALLS_SQL
from tests.cli import explain, payables, payables_json
from tools.contract import Tier

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PAY_REQUEST = "Validate INV-1001 and pay it if it matches"
APPROVE = ("--approve", "--reviewer", "rev-1", "--role", "approver")


def column(db_uri: str, sql: str, *params: Any) -> set[Any]:
    with psycopg.connect(db_uri) as conn:
        return {row[0] for row in conn.execute(sql, params).fetchall()}


async def test_a_thread_answered_from_the_cli_stays_in_its_tenant(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    """Started under tenant acme (as the server starts acme's runs), answered by an operator
    whose environment names no tenant: acme's chain and costs get every row."""
    async with open_agent(database=database) as agent:
        view = await agent.start(PAY_REQUEST, user="clerk-ana", context=Context(tenant="acme"))
    assert view["status"] == "interrupted", view
    thread = view["thread_id"]
    done = payables_json(
        cli_env, "resume", thread, "--approve", "--reviewer", "rev-1", "--role", "approver"
    )
    assert done["status"] == "completed", done
    audit = "SELECT DISTINCT tenant FROM audit_events WHERE thread_id = %s"
    assert column(db_uri, audit, thread) == {"acme"}
    steps = "SELECT DISTINCT tenant FROM step_metrics WHERE thread_id = %s"
    assert column(db_uri, steps, thread) == {"acme"}
    assert column(db_uri, "SELECT count(*) FROM payments WHERE thread_id = %s", thread) == {1}


def test_a_failed_run_is_listed_as_failed_until_it_goes_on(cli_env: dict[str, str]) -> None:
    proc = payables(
        {**cli_env, "PAYABLES_FAILPOINTS": "raise:verifier"},
        *("run", PAY_REQUEST, "--user", "clerk-ana", "--thread", "t-fails"),
    )
    assert proc.returncode == 1, explain(proc)
    assert payables_json(cli_env, "show", "t-fails")["status"] == "failed"
    listed = {r["thread_id"]: r["status"] for r in payables_json(cli_env, "threads")["threads"]}
    assert listed["t-fails"] == "failed"
    assert payables_json(cli_env, "stats")["runs"]["by_status"] == {"failed": 1}

    # Finished past the failure, it waits for the payment's approval, and is listed so.
    assert payables_json(cli_env, "continue", "t-fails")["status"] == "interrupted"
    listed = {r["thread_id"]: r["status"] for r in payables_json(cli_env, "threads")["threads"]}
    assert listed["t-fails"] == "interrupted"


def test_show_and_threads_agree_on_a_run_failed_after_its_answer_was_recorded(
    cli_env: dict[str, str],
) -> None:
    thread = "t-answer-failed"
    payables_json(cli_env, "run", PAY_REQUEST, "--user", "clerk-ana", "--thread", thread)
    failing = {**cli_env, "PAYABLES_FAILPOINTS": "raise:after:approval"}
    proc = payables(failing, "resume", thread, *APPROVE)
    assert proc.returncode == 1, explain(proc)

    listed = {r["thread_id"]: r["status"] for r in payables_json(cli_env, "threads")["threads"]}
    shown = payables_json(cli_env, "show", thread)
    assert listed[thread] == shown["status"] == "failed", shown["note"]
    number = payables_json(cli_env, "deadletters", "list")["dead_letters"][0]["dead_letter_id"]
    assert f"dead letter {number}" in shown["note"], shown["note"]
    assert f"payables continue {thread}" in shown["note"], shown["note"]


async def test_approvals_lists_every_waiting_thread_however_many(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    async with open_agent(database=database) as agent:
        oldest = await agent.start(PAY_REQUEST, user="clerk-ana", thread_id="oldest-waiting")
    assert oldest["status"] == "interrupted", oldest
    # 500 more threads waiting at the same approval, all newer in the run index.
    copies = "SELECT 'w-' || n AS tid FROM generate_series(1, 500) AS n"
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute(
            "UPDATE runs SET updated_at = now() - interval '1 day'"
            " WHERE thread_id = 'oldest-waiting'"
        )
        conn.execute(
            "INSERT INTO checkpoints SELECT i.tid, c.checkpoint_ns, c.checkpoint_id,"
            f" c.parent_checkpoint_id, c.type, c.checkpoint, c.metadata FROM ({copies}) i,"
            " checkpoints c WHERE c.thread_id = 'oldest-waiting'"
        )
        conn.execute(
            "INSERT INTO checkpoint_blobs SELECT i.tid, b.checkpoint_ns, b.channel, b.version,"
            f" b.type, b.blob FROM ({copies}) i, checkpoint_blobs b"
            " WHERE b.thread_id = 'oldest-waiting'"
        )
        conn.execute(
            "INSERT INTO checkpoint_writes SELECT i.tid, w.checkpoint_ns, w.checkpoint_id,"
            f" w.task_id, w.idx, w.channel, w.type, w.blob, w.task_path FROM ({copies}) i,"
            " checkpoint_writes w WHERE w.thread_id = 'oldest-waiting'"
        )
        conn.execute(
            "INSERT INTO runs (thread_id, request, requester, tenant, route, status)"
            f" SELECT i.tid, r.request, r.requester, r.tenant, r.route, r.status"
            f" FROM ({copies}) i, runs r WHERE r.thread_id = 'oldest-waiting'"
        )
    listed = payables_json(cli_env, "approvals")["pending_approvals"]
    threads = {a["thread_id"] for a in listed}
    assert len(threads) == 501 and "oldest-waiting" in threads


async def test_status_and_kind_columns_hold_only_the_values_the_code_knows(
    database: Database,
) -> None:
    """A misspelt status ('complete') would be a run no listing, prune or trigger knows:
    never finished, never pruned, its dead letters never resolved. The database refuses it."""
    async with database.connection() as conn:
        for n, status in enumerate(get_args(RunStatus)):
            await record_run(
                database,
                thread_id=f"t-{n}",
                request="Validate INV-1002",
                requester="clerk-ana",
                tenant="default",
                route=None,
                status=status,
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="runs_status_check"):
            await record_run(
                database,
                thread_id="t-0",
                request="Validate INV-1002",
                requester="clerk-ana",
                tenant="default",
                route=None,
                status="complete",
            )
        for n, action in enumerate(get_args(DeadLetterAction)):
            await conn.execute(
                "INSERT INTO dead_letters (thread_id, tenant, action, error_class, message,"
                " payload) VALUES (%s, 'default', %s, 'E', 'm', '{}')",
                (f"t-{n}", action),
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="dead_letters_action_check"):
            await conn.execute(
                "INSERT INTO dead_letters (thread_id, tenant, action, error_class, message,"
                " payload) VALUES ('t-0', 'default', 'restart', 'E', 'm', '{}')"
            )
        for n, tier in enumerate(Tier):
            await conn.execute(
                "INSERT INTO tool_calls (idempotency_key, thread_id, step_id, tool, args, tier,"
                " result) VALUES (%s, 't-0', 's', 'tool', '{}', %s, '{}')",
                (f"k-{n}", tier.value),
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="tool_calls_tier_check"):
            await conn.execute(
                "INSERT INTO tool_calls (idempotency_key, thread_id, step_id, tool, args, tier,"
                " result) VALUES ('k-x', 't-0', 's', 'tool', '{}', 'write', '{}')"
            )
        decision = (
            "INSERT INTO approval_decisions (thread_id, step_id, tool, args_hash, reviewer_id,"
            " reviewer_role, decision) VALUES ('t-0', 's', 'tool', 'h', %s, %s, 'approve')"
        )
        for role in REVIEWER_ROLES:
            await conn.execute(decision, (f"rev-{role}", role))
        with pytest.raises(psycopg.errors.CheckViolation, match="approval_decisions_role_check"):
            await conn.execute(decision, ("rev-x", "Controller"))


@pytest.mark.parametrize(
    ("query", "params", "index"),
    [
        (RECENT_RUNS_SQL, {"status": None, "limit": 50}, "runs_updated"),
        (RECENT_RUNS_SQL, {"status": "interrupted", "limit": 50}, "runs_updated"),
        (TOOL_CALLS_SQL, {"cutoff": datetime(2026, 1, 1, tzinfo=UTC)}, "tool_calls_created"),
    ],
)
async def test_threads_and_stats_find_their_rows_through_an_index(
    database: Database, query: str, params: dict[str, Any], index: str
) -> None:
    # Sequential scans priced out: the plan shows whether an index can serve the query at
    # all, which a table of a few test rows would not (a scan of it is cheaper anyway).
    async with database.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        cur = await conn.execute(f"EXPLAIN {query}", params)
        plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
    assert index in plan, plan
