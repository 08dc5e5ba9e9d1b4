"""`langgraph dev` serves the payables graph over HTTP with Postgres persistence.

Each test starts the real server as a child process on a free loopback port, against the
test's private database, with a development token table (the server refuses requests
without a token), drives it with `langgraph_sdk`, and checks the database directly:
the payment row, and the `checkpoints` rows that prove the server's checkpointer is the
Postgres one from `langgraph.json` and not its in-memory default.

`langgraph dev` overwrites `DATABASE_URI` with ``:memory:`` inside its process, so the
server is pointed at the test database through `PAYABLES_DATABASE_URI` (see `runtime.settings`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from tests.langgraph_server import langgraph_dev, server_env

pytestmark = pytest.mark.e2e

GRAPH_ID = "payables"
REQUEST = "Validate INV-1001 and pay it if it matches"
REQUESTER = "clerk-ana"
REVIEWER = "rev-1"
# The server refuses every request without a token (server/auth.py): a development table.
TOKENS = {
    "clerk-ana-token": {"identity": REQUESTER, "role": "clerk", "tenant": "default"},
    "rev-1-token": {"identity": REVIEWER, "role": "reviewer", "tenant": "default"},
    # The requester holding a reviewer token as well: still not allowed to decide.
    "clerk-ana-reviewer-token": {"identity": REQUESTER, "role": "reviewer", "tenant": "default"},
}


@pytest.fixture
def langgraph_server(cli_env: dict[str, str], db_uri: str, tmp_path: Path) -> Iterator[str]:
    """Start `langgraph dev` on a free loopback port; yield its base URL."""
    env = server_env(cli_env, db_uri, PAYABLES_AUTH_TOKENS=json.dumps(TOKENS))
    with langgraph_dev(env, tmp_path) as url:
        yield url


@pytest.fixture
async def client(langgraph_server: str) -> AsyncIterator[LangGraphClient]:
    """An SDK client for the server as the clerk (no API key: nothing leaves loopback)."""
    async with get_client(
        url=langgraph_server,
        api_key=None,
        timeout=60,
        headers={"Authorization": "Bearer clerk-ana-token"},
    ) as sdk:
        yield sdk


@pytest.fixture
async def reviewer(langgraph_server: str) -> AsyncIterator[LangGraphClient]:
    """An SDK client for the server as reviewer rev-1."""
    async with get_client(
        url=langgraph_server,
        api_key=None,
        timeout=60,
        headers={"Authorization": "Bearer rev-1-token"},
    ) as sdk:
        yield sdk


async def _start_until_interrupt(client: LangGraphClient) -> tuple[str, dict[str, Any]]:
    """Create a thread, run the payment request to its approval interrupt."""
    thread = await client.threads.create()
    thread_id = thread["thread_id"]
    # No `context`: the graph's `Context` defaults apply (rules models, default thresholds).
    result = await client.runs.wait(
        thread_id, GRAPH_ID, input={"request": REQUEST, "user": REQUESTER}
    )
    assert isinstance(result, dict)
    assert result.get("__interrupt__"), result
    interrupt = _single_interrupt(await client.threads.get_state(thread_id))
    return thread_id, interrupt


def _single_interrupt(state: Any) -> dict[str, Any]:
    assert state["next"] == ["approval"], state["next"]
    interrupts = state["interrupts"]
    assert len(interrupts) == 1, interrupts
    task_interrupts = [i for task in state["tasks"] for i in task.get("interrupts", [])]
    assert [i["id"] for i in task_interrupts] == [interrupts[0]["id"]]
    interrupt: dict[str, Any] = interrupts[0]
    return interrupt


def _assert_payment_request(payload: dict[str, Any]) -> None:
    assert [a["name"] for a in payload["action_requests"]] == ["schedule_payment"]
    assert payload["action_requests"][0]["args"]["invoice_id"] == "INV-1001"
    assert [c["action_name"] for c in payload["review_configs"]] == ["schedule_payment"]
    assert "approve" in payload["review_configs"][0]["allowed_decisions"]
    [evidence] = payload["evidence"]
    assert evidence["tool"] == "schedule_payment"
    assert evidence["invoice"]["invoice_id"] == "INV-1001"
    assert evidence["verdict"] == "match"
    assert payload["requester"] == REQUESTER


async def _db_counts(db_uri: str, thread_id: str) -> tuple[int, int]:
    """(payments for INV-1001, checkpoint rows for the thread) in the test database."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute("SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'")
        payments = await cur.fetchone()
        cur = await conn.execute(
            "SELECT count(*) FROM checkpoints WHERE thread_id = %s", (thread_id,)
        )
        checkpoints = await cur.fetchone()
    assert payments is not None and checkpoints is not None
    return payments[0], checkpoints[0]


