"""The run index as operators see it: whose a thread is, what failed, what waits.

`payables threads`, `stats` and `approvals` read the run index; `show` reads the
checkpoint. They must agree, and a thread keeps its tenant whoever goes on with it.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from runtime.agent import open_agent
from runtime.context import Context
from state.db import Database
from tests.cli import explain, payables, payables_json

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PAY_REQUEST = "Validate INV-1001 and pay it if it matches"


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
