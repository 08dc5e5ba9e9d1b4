"""Retention on a real Postgres: `payables prune` deletes old finished threads' checkpoints.

Threads are made old by moving their run row's `updated_at` back (the retention clock),
as if the days had passed; nothing else about them is touched.
"""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from runtime.agent import open_agent
from runtime.context import Context
from runtime.errors import BadInput
from state.db import Database
from state.deadletters import record_dead_letter
from state.retention import prune
from state.runs import ThreadReused, record_run
from tests.cli import explain, payables, payables_fails, payables_json, scalar

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PAY_REQUEST = "Validate INV-1001 and pay it if it matches"
APPROVE = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}}
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")
KEPT_TABLES = ("audit_events", "tool_calls", "approval_decisions", "runs", "invoices", "payments")


def row_json(db_uri: str, thread: str) -> str:
    """The thread's whole run index row, as JSON text (updated_at too)."""
    return str(
        scalar(db_uri, "SELECT row_to_json(runs)::text FROM runs WHERE thread_id = %s", thread)
    )


def held(db_uri: str, thread: str) -> dict[str, int]:
    """Rows each checkpoint table holds for ``thread``."""
    return {
        table: scalar(db_uri, f"SELECT count(*) FROM {table} WHERE thread_id = %s", thread)
        for table in CHECKPOINT_TABLES
    }


def table_counts(db_uri: str) -> dict[str, int]:
    return {table: scalar(db_uri, f"SELECT count(*) FROM {table}") for table in KEPT_TABLES}


def plain(text: str) -> str:
    """CLI error text without the box drawing and line wrapping of the terminal."""
    return " ".join(text.replace("│", " ").split())


def age(db_uri: str, days: int, *threads: str) -> None:
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute(
            "UPDATE runs SET updated_at = now() - make_interval(days => %s)"
            " WHERE thread_id = ANY(%s)",
            (days, list(threads)),
        )


async def finished_thread(database: Database, request: str = "Validate INV-1002") -> str:
    async with open_agent(database=database) as agent:
        view = await agent.start(request, user="clerk-ana")
    assert view["status"] == "completed", view
    return str(view["thread_id"])


