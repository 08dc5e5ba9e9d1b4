"""On a real `langgraph dev`: an answer is judged as the one who gave it, in later runs too.

A controller's second signature is admitted (a controller may give the signature still
missing) and refused by the approval node (the same reviewer counts once). LangGraph hands
that refused answer back to the node at the start of the next reviewer's run; judged as
that reviewer, it turned their reject into an approval and the invoice was paid.
(`tests/integration/test_answers_judged_as_given.py` covers the CLI and a run with no input.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.databases import database_copy
from tests.e2e.test_server_auth import (
    GRAPH_ID,
    TOKENS,
    approve,
    decisions,
    sdk,
    start_until_interrupt,
    token_for,
)
from tests.langgraph_server import langgraph_dev, server_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def module_db(server_uri: str, template_db: str) -> Iterator[str]:
    with database_copy(server_uri, template_db, "payables_replayed") as uri:
        yield uri


@pytest.fixture(scope="module")
def server(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("replayed-answers")
    env = server_env(
        os.environ,
        module_db,
        PAYABLES_DATA_DIR=str(workdir / "unused-embedded"),
        PAYABLES_AUTH_TOKENS=json.dumps(TOKENS),
    )
    with langgraph_dev(env, workdir) as url:
        yield url


def reject() -> dict[str, Any]:
    return {
        "decisions": [{"type": "reject", "message": "do not pay this"}],
        "reviewer": {"id": "ctl-1", "role": "controller"},  # the body's claim: not who answers
    }


async def test_a_reject_after_a_refused_second_signature_is_the_rejecters(
    server: str, module_db: str
) -> None:
    thread_id, first = await start_until_interrupt(server, "ben", "Pay INV-1020")
    [step] = first["value"]["steps"]
    assert step["min_approvers"] == 2 and step["required_role"] == "controller", step
    async with sdk(server, token_for("ctl-1")) as controller:
        await controller.runs.wait(
            thread_id, GRAPH_ID, command={"resume": {first["id"]: approve()}}
        )
        [second] = (await controller.threads.get_state(thread_id))["interrupts"]
        assert second["value"]["steps"][0]["approved_by"] == [{"id": "ctl-1", "role": "controller"}]
        await controller.runs.wait(
            thread_id, GRAPH_ID, command={"resume": {second["id"]: approve()}}
        )
        [third] = (await controller.threads.get_state(thread_id))["interrupts"]
    assert "ctl-1 already approved" in (third["value"]["error"] or ""), third["value"]
    async with sdk(server, token_for("rev-1")) as reviewer:
        await reviewer.runs.wait(thread_id, GRAPH_ID, command={"resume": {third["id"]: reject()}})
        values = (await reviewer.threads.get_state(thread_id))["values"]
    assert values["reason"] == "Rejected by rev-1 (approver): do not pay this", values
    assert await decisions(module_db, thread_id) == [
        ("ctl-1", "controller", "approve"),
        ("rev-1", "approver", "reject"),
    ]
    async with await psycopg.AsyncConnection.connect(module_db) as conn:
        cur = await conn.execute("SELECT count(*) FROM payments WHERE thread_id = %s", (thread_id,))
        assert await cur.fetchone() == (0,)
