"""Runs of the LangGraph server hold their thread's lock, as `payables` runs do.

`payables seed`, `prune`, `continue`, `resume` and `deadletters replay` rely on the
per-thread advisory lock every run holds while it executes (`runtime.agent.Agent.
thread_lock`). Server runs took none: a seed replaced the world under a server run in
flight (erasing what it wrote while it went on writing into the new world), and `payables
continue` drove a thread a server run was executing, so both ran the same steps. The
served graph (`graphs.payables.served_graph`) now holds the lock around each run.

One `langgraph dev` for the module, with a stall after the router (the run index says
``running`` from the router on, so a test knows the run is in flight for those seconds).
The `payables` commands run in child processes, as an operator would run them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from runtime.agent import open_agent
from state.db import THREAD_LOCK_CLASS, Database
from tests.cli import explain, payables
from tests.databases import database_copy
from tests.langgraph_server import langgraph_dev, server_env

pytestmark = pytest.mark.e2e

GRAPH_ID = "payables"
CLERK = "clerk-ana"
TOKENS = {
    "ana": {"identity": CLERK, "role": "clerk", "tenant": "default"},
    "rev-1": {"identity": "rev-1", "role": "reviewer", "tenant": "default"},
    "admin": {"identity": "ops-1", "role": "admin", "tenant": "default"},
}
STALL_S = 8
"""How long each server run stalls after its router: the window the tests act in."""
REQUEST = "Validate INV-1001 and pay it if it matches"


@pytest.fixture(scope="module")
def module_db(server_uri: str, template_db: str) -> Iterator[str]:
    """A private copy of the seeded template database shared by this module's tests."""
    with database_copy(server_uri, template_db, "payables_lock") as uri:
        yield uri


@pytest.fixture(scope="module")
def server(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`langgraph dev` whose runs stall for `STALL_S` seconds after the router."""
    workdir = tmp_path_factory.mktemp("lock-server")
    env = server_env(
        os.environ,
        module_db,
        PAYABLES_DATA_DIR=str(workdir / "unused-embedded"),
        PAYABLES_AUTH_TOKENS=json.dumps(TOKENS),
        PAYABLES_FAILPOINTS=f"sleep:after:router:{STALL_S}",
    )
    with langgraph_dev(env, workdir) as url:
        yield url


@pytest.fixture
def cli_env(module_db: str, tmp_path: Path) -> dict[str, str]:
    """`payables` in a child process against the module's database, no failpoints."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PAYABLES_FAILPOINTS", "PAYABLES_DATABASE_URI")
    }
    env["DATABASE_URI"] = module_db
    env["PAYABLES_DATA_DIR"] = str(tmp_path / "unused-embedded")
    return env


