"""The performance changes keep their promises: pooled checks, pooled locks, durability.

- A pooled connection the server closed (restart, killed backend) is replaced on borrow,
  and one returned a moment ago is lent without a round trip; one idle for long is pinged.
- A lock connection comes back with its session locks released.
- A new request's leg writes checkpoints asynchronously; a resumed leg synchronously.
- ``usage``, written at every step, is checkpointed inline as text, not as a blob row.
- Audit rows and calls that need no approval commit without waiting for the disk;
  payments and bank changes keep the server's setting.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from psycopg._connection_base import BaseConnection
from psycopg.types.json import Jsonb

from runtime.agent import AFTER_APPROVAL_DURABILITY, START_DURABILITY, open_agent
from state import db as state_db
from state.audit import RELAXED_COMMIT, append_event, verify_chain
from state.db import CONNECTION_KWARGS, Database
from state.graph_state import pending_steps
from tools.contract import Tier
from tools.gate import _RELAXED_TIERS

pytestmark = pytest.mark.integration


async def last_query(uri: str, pid: int) -> str:
    """What backend ``pid`` ran last, as another session sees it."""
    async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as other:
        cur = await other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
    assert row is not None, f"backend {pid} is gone"
    return str(row["query"])


async def test_a_connection_returned_a_moment_ago_is_lent_without_a_ping(db_uri: str) -> None:
    database = Database(db_uri, max_size=1)
    try:
        async with database.connection() as conn:
            pid = conn.info.backend_pid
            await conn.execute("SELECT 'marker-before-return'")
        async with database.connection() as conn:
            assert conn.info.backend_pid == pid
            assert await last_query(db_uri, pid) == "SELECT 'marker-before-return'"
    finally:
        await database.close()


async def test_a_connection_idle_for_long_is_pinged_before_it_is_lent(
    db_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_db, "IDLE_PING_S", 0.0)
    database = Database(db_uri, max_size=1)
    try:
        async with database.connection() as conn:
            pid = conn.info.backend_pid
            await conn.execute("SELECT 'marker-before-return'")
        await asyncio.sleep(0.01)
        async with database.connection() as conn:
            assert conn.info.backend_pid == pid
            assert await last_query(db_uri, pid) == "SELECT 1"
    finally:
        await database.close()


async def test_a_connection_the_server_closed_is_replaced_on_borrow(db_uri: str) -> None:
    database = Database(db_uri, max_size=1)
    try:
        async with database.connection() as conn:
            dead_pid = conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (dead_pid,))
        await asyncio.sleep(0.2)  # the server closes the socket
        async with database.connection() as conn:
            cur = await conn.execute("SELECT pg_backend_pid() AS pid")
            row = await cur.fetchone()
        assert row is not None and row["pid"] != dead_pid
    finally:
        await database.close()


async def test_a_lock_connection_comes_back_with_its_locks_released(db_uri: str) -> None:
    database = Database(db_uri, max_size=1, max_locks=1)
    key = (4242, 7)
    try:
        async with database.lock_connection() as conn:
            pid = conn.info.backend_pid
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS locked", key)
            assert (await cur.fetchone())["locked"]  # type: ignore[index]
            async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as rival:
                cur = await rival.execute("SELECT pg_try_advisory_lock(%s, %s) AS locked", key)
                assert not (await cur.fetchone())["locked"]  # type: ignore[index]
        async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as rival:
            cur = await rival.execute("SELECT pg_try_advisory_lock(%s, %s) AS locked", key)
            assert (await cur.fetchone())["locked"]  # type: ignore[index]
        async with database.lock_connection() as conn:
            assert conn.info.backend_pid == pid  # the same connection, reused
    finally:
        await database.close()


async def test_new_requests_checkpoint_async_and_resumed_legs_sync(database: Database) -> None:
    assert (START_DURABILITY, AFTER_APPROVAL_DURABILITY) == ("async", "sync")
    async with open_agent(database=database) as agent:
        seen: list[Any] = []
        ainvoke = agent.graph.ainvoke

        async def recording(*args: Any, **kwargs: Any) -> Any:
            seen.append(kwargs["durability"])
            return await ainvoke(*args, **kwargs)

        agent.graph.ainvoke = recording  # type: ignore[method-assign]
        view = await agent.start("Validate INV-1001 and pay it", user="clerk-ana")
        assert view["status"] == "interrupted"
        done = await agent.resume(
            view["thread_id"],
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
        )
    assert done["status"] == "completed"
    assert done["result"]["invoices"]["INV-1001"]["actions"] == ["staged", "payment_scheduled"]
    assert seen == ["async", "sync"]


async def test_a_step_that_returned_without_its_checkpoint_is_still_pending(
    database: Database, db_uri: str
) -> None:
    """A crash between a step's saved writes and its checkpoint (async makes it likelier).

    Dropping the newest checkpoint of a finished run leaves exactly that: the respond
    step's writes saved against the checkpoint before, and no checkpoint of its own.
    """
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
        thread = view["thread_id"]
        assert view["status"] == "completed"
        async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
            await conn.execute(
                "DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_id ="
                " (SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id = %s)",
                (thread, thread),
            )
        snapshot = await agent.graph.aget_state(agent.config(thread))
        assert snapshot.next == ()  # what LangGraph reports ...
        assert pending_steps(snapshot) == ("respond",)  # ... and what is still to happen
        assert (await agent.view(thread))["status"] == "running"
        done = await agent.continue_run(thread)
        finished = await agent.graph.aget_state(agent.config(thread))
    assert done["status"] == "completed"
    assert done["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    assert pending_steps(finished) == ()


async def test_relaxed_appends_skip_the_disk_wait_only_for_their_own_transaction(
    db_uri: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:

        async def mode() -> str:
            cur = await conn.execute("SELECT current_setting('synchronous_commit') AS m")
            row = await cur.fetchone()
            assert row is not None
            return str(row["m"])

        server_default = await mode()
        async with conn.transaction():
            await append_event(
                conn, tenant="t", thread_id="x", kind="route", payload={"n": 1}, relaxed=True
            )
            assert await mode() == RELAXED_COMMIT == "off"
        assert await mode() == server_default
        async with conn.transaction():
            await append_event(conn, tenant="t", thread_id="x", kind="route", payload={"n": 2})
            assert await mode() == server_default


def test_only_calls_that_need_no_approval_commit_relaxed() -> None:
    relaxed = {tier for tier in Tier if tier.value in _RELAXED_TIERS}
    assert relaxed == {Tier.READ, Tier.REVERSIBLE}
    assert not any(tier.needs_approval for tier in relaxed)


class Statements:
    """Counts what this process sends Postgres: statements and transaction commands."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        for cls, name in (
            (psycopg.AsyncCursor, "execute"),
            (psycopg.AsyncCursor, "executemany"),
        ):
            monkeypatch.setattr(cls, name, self._counting(getattr(cls, name)))
        exec_command = BaseConnection._exec_command

        def command(conn: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
            self.sent.append(sql.decode() if isinstance(sql, bytes) else str(sql))
            return exec_command(conn, sql, *args, **kwargs)

        monkeypatch.setattr(BaseConnection, "_exec_command", command)

    def _counting(self, method: Any) -> Any:
        async def counted(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            self.sent.append(query if isinstance(query, str) else repr(query))
            return await method(cursor, query, *args, **kwargs)

        return counted


async def test_an_audit_append_is_one_statement_once_the_head_is_known(
    db_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        await append_event(conn, tenant="t", thread_id="x", kind="route", payload={"n": 1})
        counter = Statements(monkeypatch)
        await append_event(conn, tenant="t", thread_id="x", kind="route", payload={"n": 2})
        async with conn.transaction():
            await append_event(conn, tenant="t", thread_id="x", kind="route", payload={"n": 3})
    assert [s.split("(")[0] for s in counter.sent] == [
        "SELECT * FROM audit_append",
        "BEGIN",
        "SELECT * FROM audit_append",
        "COMMIT",
    ]


async def test_an_invoice_flow_run_stays_within_its_round_trips(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 146 before the performance work, 48 after (bare LangGraph: 23): a change that
    # adds statements to every run shows here, with the list to see which.
    async with open_agent(database=database) as agent:
        await agent.start("Validate INV-1002", user="clerk-ana")  # warm: pools, chain head
        counter = Statements(monkeypatch)
        view = await agent.start("Validate INV-1002", user="clerk-ana")
        run = list(counter.sent)
    assert view["status"] == "completed"
    sent = "\n".join(run)
    assert len(run) <= 50, f"{len(run)} round trips:\n{sent}"
    assert not any("FROM tenant_daily_costs WHERE" in s for s in run)  # spend reused
    # Its step rows wait to be written with other runs' (`state.step_metrics`), here as the
    # database closes.
    assert not any("INSERT INTO step_metrics" in s for s in run)
    assert sum("INSERT INTO step_metrics" in s for s in counter.sent) == 1


async def test_usage_is_checkpointed_inline_and_a_thread_that_stored_it_as_a_blob_resumes(
    database: Database,
) -> None:
    async with open_agent(database=database) as agent:
        paused = await agent.start("Validate INV-1001 and pay it", user="clerk-ana")
        thread_id = paused["thread_id"]
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT checkpoint_id, checkpoint FROM checkpoints WHERE thread_id = %s"
                " AND checkpoint_ns = '' ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_id,),
            )
            latest = await cur.fetchone()
            assert latest is not None
            checkpoint = latest["checkpoint"]
            usage = json.loads(checkpoint["channel_values"].pop("usage"))
            assert usage["steps"] >= 4
            cur = await conn.execute(
                "SELECT count(*) AS n FROM checkpoint_blobs WHERE thread_id = %s"
                " AND channel = 'usage'",
                (thread_id,),
            )
            assert await cur.fetchone() == {"n": 0}
            # Rewrite it as threads checkpointed before held it: the dict, in a blob row.
            saver = agent.graph.checkpointer
            assert isinstance(saver, BaseCheckpointSaver)
            usage["warnings"] = ["written in the older form"]
            kind, blob = saver.serde.dumps_typed(usage)
            await conn.execute(
                "INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version,"
                " type, blob) VALUES (%s, '', 'usage', %s, %s, %s)",
                (thread_id, checkpoint["channel_versions"]["usage"], kind, blob),
            )
            await conn.execute(
                "UPDATE checkpoints SET checkpoint = %s WHERE thread_id = %s"
                " AND checkpoint_ns = '' AND checkpoint_id = %s",
                (Jsonb(checkpoint), thread_id, latest["checkpoint_id"]),
            )
        resumed = await agent.resume(
            thread_id,
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
        )
    assert resumed["status"] == "completed"
    assert resumed["result"]["usage"]["warnings"] == ["written in the older form"]
    assert resumed["result"]["usage"]["steps"] > usage["steps"]


async def test_a_finished_leg_returns_its_view_without_reading_the_thread_back(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_agent(database=database) as agent:
        await agent.start("Validate INV-1002", user="clerk-ana")  # warm
        counter = Statements(monkeypatch)
        finished = await agent.start("Validate INV-1002", user="clerk-ana")
        reads = [s for s in counter.sent if "from checkpoints" in s.lower()]
        paused = await agent.start("Validate INV-1001 and pay it", user="clerk-ana")
        resumed = await agent.resume(
            paused["thread_id"],
            {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}},
        )
        read_back = {
            view["thread_id"]: await agent.view(view["thread_id"])
            for view in (finished, paused, resumed)
        }
    # One read: the graph's own, of the new thread's (absent) checkpoint as the run starts.
    assert len(reads) == 1, reads
    assert (finished["status"], paused["status"], resumed["status"]) == (
        "completed",
        "interrupted",
        "completed",
    )
    assert finished == read_back[finished["thread_id"]]
    assert resumed == read_back[resumed["thread_id"]]
    assert paused["pending_approvals"] and not resumed["pending_approvals"]


async def test_concurrent_appends_in_one_process_take_turns_instead_of_missing(
    db_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(db_uri, max_size=8)

    async def append(n: int) -> None:
        async with database.connection() as conn:
            await append_event(conn, tenant="t", thread_id="x", kind="route", payload={"n": n})

    try:
        await append(0)  # the head is known from here on
        counter = Statements(monkeypatch)
        await asyncio.gather(*(append(n) for n in range(1, 21)))
        async with database.connection() as conn:
            report = await verify_chain(conn)
    finally:
        await database.close()
    assert sum("audit_append" in s for s in counter.sent) == 20  # one call each, no retries
    assert report.ok and next(c.rows for c in report.chains if c.tenant == "t") == 21
