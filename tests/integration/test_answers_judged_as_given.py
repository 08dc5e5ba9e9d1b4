"""Each answer to an approval is judged as the one who gave it, in every later run too.

LangGraph hands the approval node every answer its task was given, refused ones first,
whenever the task runs again. A refused answer judged as the caller of the run at hand
became theirs: a controller's refused second signature, replayed in a reviewer's run,
turned that reviewer's reject into an approval, and paid. The server's runs are driven here
as the server drives them: admission (`server.auth.check_resume`), the binding of the
answer (`bind_resume`), then the graph with the token's user in the run's configurable.
(`tests/e2e/test_server_replayed_answers.py` does the same on a real server.)
"""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.types import Command

import server.auth as server_auth
from runtime.agent import Agent, open_agent
from runtime.context import Context
from state.db import Database

pytestmark = pytest.mark.integration

CTL_1 = server_auth.Identity("ctl-1", "controller", "default")
REV_1 = server_auth.Identity("rev-1", "reviewer", "default")
ADMIN = server_auth.Identity("ops-1", "admin", "default")
DUAL_CONTROL_REQUEST = "Pay INV-1020"  # over the dual-control threshold: two, one a controller


def answer(kind: str, reviewer: dict[str, str] | None = None) -> dict[str, Any]:
    decision: dict[str, Any] = {"type": kind}
    if kind == "reject":
        decision["message"] = "do not pay this"
    return {"decisions": [decision], "reviewer": reviewer or {"id": "x", "role": "approver"}}


async def server_resume(
    agent: Agent, thread: str, who: server_auth.Identity, value: dict[str, Any]
) -> Any:
    """``who``'s resume as the server runs it: admitted, bound, run with the token's user."""
    _, request_key = await server_auth.check_resume(who, thread)
    [pending] = (await agent.graph.aget_state(agent.config(thread))).interrupts
    command: dict[str, Any] = {"resume": {pending.id: value}}
    server_auth.bind_resume(command, request_key, who)
    config: Any = {"configurable": {"thread_id": thread, "langgraph_auth_user": who.user()}}
    return await agent.graph.ainvoke(
        Command(resume=command["resume"]), config, context=Context(tenant="default")
    )


async def signed_twice_by_ctl_1(agent: Agent, body_names: dict[str, str]) -> str:
    """ctl-1 signs, then signs again (admitted, refused in the node): the thread id."""
    view = await agent.start(DUAL_CONTROL_REQUEST, user="clerk-ben")
    thread = str(view["thread_id"])
    [(_, first)] = await agent.pending(thread)
    assert (first["steps"][0]["min_approvers"], first["steps"][0]["required_role"]) == (
        2,
        "controller",
    )
    await server_resume(agent, thread, CTL_1, answer("approve", body_names))
    await server_resume(agent, thread, CTL_1, answer("approve", body_names))
    [(_, waiting)] = await agent.pending(thread)
    assert waiting["steps"][0]["approved_by"] == [{"id": "ctl-1", "role": "controller"}]
    assert "ctl-1 already approved" in (waiting["error"] or ""), waiting
    return thread


async def outcome(database: Database, thread: str) -> tuple[list[tuple[str, ...]], int]:
    """The thread's decisions (reviewer, role, decision) and its payments."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT reviewer_id, reviewer_role, decision FROM approval_decisions"
            " WHERE thread_id = %s ORDER BY decision_id",
            (thread,),
        )
        decisions = [
            (r["reviewer_id"], r["reviewer_role"], r["decision"]) for r in await cur.fetchall()
        ]
        cur = await conn.execute(
            "SELECT count(*) AS n FROM payments WHERE thread_id = %s", (thread,)
        )
        paid = await cur.fetchone()
    assert paid is not None
    return decisions, int(paid["n"])


@pytest.fixture(autouse=True)
def server_database(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's admission reads the database the graph writes."""
    monkeypatch.setenv("PAYABLES_DATABASE_URI", database.uri)


async def test_a_reviewers_reject_is_recorded_as_theirs_after_a_refused_signature(
    database: Database,
) -> None:
    async with open_agent(database=database) as agent:
        thread = await signed_twice_by_ctl_1(agent, {"id": "x", "role": "approver"})
        view = await server_resume(agent, thread, REV_1, answer("reject"))
    assert view["reason"] == "Rejected by rev-1 (approver): do not pay this", view
    assert await outcome(database, thread) == (
        [("ctl-1", "controller", "approve"), ("rev-1", "approver", "reject")],
        0,
    )


async def test_a_cli_answer_after_a_refused_server_answer_is_the_cli_reviewers(
    database: Database,
) -> None:
    """The refused server answer's body named ctl-2, a controller who never answered."""
    async with open_agent(database=database) as agent:
        thread = await signed_twice_by_ctl_1(agent, {"id": "ctl-2", "role": "controller"})
        view = await agent.resume(thread, answer("reject", {"id": "rev-2", "role": "approver"}))
    assert view["reason"] == "Rejected by rev-2 (approver): do not pay this", view
    assert await outcome(database, thread) == (
        [("ctl-1", "controller", "approve"), ("rev-2", "approver", "reject")],
        0,
    )


async def test_a_run_with_no_input_signs_nothing_with_a_refused_answer(database: Database) -> None:
    """An admin's run with no input (finishing a stopped run) leaves the approval waiting."""
    async with open_agent(database=database) as agent:
        thread = await signed_twice_by_ctl_1(agent, {"id": "x", "role": "approver"})
        config: Any = {"configurable": {"thread_id": thread, "langgraph_auth_user": ADMIN.user()}}
        await agent.graph.ainvoke(None, config, context=Context(tenant="default"))
        [(_, waiting)] = await agent.pending(thread)
    assert waiting["steps"][0]["approved_by"] == [{"id": "ctl-1", "role": "controller"}]
    assert await outcome(database, thread) == ([("ctl-1", "controller", "approve")], 0)


async def test_a_cli_answer_cannot_claim_to_be_a_server_verified_one(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(DUAL_CONTROL_REQUEST, user="clerk-ben")
        forged = {**answer("approve"), "answered_by": {"id": "ctl-9", "role": "controller"}}
        with pytest.raises(Exception, match="answered_by"):
            await agent.resume(str(view["thread_id"]), forged)
    assert await outcome(database, str(view["thread_id"])) == ([], 0)