@asynccontextmanager
async def clerk(url: str, token: str = "ana") -> AsyncIterator[LangGraphClient]:
    """An SDK client for the clerk (or the holder of ``token``)."""
    async with get_client(
        url=url, api_key=None, timeout=120, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


async def run_status(db_uri: str, thread_id: str) -> str | None:
    """The thread's status in the run index (None: no row yet)."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute("SELECT status FROM runs WHERE thread_id = %s", (thread_id,))
        row = await cur.fetchone()
    return None if row is None else str(row[0])


async def in_flight(client: LangGraphClient, db_uri: str) -> tuple[str, str]:
    """Start the payment request on a new thread; return once it stalls after the router."""
    thread_id = (await client.threads.create())["thread_id"]
    run = await client.runs.create(thread_id, GRAPH_ID, input={"request": REQUEST, "user": CLERK})
    deadline = time.monotonic() + 30
    while await run_status(db_uri, thread_id) != "running":
        assert time.monotonic() < deadline, "the server run never reached its router"
        await asyncio.sleep(0.1)
    return thread_id, run["run_id"]


async def approvals_asked(db_uri: str, thread_id: str) -> int:
    """How many approval requests the audit chain holds for ``thread_id``."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM audit_events WHERE thread_id = %s"
            " AND kind = 'approval_requested'",
            (thread_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def finished_interrupted(client: LangGraphClient, thread_id: str, run_id: str) -> None:
    """Wait for the run; it must end paused for approval, as it would undisturbed."""
    result: Any = await client.runs.join(thread_id, run_id)
    assert isinstance(result, dict) and result.get("__interrupt__"), result
    assert (await client.threads.get(thread_id))["status"] == "interrupted"


async def test_seed_refuses_while_a_server_run_is_in_flight(
    server: str, module_db: str, cli_env: dict[str, str]
) -> None:
    """Before, the seed went through: the run's rows vanished while the run went on."""
    async with clerk(server) as client:
        thread_id, run_id = await in_flight(client, module_db)
        proc = await asyncio.to_thread(payables, cli_env, "seed")
        assert proc.returncode == 2, explain(proc)
        assert "1 run is in progress" in proc.stderr, explain(proc)
        assert "nothing was changed" in proc.stderr, explain(proc)
        await finished_interrupted(client, thread_id, run_id)
    assert await run_status(module_db, thread_id) == "interrupted"
    assert await approvals_asked(module_db, thread_id) == 1


async def test_continue_refuses_a_thread_a_server_run_is_executing(
    server: str, module_db: str, cli_env: dict[str, str]
) -> None:
    """Before, `continue` ran the thread's pending steps beside the server run."""
    async with clerk(server) as client:
        thread_id, run_id = await in_flight(client, module_db)
        proc = await asyncio.to_thread(payables, cli_env, "continue", thread_id)
        assert proc.returncode == 2, explain(proc)
        assert "being run by another process" in proc.stderr, explain(proc)
        await finished_interrupted(client, thread_id, run_id)
    assert await approvals_asked(module_db, thread_id) == 1


async def test_a_server_run_waits_for_a_thread_a_payables_run_holds(
    server: str, module_db: str
) -> None:
    """The server run starts only once the `payables` command lets go of the thread."""
    async with clerk(server) as client, open_agent(database=Database(module_db)) as agent:
        thread_id = (await client.threads.create())["thread_id"]
        async with agent.thread_lock(thread_id, "busy"):
            run = await client.runs.create(
                thread_id, GRAPH_ID, input={"request": REQUEST, "user": CLERK}
            )
            await asyncio.sleep(2)
            # Before, the router had run by now and recorded the run.
            assert await run_status(module_db, thread_id) is None
        await finished_interrupted(client, thread_id, run["run_id"])
    assert await approvals_asked(module_db, thread_id) == 1


async def test_a_server_run_that_waits_too_long_for_the_thread_says_why(
    server: str, module_db: str
) -> None:
    """Before, the caller read only "An internal error occurred" (the server's mask)."""
    async with clerk(server) as client, open_agent(database=Database(module_db)) as agent:
        thread_id = (await client.threads.create())["thread_id"]
        async with agent.thread_lock(thread_id, "busy"):
            failed: Any = await client.runs.wait(
                thread_id,
                GRAPH_ID,
                input={"request": REQUEST, "user": CLERK},
                raise_error=False,
            )
    error = failed["__error__"]
    assert error["error"] == "ThreadBusy", error
    assert f"Thread {thread_id} is being run by another process" in error["message"], error
    assert await run_status(module_db, thread_id) is None


async def checkpoints(db_uri: str, thread_id: str) -> int:
    """How many checkpoints ``thread_id`` has."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_an_admins_state_write_is_refused_while_a_payables_run_holds_the_thread(
    server: str, module_db: str
) -> None:
    """Before, the write went in beside the `payables` run: two writers of one checkpoint."""
    async with clerk(server) as client:
        thread_id, run_id = await in_flight(client, module_db)
        await finished_interrupted(client, thread_id, run_id)
    before = await checkpoints(module_db, thread_id)
    async with clerk(server, "admin") as admin, open_agent(database=Database(module_db)) as agent:
        async with agent.thread_lock(thread_id, "busy"):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await admin.threads.update_state(thread_id, {"reason": "edited"})
            assert refused.value.response.status_code == 409, refused.value.response.text
            assert "being run by another process" in refused.value.response.text
            assert await checkpoints(module_db, thread_id) == before
        await admin.threads.update_state(thread_id, {"reason": "edited"})
    assert await checkpoints(module_db, thread_id) == before + 1


async def test_a_seed_forgets_a_paused_server_thread_and_its_approval_cannot_be_answered(
    server: str, module_db: str, cli_env: dict[str, str]
) -> None:
    """A paused run holds no lock: the seed goes through and forgets it, as for the CLI."""
    async with clerk(server) as client:
        thread_id, run_id = await in_flight(client, module_db)
        await finished_interrupted(client, thread_id, run_id)
        [interrupt] = (await client.threads.get_state(thread_id))["interrupts"]
    proc = await asyncio.to_thread(payables, cli_env, "seed")
    assert proc.returncode == 0, explain(proc)
    answer = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}}
    async with clerk(server, "rev-1") as reviewer:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await reviewer.runs.wait(
                thread_id, GRAPH_ID, command={"resume": {interrupt["id"]: answer}}
            )
    assert refused.value.response.status_code == 403
    assert "no approval waiting" in refused.value.response.text
    assert await run_status(module_db, thread_id) is None
    assert await approvals_asked(module_db, thread_id) == 1  # the audit chain outlives worlds


async def test_a_server_run_whose_thread_lock_is_lost_stops_saying_why(
    server: str, module_db: str
) -> None:
    """The run's lock connection dies (as when Postgres restarts) while it stalls after the
    router: its next step stops the run. The caller read "An internal error occurred" (the
    server's mask) until `ThreadLockLost` became a `RuntimeError` too."""
    async with clerk(server) as client:
        thread_id, run_id = await in_flight(client, module_db)
        async with await psycopg.AsyncConnection.connect(module_db, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = %s AND objid = ((hashtext(%s)::bigint + 4294967296)"
                " %% 4294967296)::oid AND objsubid = 2 AND granted",
                (THREAD_LOCK_CLASS, thread_id),
            )
            assert [row[0] for row in await cur.fetchall()] == [True]
        failed: Any = await client.runs.join(thread_id, run_id)
    error = failed["__error__"]
    assert error["error"] == "ThreadLockLost", error
    assert f"Thread {thread_id}'s lock was lost" in error["message"], error
    assert await approvals_asked(module_db, thread_id) == 0


async def test_a_second_request_queued_behind_the_first_leaves_its_approval_answerable(
    server: str, module_db: str
) -> None:
    """A double submit: two requests sent to a new thread at once. Both pass admission,
    which finds no run index row yet, and the second (the server queues it by default)
    runs once the first has paused for approval. Its input was saved as the thread's
    latest checkpoint before the router refused it: the approval was gone, and each
    reviewer's answer ran the router again, which refused again. Its caller read "An
    internal error occurred" (the server's mask of `BadInput`)."""
    async with clerk(server) as client, open_agent(database=Database(module_db)) as agent:
        thread_id = (await client.threads.create())["thread_id"]
        async with agent.thread_lock(thread_id, "busy"):  # both queue: neither has run yet
            first = await client.runs.create(
                thread_id, GRAPH_ID, input={"request": REQUEST, "user": CLERK}
            )
            second = await client.runs.create(
                thread_id, GRAPH_ID, input={"request": "Validate INV-1002", "user": CLERK}
            )
        paused: Any = await client.runs.join(thread_id, first["run_id"])
        assert paused.get("__interrupt__"), paused
        refused: Any = await client.runs.join(thread_id, second["run_id"])
        error = refused["__error__"]
        assert error["error"] == "BadInput", error
        assert f"Thread {thread_id} already holds a request" in error["message"], error
        assert "Start the new request on a new thread" in error["message"], error
        state = await client.threads.get_state(thread_id)
        assert state["values"]["request"] == REQUEST, state["values"]
        [waiting] = state["interrupts"]
    async with clerk(server, "rev-1") as reviewer:
        answered: Any = await reviewer.runs.wait(
            thread_id,
            GRAPH_ID,
            command={"resume": {waiting["id"]: {"decisions": [{"type": "approve"}]}}},
        )
    assert answered["status"] == "completed", answered
    assert await approvals_asked(module_db, thread_id) == 1
    assert await run_status(module_db, thread_id) == "completed"
