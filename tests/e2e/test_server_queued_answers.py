"""A reviewer's answer queued on the LangGraph server applies only to the request it was
sent for.

The server queues a resume behind the runs already on its thread. Before, an answer
accepted for one approval request was applied, when its turn came, to whatever request
was pending then: a controller's edit ran first, and another reviewer's plain "approve",
sent for the unedited payment, signed the edited one, which was paid. The server now binds
each accepted resume to the request it answers (`server.auth.bind_resume`), and the
approval node refuses an answer bound to another request.

One `langgraph dev` for the module, with a stall on entering the approval step, so a test
can send a second answer while the first waits in its run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from tests.databases import database_copy
from tests.langgraph_server import langgraph_dev, server_env

pytestmark = pytest.mark.e2e

GRAPH_ID = "payables"
CLERK = "clerk-ana"
TOKENS = {
    "ana": {"identity": CLERK, "role": "clerk", "tenant": "default"},
    "ctl-1": {"identity": "ctl-1", "role": "controller", "tenant": "default"},
    "ctl-2": {"identity": "ctl-2", "role": "controller", "tenant": "default"},
}
STALL_S = 4
"""How long each run waits on entering the approval step: the window the test acts in."""


@pytest.fixture(scope="module")
def module_db(server_uri: str, template_db: str) -> Iterator[str]:
    with database_copy(server_uri, template_db, "payables_queued") as uri:
        yield uri


@pytest.fixture(scope="module")
def server(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("queued-answers")
    env = server_env(
        os.environ,
        module_db,
        PAYABLES_DATA_DIR=str(workdir / "unused-embedded"),
        PAYABLES_AUTH_TOKENS=json.dumps(TOKENS),
        PAYABLES_FAILPOINTS=f"sleep:before:approval:{STALL_S}",
    )
    with langgraph_dev(env, workdir) as url:
        yield url


@asynccontextmanager
async def as_user(url: str, token: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(
        url=url, api_key=None, timeout=120, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


async def scalar(db_uri: str, sql: str, *params: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    assert row is not None
    return row[0]


async def test_an_answer_to_a_request_edited_before_it_ran_is_refused_not_applied(
    server: str, module_db: str
) -> None:
    async with as_user(server, "ana") as clerk:
        thread_id = (await clerk.threads.create())["thread_id"]
        paused: Any = await clerk.runs.wait(
            thread_id, GRAPH_ID, input={"request": "Pay INV-1039", "user": CLERK}
        )
    pending = paused["__interrupt__"][0]["value"]
    action = pending["action_requests"][0]
    assert action["name"] == "schedule_payment", pending
    edited_args = {**action["args"], "amount": "100.00"}
    edit = {
        "decisions": [
            {"type": "edit", "edited_action": {"name": action["name"], "args": edited_args}}
        ],
        "reviewer": {"id": "ctl-1", "role": "controller"},
    }
    approve = {"decisions": [{"type": "approve"}], "reviewer": {"id": "ctl-2"}}

    async with as_user(server, "ctl-1") as first, as_user(server, "ctl-2") as second:
        edit_run = await first.runs.create(thread_id, GRAPH_ID, command={"resume": edit})
        # While the edit's run waits on entering the approval step, ctl-2 answers the
        # request as ctl-2 saw it: the unedited payment. The server accepts it (that
        # request is still the pending one) and queues it behind the edit.
        deadline = time.monotonic() + 30
        while (await first.runs.get(thread_id, edit_run["run_id"]))["status"] != "running":
            assert time.monotonic() < deadline, "the edit's run never started"
            await asyncio.sleep(0.1)
        approve_run = await second.runs.create(thread_id, GRAPH_ID, command={"resume": approve})
        edited: Any = await first.runs.join(thread_id, edit_run["run_id"])
        answered: Any = await second.runs.join(thread_id, approve_run["run_id"])

    # The edit is a new request (100.00, ctl-1's signature); ctl-2's answer, sent for the
    # old one, is refused on it, not counted as the second signature.
    now = edited["__interrupt__"][0]["value"]
    assert now["action_requests"][0]["args"]["amount"] == "100.00", now
    refusal = answered["__interrupt__"][0]["value"]
    assert "earlier version of this approval request" in (refusal["error"] or ""), refusal
    assert refusal["action_requests"][0]["args"]["amount"] == "100.00"
    assert (
        await scalar(module_db, "SELECT count(*) FROM payments WHERE invoice_id = %s", "INV-1039")
        == 0
    )
    assert (
        await scalar(
            module_db,
            "SELECT count(*) FROM approval_decisions"
            " WHERE thread_id = %s AND reviewer_id = 'ctl-2'",
            thread_id,
        )
        == 0
    )