async def test_prune_deletes_only_old_finished_threads_checkpoints(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    async with open_agent(database=database) as agent:
        old_done = (await agent.start("Validate INV-1002", user="clerk-ana"))["thread_id"]
        waiting = await agent.start(PAY_REQUEST, user="clerk-ana")
        assert waiting["status"] == "interrupted"
        old_waiting = waiting["thread_id"]
        recent_done = (await agent.start("Validate INV-1003", user="clerk-ben"))["thread_id"]
    # A process killed mid-run whose run row already says completed (the respond node
    # writes the row before the last checkpoint): the checkpoint has the last word.
    old_stalled = "stalled"
    proc = payables(
        {**cli_env, "PAYABLES_FAILPOINTS": "verifier"},
        *("run", "Validate INV-1005", "--user", "clerk-ana", "--thread", old_stalled),
    )
    assert proc.returncode == -signal.SIGKILL, explain(proc)
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute("UPDATE runs SET status = 'completed' WHERE thread_id = %s", (old_stalled,))
    age(db_uri, 40, old_done, old_waiting, old_stalled)
    before = {t: held(db_uri, t) for t in (old_done, old_waiting, recent_done, old_stalled)}
    assert all(n > 0 for n in before[old_done].values())
    tables_before = table_counts(db_uri)

    dry = payables_json(cli_env, "prune", "--older-than", "30", "--dry-run")
    assert dry["dry_run"] is True
    assert [t["thread_id"] for t in dry["threads"]] == [old_done]
    assert dry["pruned"] == {
        "threads": 1,
        "checkpoints": before[old_done]["checkpoints"],
        "writes": before[old_done]["checkpoint_writes"],
        "blobs": before[old_done]["checkpoint_blobs"],
    }
    kept = {t["thread_id"]: t["kept_because"] for t in dry["kept"]}
    assert set(kept) == {old_waiting, old_stalled}
    assert "approval" in kept[old_waiting]
    # Killed entering the verifier: new requests checkpoint in the background, each save
    # after the one before, so on a loaded machine the last saved checkpoint can be several
    # steps behind; whichever it is, the run has a next step and can be continued.
    assert re.search(r"next: (router|planner|executor|verifier)", kept[old_stalled]), kept
    assert f"payables continue {old_stalled}" in kept[old_stalled]
    assert {t: held(db_uri, t) for t in before} == before
    assert scalar(db_uri, "SELECT count(*) FROM runs WHERE pruned_at IS NOT NULL") == 0

    done = payables_json(cli_env, "prune", "--older-than", "30")
    assert done["dry_run"] is False
    assert done["pruned"] == dry["pruned"]
    assert held(db_uri, old_done) == dict.fromkeys(CHECKPOINT_TABLES, 0)
    for thread in (old_waiting, recent_done, old_stalled):
        assert held(db_uri, thread) == before[thread], thread
    assert table_counts(db_uri) == tables_before
    assert scalar(db_uri, "SELECT pruned_at FROM runs WHERE thread_id = %s", old_done)
    admitted = "SELECT count(*) FROM run_admissions WHERE thread_id = %s"
    assert scalar(db_uri, admitted, old_done) == 0  # a pruned thread never runs again
    assert [scalar(db_uri, admitted, t) for t in (old_waiting, recent_done)] == [1, 1]

    verify = payables(cli_env, "audit", "verify")
    assert verify.returncode == 0 and "intact" in verify.stdout, explain(verify)
    shown = payables_json(cli_env, "show", old_done)
    assert (shown["status"], shown["user"]) == ("completed", "clerk-ana")
    assert shown["pruned_at"] and "pruned" in shown["note"]
    text = payables(cli_env, "show", old_done)
    assert text.returncode == 0 and "pruned" in text.stdout, explain(text)
    listed = payables_json(cli_env, "threads")["threads"]
    assert old_done in [row["thread_id"] for row in listed]

    # The approval that was kept still works, and pays once.
    paid = payables_json(
        cli_env, "resume", old_waiting, "--approve", "--reviewer", "rev-1", "--role", "approver"
    )
    assert paid["status"] == "completed"
    assert scalar(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1
    assert payables_json(cli_env, "prune", "--older-than", "30")["pruned"]["threads"] == 0


def test_prune_refuses_bad_ages_and_reads_the_retention_setting(
    cli_env: dict[str, str],
) -> None:
    zero = plain(payables_fails(cli_env, "prune", "--older-than", "0"))
    assert "'--older-than': Input should be greater than or equal to 1" in zero
    assert "valid integer" in plain(payables_fails(cli_env, "prune", "--older-than", "soon"))
    stderr = plain(payables_fails({**cli_env, "PAYABLES_RETENTION_DAYS": "a month"}, "prune"))
    assert "PAYABLES_RETENTION_DAYS must be a whole number of days" in stderr
    stderr = plain(payables_fails({**cli_env, "PAYABLES_RETENTION_DAYS": "0"}, "prune"))
    assert "PAYABLES_RETENTION_DAYS must be between 1 and 36500" in stderr


async def test_the_retention_setting_is_the_default_age(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    thread = await finished_thread(database)
    age(db_uri, 40, thread)
    longer = payables_json({**cli_env, "PAYABLES_RETENTION_DAYS": "50"}, "prune", "--dry-run")
    assert (longer["older_than_days"], longer["pruned"]["threads"]) == (50, 0)
    shorter = payables_json({**cli_env, "PAYABLES_RETENTION_DAYS": "35"}, "prune", "--dry-run")
    assert (shorter["older_than_days"], shorter["pruned"]["threads"]) == (35, 1)
    default = payables_json(cli_env, "prune", "--dry-run")
    assert (default["older_than_days"], default["pruned"]["threads"]) == (30, 1)


async def test_an_open_dead_letter_keeps_its_thread(database: Database, db_uri: str) -> None:
    thread = await finished_thread(database)
    number = await record_dead_letter(
        database,
        thread_id=thread,
        tenant="default",
        action="continue",
        step="respond",
        error=TimeoutError("respond timed out"),
        attempts=3,
        payload={"action": "continue", "input": None, "checkpoint_id": None, "context": {}},
    )
    later = datetime.now(UTC) + timedelta(days=31)
    async with open_agent(database=database) as agent:
        report = await prune(database, agent.graph, older_than_days=30, now=later)
        assert report.pruned == []
        assert [t.thread_id for t in report.kept] == [thread]
        assert f"open dead letter(s) {number}" in (report.kept[0].kept_because or "")
        with psycopg.connect(db_uri, autocommit=True) as conn:
            conn.execute(
                "UPDATE dead_letters SET status = 'replayed' WHERE dead_letter_id = %s", (number,)
            )
        report = await prune(database, agent.graph, older_than_days=30, now=later)
    assert [t.thread_id for t in report.pruned] == [thread]
    assert held(db_uri, thread) == dict.fromkeys(CHECKPOINT_TABLES, 0)


async def test_a_thread_whose_run_lock_is_held_is_kept(database: Database, db_uri: str) -> None:
    thread = await finished_thread(database)
    later = datetime.now(UTC) + timedelta(days=31)
    async with open_agent(database=database) as agent:

        def lock(thread_id: str) -> Any:
            return agent.thread_lock(thread_id, f"Thread {thread_id} is busy.")

        async with agent.thread_lock(thread, "held by the test"):
            report = await prune(database, agent.graph, older_than_days=30, lock=lock, now=later)
        assert report.pruned == []
        assert [(t.thread_id, t.kept_because) for t in report.kept] == [
            (thread, "a run on it is in progress right now")
        ]
        assert held(db_uri, thread)["checkpoints"] > 0
        report = await prune(database, agent.graph, older_than_days=30, lock=lock, now=later)
    assert [t.thread_id for t in report.pruned] == [thread]
    assert held(db_uri, thread) == dict.fromkeys(CHECKPOINT_TABLES, 0)


async def test_a_graph_run_on_a_pruned_threads_id_is_refused_before_it_writes(
    database: Database, db_uri: str
) -> None:
    """What a LangGraph server client that picks the thread id reaches: the graph itself.

    `Agent.start` refuses the id before the graph runs (the CLI); a server run goes
    straight into the graph, whose router must refuse it as well, before anything of the
    new request is written: the run index row still holds the old request, requester,
    tenant and prune mark, and the audit chain nothing new.
    """
    thread = await finished_thread(database)
    later = datetime.now(UTC) + timedelta(days=31)
    async with open_agent(database=database) as agent:
        report = await prune(database, agent.graph, older_than_days=30, now=later)
        assert [t.thread_id for t in report.pruned] == [thread]
        before = row_json(db_uri, thread)
        tables = table_counts(db_uri)
        counted = scalar(
            db_uri, "SELECT coalesce(sum(runs + refused_runs), 0) FROM tenant_daily_costs"
        )
        with pytest.raises(BadInput, match="thread ids are not reused") as refused:
            await agent.graph.ainvoke(
                {"request": PAY_REQUEST, "user": "clerk-ben"},
                agent.config(thread),
                context=Context(tenant="other"),
            )
    assert thread in str(refused.value) and "new thread" in str(refused.value)
    after = row_json(db_uri, thread)
    assert after == before
    assert table_counts(db_uri) == tables  # no audit row, tool call, payment, ...
    # Not admitted under the cost cap either: neither counted nor recorded as admitted.
    assert (
        scalar(db_uri, "SELECT coalesce(sum(runs + refused_runs), 0) FROM tenant_daily_costs")
        == counted
    )
    admitted = "SELECT count(*) FROM run_admissions WHERE thread_id = %s"
    assert scalar(db_uri, admitted, thread) == 0


async def test_the_run_index_never_writes_a_new_run_into_a_pruned_threads_row(
    database: Database, db_uri: str
) -> None:
    """Every writer (respond after a cost-cap refusal, say, where the router never ran)."""
    thread = await finished_thread(database)
    later = datetime.now(UTC) + timedelta(days=31)
    async with open_agent(database=database) as agent:
        await prune(database, agent.graph, older_than_days=30, now=later)
    before = row_json(db_uri, thread)
    with pytest.raises(ThreadReused, match=f"Thread {thread} was used by an earlier request"):
        await record_run(
            database,
            thread_id=thread,
            request=PAY_REQUEST,
            requester="clerk-ben",
            tenant="other",
            route=None,
            status="refused",
            reason="tenant_cost_cap",
        )
    after = row_json(db_uri, thread)
    assert after == before


async def test_new_input_on_a_thread_that_holds_a_request_is_refused_by_the_graph(
    database: Database, db_uri: str
) -> None:
    """A server client may send a second request to a finished thread (the server refuses
    it first, `server/auth.py` `check_unused_thread`; the graph holds the same rule): the
    router refuses it before it is admitted under the cap or any of it is written."""
    thread = await finished_thread(database)
    before = row_json(db_uri, thread)
    tables = table_counts(db_uri)
    admitted = scalar(db_uri, "SELECT sum(runs) FROM tenant_daily_costs")
    async with open_agent(database=database) as agent:
        with pytest.raises(BadInput, match="already holds a request") as refused:
            await agent.graph.ainvoke(
                {"request": PAY_REQUEST, "user": "clerk-ana"},
                agent.config(thread),
                context=Context(),
            )
    assert "new thread" in str(refused.value)
    assert row_json(db_uri, thread) == before
    assert table_counts(db_uri) == tables
    assert scalar(db_uri, "SELECT sum(runs) FROM tenant_daily_costs") == admitted
    paid = "SELECT count(*) FROM payments WHERE thread_id = %s"
    assert scalar(db_uri, paid, thread) == 0
