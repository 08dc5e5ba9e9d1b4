"""Two reviewers answering one approval on the LangGraph server: the second is told at once.

The server queues a resume behind the runs already on its thread. Before, a second
reviewer's answer to the request another's answer was about to settle was accepted and
queued: when its turn came it found the run finished and changed nothing (its reviewer, who
may have rejected a payment that was then made, was never told), or a changed request. An
edit once let another reviewer's plain "approve", sent for the unedited payment, sign the
edited one. Now the server claims the request for the first answer it accepts
(`state.answer_claims`) and refuses the others with a 409 naming who answered, until the
approval node has made that answer (recorded or refused) or the claim expires. Each
accepted answer is still bound to its request (`server.auth.bind_resume`), and the node
refuses one bound to another.

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

import httpx
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
    "rev-1": {"identity": "rev-1", "role": "reviewer", "tenant": "default"},
    "ops": {"identity": "ops-1", "role": "admin", "tenant": "default"},
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


async def paused_thread(url: str, request: str) -> tuple[str, dict[str, Any]]:
    """As the clerk: a new thread run to its approval; the thread and the pending request."""
    async with as_user(url, "ana") as clerk:
        thread_id = (await clerk.threads.create())["thread_id"]
        paused: Any = await clerk.runs.wait(
            thread_id, GRAPH_ID, input={"request": request, "user": CLERK}
        )
    assert paused.get("__interrupt__"), paused  # each test pays an invoice of its own
    return thread_id, paused["__interrupt__"][0]["value"]


async def started(client: LangGraphClient, thread_id: str, run_id: str) -> None:
    """Wait until the run is running: stalled on entering the approval step."""
    deadline = time.monotonic() + 30
    while (await client.runs.get(thread_id, run_id))["status"] != "running":
        assert time.monotonic() < deadline, f"run {run_id} never started"
        await asyncio.sleep(0.1)


async def conflict(call: Any) -> str:
    """Await ``call``; assert the server answered 409; return its detail."""
    with pytest.raises(httpx.HTTPStatusError) as error:
        await call
    assert error.value.response.status_code == 409, error.value.response.text
    return str(error.value.response.json()["detail"])


def answer(kind: str, reason: str = "") -> dict[str, Any]:
    decision: dict[str, Any] = {"type": kind}
    if reason:
        decision["message"] = reason
    return {"decisions": [decision]}


async def decided_by(db_uri: str, thread_id: str) -> list[tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT reviewer_id, decision FROM approval_decisions WHERE thread_id = %s"
            " ORDER BY decision_id",
            (thread_id,),
        )
        return [(row[0], row[1]) for row in await cur.fetchall()]


async def test_a_reject_sent_while_another_approve_is_applied_is_refused_not_lost(
    server: str, module_db: str
) -> None:
    thread_id, _ = await paused_thread(server, "Validate INV-1001 and pay it if it matches")
    async with as_user(server, "rev-1") as first, as_user(server, "ctl-2") as second:
        approved = await first.runs.create(
            thread_id, GRAPH_ID, command={"resume": answer("approve")}
        )
        await started(first, thread_id, approved["run_id"])
        # One signature settles this payment. Before, the reject was queued behind the
        # approve, found the run finished when its turn came, and changed nothing, while
        # ctl-2 believed the payment rejected; it was paid.
        detail = await conflict(
            second.runs.create(
                thread_id, GRAPH_ID, command={"resume": answer("reject", "wrong vendor")}
            )
        )
        assert detail.startswith(f"rev-1's answer to this approval on thread {thread_id}"), detail
        assert "yours was not sent" in detail
        done: Any = await first.runs.join(thread_id, approved["run_id"])
        assert done["status"] == "completed", done
        # The run is over: the answer is refused as on any thread with nothing waiting.
        with pytest.raises(httpx.HTTPStatusError) as late:
            await second.runs.create(
                thread_id, GRAPH_ID, command={"resume": answer("reject", "wrong vendor")}
            )
        assert late.value.response.status_code == 403
        assert "no approval waiting" in late.value.response.text
    assert await decided_by(module_db, thread_id) == [("rev-1", "approve")]
    assert await scalar(module_db, "SELECT count(*) FROM answer_claims") == 0


async def test_two_answers_sent_at_once_one_is_accepted_the_other_refused(
    server: str, module_db: str
) -> None:
    thread_id, _ = await paused_thread(server, "Validate INV-1004 and pay it if it matches")
    async with as_user(server, "rev-1") as one, as_user(server, "ctl-2") as other:
        outcomes = await asyncio.gather(
            one.runs.create(thread_id, GRAPH_ID, command={"resume": answer("approve")}),
            other.runs.create(
                thread_id, GRAPH_ID, command={"resume": answer("reject", "duplicate")}
            ),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if isinstance(o, dict)]
        refusals = [o for o in outcomes if isinstance(o, httpx.HTTPStatusError)]
        assert len(accepted) == 1 and len(refusals) == 1, outcomes
        assert refusals[0].response.status_code == 409, refusals[0].response.text
        winner = "rev-1" if outcomes[0] is accepted[0] else "ctl-2"
        assert refusals[0].response.json()["detail"].startswith(f"{winner}'s answer")
        await one.runs.join(thread_id, accepted[0]["run_id"])
    [(reviewer, _)] = await decided_by(module_db, thread_id)
    assert reviewer == winner


async def test_an_answer_sent_during_an_edit_is_refused_and_the_edited_request_is_answered(
    server: str, module_db: str
) -> None:
    thread_id, pending = await paused_thread(server, "Pay INV-1039")
    action = pending["action_requests"][0]
    assert action["name"] == "schedule_payment", pending
    edited_args = {**action["args"], "amount": "100.00"}
    edit = {
        "decisions": [
            {"type": "edit", "edited_action": {"name": action["name"], "args": edited_args}}
        ]
    }
    async with as_user(server, "ctl-1") as first, as_user(server, "ctl-2") as second:
        edit_run = await first.runs.create(thread_id, GRAPH_ID, command={"resume": edit})
        await started(first, thread_id, edit_run["run_id"])
        # ctl-2 approves the request as ctl-2 saw it: the unedited payment. Before claims
        # the server queued it behind the edit, and once it signed the edited payment.
        detail = await conflict(
            second.runs.create(thread_id, GRAPH_ID, command={"resume": answer("approve")})
        )
        assert detail.startswith("ctl-1's answer"), detail
        edited: Any = await first.runs.join(thread_id, edit_run["run_id"])
        now = edited["__interrupt__"][0]["value"]
        assert now["action_requests"][0]["args"]["amount"] == "100.00", now
        assert (
            await scalar(
                module_db, "SELECT count(*) FROM payments WHERE invoice_id = %s", "INV-1039"
            )
            == 0
        )
        assert await decided_by(module_db, thread_id) == [("ctl-1", "edit")]
        # Shown the edited request, ctl-2 answers it: the claim went with ctl-1's answer.
        signed: Any = await second.runs.wait(
            thread_id, GRAPH_ID, command={"resume": answer("approve")}
        )
    assert signed["status"] == "completed", signed
    assert await decided_by(module_db, thread_id) == [("ctl-1", "edit"), ("ctl-2", "approve")]
    assert (
        await scalar(
            module_db, "SELECT amount::text FROM payments WHERE invoice_id = %s", "INV-1039"
        )
        == "100.00"
    )


async def test_a_refused_answer_frees_the_request_for_other_reviewers(
    server: str, module_db: str
) -> None:
    thread_id, _ = await paused_thread(server, "Validate INV-1009 and pay it if it matches")
    two_for_one = {"decisions": [{"type": "approve"}, {"type": "approve"}]}
    async with as_user(server, "rev-1") as first, as_user(server, "ctl-2") as second:
        refused: Any = await first.runs.wait(thread_id, GRAPH_ID, command={"resume": two_for_one})
        assert refused["__interrupt__"][0]["value"]["error"], refused
        # Refused by the approval node, so not being applied: nothing holds the request.
        answered: Any = await second.runs.wait(
            thread_id, GRAPH_ID, command={"resume": answer("approve")}
        )
    assert answered["status"] == "completed", answered
    assert await decided_by(module_db, thread_id) == [("ctl-2", "approve")]
    # The refusal is on record once, though the approval step ran again for ctl-2's answer.
    refused_answers = await scalar(
        module_db,
        "SELECT array_agg(payload->>'reviewer_id') FROM audit_events"
        " WHERE thread_id = %s AND kind = 'answer_refused'",
        thread_id,
    )
    assert refused_answers == ["rev-1"]


async def test_an_answer_whose_run_is_cancelled_frees_the_request_as_the_run_ends(
    server: str, module_db: str
) -> None:
    """Before, the cancelled answer held the request from other reviewers for 2 minutes."""
    thread_id, _ = await paused_thread(server, "Validate INV-1014 and pay it if it matches")
    async with as_user(server, "rev-1") as first, as_user(server, "ctl-2") as second:
        lost = await first.runs.create(thread_id, GRAPH_ID, command={"resume": answer("approve")})
        await started(first, thread_id, lost["run_id"])
        async with as_user(server, "ops") as operator:  # a stuck run, cancelled by ops
            await operator.runs.cancel(thread_id, lost["run_id"], wait=True)
        assert (await first.threads.get(thread_id))["status"] == "interrupted"
        answered: Any = await second.runs.wait(
            thread_id, GRAPH_ID, command={"resume": answer("approve")}
        )
    assert answered["status"] == "completed", answered
    assert await decided_by(module_db, thread_id) == [("ctl-2", "approve")]


async def test_an_answer_to_an_interrupt_no_longer_pending_frees_the_request(
    server: str, module_db: str
) -> None:
    """An answer keyed by an interrupt id that is not pending (a card read before the request
    changed, or a made-up id) is dropped by LangGraph: the run pauses at the same approval
    and its reviewer's claim, which the approval node never saw, held the request from
    every other reviewer for 2 minutes; sent again and again, for good."""
    thread_id, _ = await paused_thread(server, "Validate INV-1015 and pay it if it matches")
    stale = {"0" * 32: answer("approve")}
    async with as_user(server, "rev-1") as first, as_user(server, "ctl-2") as second:
        dropped: Any = await first.runs.wait(thread_id, GRAPH_ID, command={"resume": stale})
        assert dropped["__interrupt__"], dropped
        answered: Any = await second.runs.wait(
            thread_id, GRAPH_ID, command={"resume": answer("approve")}
        )
    assert answered["status"] == "completed", answered
    assert await decided_by(module_db, thread_id) == [("ctl-2", "approve")]


async def test_a_claim_left_by_a_process_that_died_holds_the_request_until_expiry(
    server: str, module_db: str
) -> None:
    thread_id, _ = await paused_thread(server, "Validate INV-1003 and pay it if it matches")
    async with await psycopg.AsyncConnection.connect(module_db, autocommit=True) as conn:
        # What rev-1's accepted answer leaves when its server process dies before the run ends.
        await conn.execute(
            "INSERT INTO answer_claims (tenant, request_key, thread_id, reviewer)"
            " SELECT tenant, event_key, thread_id, 'rev-1' FROM audit_events"
            " WHERE thread_id = %s AND kind = 'approval_requested'",
            (thread_id,),
        )
    async with as_user(server, "ctl-2") as second:
        detail = await conflict(
            second.runs.create(thread_id, GRAPH_ID, command={"resume": answer("approve")})
        )
        assert detail.startswith("rev-1's answer"), detail
        assert "If no run is in progress on the thread, answer again after" in detail, detail
        # Two minutes on (the claim's expiry, `ANSWER_CLAIM_TTL`), the request is free.
        async with await psycopg.AsyncConnection.connect(module_db, autocommit=True) as conn:
            await conn.execute(
                "UPDATE answer_claims SET claimed_at = claimed_at - interval '2 minutes'"
                " WHERE thread_id = %s",
                (thread_id,),
            )
        answered: Any = await second.runs.wait(
            thread_id, GRAPH_ID, command={"resume": answer("approve")}
        )
    assert answered["status"] == "completed", answered
    assert await decided_by(module_db, thread_id) == [("ctl-2", "approve")]