async def test_run_interrupts_then_approval_pays_once(
    client: LangGraphClient, reviewer: LangGraphClient, db_uri: str
) -> None:
    thread_id, interrupt = await _start_until_interrupt(client)
    _assert_payment_request(interrupt["value"])
    assert interrupt["value"]["error"] is None
    assert (await client.threads.get(thread_id))["status"] == "interrupted"
    payments, checkpoints = await _db_counts(db_uri, thread_id)
    assert payments == 0
    assert checkpoints > 0, "the interrupted run was not checkpointed in Postgres"

    resume = {"decisions": [{"type": "approve"}], "reviewer": {"id": REVIEWER, "role": "approver"}}
    await reviewer.runs.wait(thread_id, GRAPH_ID, command={"resume": {interrupt["id"]: resume}})

    state = await client.threads.get_state(thread_id)
    assert state["next"] == []
    assert state["interrupts"] == []
    values = state["values"]
    assert isinstance(values, dict)
    assert values["status"] == "completed", values
    # Checkpointed as text (`state.graph_state.JsonTextAggregate`); the API serves the dict.
    usage = values["usage"]
    assert isinstance(usage, dict) and usage["steps"] >= values["result"]["usage"]["steps"] > 0
    invoice = values["result"]["invoices"]["INV-1001"]
    assert "payment_scheduled" in invoice["actions"], invoice
    assert (await client.threads.get(thread_id))["status"] == "idle"

    payments, checkpoints_after = await _db_counts(db_uri, thread_id)
    assert payments == 1
    assert checkpoints_after > checkpoints
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT payment_id, thread_id, amount::text FROM payments WHERE invoice_id = 'INV-1001'"
        )
        [(payment_id, paid_thread, amount)] = await cur.fetchall()
    assert payment_id == invoice["payment"]["payment_id"]
    assert paid_thread == thread_id
    assert amount == interrupt["value"]["action_requests"][0]["args"]["amount"]


async def test_requester_cannot_approve_own_payment(
    client: LangGraphClient, langgraph_server: str, db_uri: str
) -> None:
    thread_id, interrupt = await _start_until_interrupt(client)
    _assert_payment_request(interrupt["value"])
    _, checkpoints_before = await _db_counts(db_uri, thread_id)

    own = {"decisions": [{"type": "approve"}], "reviewer": {"id": REQUESTER, "role": "approver"}}
    async with get_client(
        url=langgraph_server,
        api_key=None,
        timeout=60,
        headers={"Authorization": "Bearer clerk-ana-reviewer-token"},
    ) as requester_as_reviewer:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await requester_as_reviewer.runs.wait(thread_id, GRAPH_ID, command={"resume": own})
    assert refused.value.response.status_code == 403
    assert "cannot decide" in refused.value.response.text

    again = _single_interrupt(await client.threads.get_state(thread_id))
    assert again["value"]["error"] is None
    assert (await client.threads.get(thread_id))["status"] == "interrupted"

    payments, checkpoints = await _db_counts(db_uri, thread_id)
    assert payments == 0
    assert checkpoints == checkpoints_before
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM approval_decisions WHERE thread_id = %s", (thread_id,)
        )
        row = await cur.fetchone()
    assert row is not None and row[0] == 0
