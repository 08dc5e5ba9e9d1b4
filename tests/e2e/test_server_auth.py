"""Authentication and per-role rules on a real `langgraph dev` server (server/auth.py).

One server per module (each start takes several seconds), on a free loopback port, with the
Postgres checkpointer on the module's private database copy, a development token table and
HS256 JWT settings at once. Requests go through `langgraph_sdk` and plain HTTP (httpx).
Every refused request is followed by a look at the database: no thread, run, checkpoint,
approval decision or payment may come from a 401 or a 403.

Invisible resources: a thread another clerk (or another tenant) owns answers 404, which is
what LangGraph's metadata filters do; forbidden actions on visible threads answer 403.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from runtime.agent import open_agent
from runtime.context import Context
from state.db import Database
from tests.cli import explain, payables
from tests.databases import database_copy
from tests.langgraph_server import langgraph_dev, server_env

pytestmark = pytest.mark.e2e

GRAPH_ID = "payables"
TENANT = "default"
TOKENS: dict[str, dict[str, str]] = {
    "ana": {"identity": "clerk-ana", "role": "clerk", "tenant": TENANT},
    "ben": {"identity": "clerk-ben", "role": "clerk", "tenant": TENANT},
    "acme-clerk": {"identity": "clerk-acme", "role": "clerk", "tenant": "acme"},
    # The same identity string in another tenant is another clerk.
    "ana-at-acme": {"identity": "clerk-ana", "role": "clerk", "tenant": "acme"},
    "rev-1": {"identity": "rev-1", "role": "reviewer", "tenant": TENANT},
    "rev-2": {"identity": "rev-2", "role": "reviewer", "tenant": TENANT},
    "rev-acme": {"identity": "rev-acme", "role": "reviewer", "tenant": "acme"},
    "ctl-1": {"identity": "ctl-1", "role": "controller", "tenant": TENANT},
    "ana-reviews": {"identity": "clerk-ana", "role": "reviewer", "tenant": TENANT},
    "admin": {"identity": "ops-1", "role": "admin", "tenant": TENANT},
    "admin-acme": {"identity": "ops-acme", "role": "admin", "tenant": "acme"},
}
JWT_SECRET = "test-secret-" + "x" * 32
JWT_ISSUER = "payables-tests"
JWT_AUDIENCE = "payables-api"


def token_for(name: str) -> str:
    """The bearer token of the table entry ``name`` (table keys are the tokens)."""
    assert name in TOKENS
    return name


def signed(**claims: Any) -> str:
    """An HS256 JWT with default claims for a clerk, overridden by ``claims``."""
    body = {
        "sub": "clerk-jay",
        "role": "clerk",
        "tenant": TENANT,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "exp": int(time.time()) + 600,
        **claims,
    }
    secret = body.pop("secret", JWT_SECRET)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, "HS256")


@pytest.fixture(scope="module")
def module_db(server_uri: str, template_db: str) -> Iterator[str]:
    """A private copy of the seeded template database shared by this module's tests."""
    with database_copy(server_uri, template_db, "payables_auth") as uri:
        yield uri


@pytest.fixture(scope="module")
def server(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`langgraph dev` with the token table and JWT settings; yields its base URL."""
    workdir = tmp_path_factory.mktemp("auth-server")
    env = server_env(
        os.environ,
        module_db,
        PAYABLES_DATA_DIR=str(workdir / "unused-embedded"),
        PAYABLES_AUTH_TOKENS=json.dumps(TOKENS),
        PAYABLES_JWT_SECRET=JWT_SECRET,
        PAYABLES_JWT_ISSUER=JWT_ISSUER,
        PAYABLES_JWT_AUDIENCE=JWT_AUDIENCE,
    )
    with langgraph_dev(env, workdir) as url:
        yield url


@asynccontextmanager
async def sdk(url: str, token: str) -> AsyncIterator[LangGraphClient]:
    """An SDK client presenting ``token``."""
    async with get_client(
        url=url, api_key=None, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client for the server (no proxy: loopback only)."""
    async with httpx.AsyncClient(base_url=server, trust_env=False, timeout=60) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


async def footprint(db_uri: str, thread_id: str | None = None) -> dict[str, int]:
    """Row counts that any write would change (all threads, or one thread)."""
    where = "" if thread_id is None else " WHERE thread_id = %(t)s"
    counts = {}
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        for table in ("runs", "checkpoints", "checkpoint_writes", "approval_decisions"):
            cur = await conn.execute(f"SELECT count(*) FROM {table}{where}", {"t": thread_id})
            row = await cur.fetchone()
            assert row is not None
            counts[table] = row[0]
        cur = await conn.execute("SELECT count(*) FROM payments")
        row = await cur.fetchone()
        assert row is not None
        counts["payments"] = row[0]
        cur = await conn.execute("SELECT count(*) FROM audit_events")
        row = await cur.fetchone()
        assert row is not None
        counts["audit_events"] = row[0]
    return counts


async def answers_refused(db_uri: str, thread_id: str) -> list[tuple[str, str]]:
    """(reviewer, role) of each refused answer the audit chain holds for ``thread_id``."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT payload->>'reviewer_id', payload->>'reviewer_role' FROM audit_events"
            " WHERE thread_id = %s AND kind = 'answer_refused' ORDER BY seq",
            (thread_id,),
        )
        return [(r[0], r[1]) for r in await cur.fetchall()]


async def thread_count(url: str) -> int:
    """How many threads the server holds (as admin, who sees all)."""
    async with sdk(url, token_for("admin")) as admin:
        return len(await admin.threads.search(limit=1000))


async def start_until_interrupt(url: str, token: str, request: str) -> tuple[str, dict[str, Any]]:
    """As the clerk with ``token``: a new thread run to its approval interrupt."""
    user = TOKENS[token]["identity"]
    async with sdk(url, token) as clerk:
        thread = await clerk.threads.create()
        thread_id = thread["thread_id"]
        result = await clerk.runs.wait(
            thread_id, GRAPH_ID, input={"request": request, "user": user}
        )
        assert isinstance(result, dict) and result.get("__interrupt__"), result
        state = await clerk.threads.get_state(thread_id)
    [interrupt] = state["interrupts"]
    return thread_id, interrupt


def approve(reviewer_id: str = "someone-else", role: str = "controller") -> dict[str, Any]:
    """A resume approving the single pending action, claiming ``reviewer_id`` in the body."""
    return {"decisions": [{"type": "approve"}], "reviewer": {"id": reviewer_id, "role": role}}


async def refused(call: Any, status: int) -> str:
    """Await ``call``; assert the server answered ``status``; return the response text."""
    with pytest.raises(httpx.HTTPStatusError) as error:
        await call
    assert error.value.response.status_code == status, error.value.response.text
    return error.value.response.text


async def decisions(db_uri: str, thread_id: str) -> list[tuple[str, str, str]]:
    """(reviewer_id, reviewer_role, decision) recorded for ``thread_id``, oldest first."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT reviewer_id, reviewer_role, decision FROM approval_decisions"
            " WHERE thread_id = %s ORDER BY decision_id",
            (thread_id,),
        )
        return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


# --- 401: who are you? -------------------------------------------------------------------


async def test_missing_or_bad_token_is_401_and_writes_nothing(
    server: str, http: httpx.AsyncClient, module_db: str
) -> None:
    before, threads = await footprint(module_db), await thread_count(server)
    body = {"assistant_id": GRAPH_ID, "input": {"request": "Pay INV-1005", "user": "clerk-ana"}}
    attempts: list[dict[str, str]] = [
        {},
        bearer("not-a-token"),
        {"Authorization": "Basic Y2xlcms6YW5h"},
        {"Authorization": "Bearer"},
        # Studio's scheme must not open a way around the tokens (disable_studio_auth).
        {"x-auth-scheme": "langsmith"},
        bearer(signed(secret="another-secret-" + "y" * 32)),
    ]
    for headers in attempts:
        for method, path, payload in (
            ("POST", "/threads", {}),
            ("POST", "/runs/wait", body),
            ("POST", "/threads/search", {}),
            ("GET", "/assistants/search", None),
        ):
            response = await http.request(method, path, json=payload, headers=headers)
            assert response.status_code == 401, (headers, path, response.text)
    missing = await http.post("/threads", json={})
    assert "Authorization" in missing.json()["detail"]
    assert await footprint(module_db) == before
    assert await thread_count(server) == threads


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "not-us"}, "issuer"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"exp": None}, "exp"),
        ({"role": "owner"}, "role"),
        ({"tenant": None}, "tenant"),
    ],
)
async def test_bad_jwt_is_401(
    server: str, http: httpx.AsyncClient, module_db: str, claims: dict[str, Any], reason: str
) -> None:
    before = await footprint(module_db)
    response = await http.post("/threads", json={}, headers=bearer(signed(**claims)))
    assert response.status_code == 401, response.text
    assert reason in response.json()["detail"].lower()
    assert await footprint(module_db) == before


async def test_valid_jwt_runs_as_its_subject(server: str, module_db: str) -> None:
    token = signed(sub="clerk-jay")
    async with sdk(server, token) as jay:
        thread = await jay.threads.create()
        assert thread["metadata"]["owner"] == "clerk-jay"
        assert thread["metadata"]["tenant"] == TENANT
        # A JWT clerk is a clerk: another identity in the input is refused.
        await refused(
            jay.runs.wait(
                thread["thread_id"],
                GRAPH_ID,
                input={"request": "Pay INV-1005", "user": "clerk-ana"},
            ),
            403,
        )
    assert (await footprint(module_db, thread["thread_id"]))["checkpoints"] == 0


# --- 403 / 404: what may you do? ---------------------------------------------------------


async def test_a_second_request_on_a_used_thread_is_refused_before_it_is_written(
    server: str, module_db: str
) -> None:
    """Each thread is one request's: new input there would merge into the old request's
    state and skip the cost cap's admission. Its owner gets 409; others still see 404."""
    async with sdk(server, token_for("ana")) as ana:
        thread_id = (await ana.threads.create())["thread_id"]
        done = await ana.runs.wait(
            thread_id, GRAPH_ID, input={"request": "Validate INV-1002", "user": "clerk-ana"}
        )
        assert isinstance(done, dict) and done.get("status") == "completed", done
        before = await footprint(module_db, thread_id)
        text = await refused(
            ana.runs.wait(
                thread_id, GRAPH_ID, input={"request": "Pay INV-1005", "user": "clerk-ana"}
            ),
            409,
        )
        assert "already holds a request" in text and "new thread" in text
        assert (await ana.threads.get_state(thread_id))["values"]["request"] == "Validate INV-1002"
    async with sdk(server, token_for("ben")) as ben:
        await refused(
            ben.runs.wait(
                thread_id, GRAPH_ID, input={"request": "Pay INV-1005", "user": "clerk-ben"}
            ),
            404,
        )
    assert await footprint(module_db, thread_id) == before


async def test_a_thread_on_no_server_list_cannot_be_taken_over_under_its_id(
    server: str, module_db: str
) -> None:
    """A `payables run` thread (acme's bank change, run here in process as the CLI runs it)
    is on no server list, nor is a server's thread once its list is lost. Created on the
    server under its id, such a thread named its creator its owner: clerk-ben, of another
    tenant, read acme's request with the account in full, and his run on it (stopped by
    ``interrupt_before`` before the router could refuse it) replaced the pending approval."""
    account = "NL02ABNA0123456789"
    async with open_agent(database=Database(module_db)) as agent:
        change = await agent.start(
            f"Change the bank account of vendor V-006 to {account}, per their signed letter",
            user="clerk-acme",
            context=Context(tenant="acme"),
        )
        assert change["status"] == "interrupted", change["reason"]
        thread_id = change["thread_id"]
        before = await footprint(module_db, thread_id)
        async with sdk(server, token_for("ben")) as ben:
            text = await refused(ben.threads.create(thread_id=thread_id, graph_id=GRAPH_ID), 409)
            assert f"Thread id {thread_id} is already in use" in text, text
            await refused(
                ben.runs.wait(
                    thread_id,
                    GRAPH_ID,
                    input={"request": "Validate INV-1004", "user": "clerk-ben"},
                    if_not_exists="create",
                    interrupt_before=["router"],
                ),
                404,
            )
            await refused(ben.threads.get_state(thread_id), 404)
        assert await footprint(module_db, thread_id) == before
        assert len(await agent.pending(thread_id)) == 1
    # The requester the run index records may put their own thread on the server's list.
    async with sdk(server, token_for("acme-clerk")) as owner:
        await owner.threads.create(thread_id=thread_id, graph_id=GRAPH_ID)
        state = await owner.threads.get_state(thread_id)
    assert state["values"]["user"] == "clerk-acme", state
    assert [i["value"]["requester"] for i in state["interrupts"]] == ["clerk-acme"], state


async def test_clerk_sees_and_runs_only_own_threads(server: str, module_db: str) -> None:
    thread_id, _ = await start_until_interrupt(
        server, "ana", "Validate INV-1002 and pay it if it matches"
    )
    before = await footprint(module_db, thread_id)
    async with sdk(server, token_for("ben")) as ben:
        await refused(ben.threads.get(thread_id), 404)
        await refused(ben.threads.get_state(thread_id), 404)
        assert thread_id not in {t["thread_id"] for t in await ben.threads.search(limit=1000)}
        await refused(
            ben.runs.wait(
                thread_id, GRAPH_ID, input={"request": "Pay INV-1005", "user": "clerk-ben"}
            ),
            404,
        )
        await refused(ben.threads.update(thread_id, metadata={"note": "mine now"}), 404)
    async with sdk(server, token_for("rev-acme")) as other_tenant:
        await refused(other_tenant.threads.get(thread_id), 404)
        assert thread_id not in {t["thread_id"] for t in await other_tenant.threads.search()}
    async with sdk(server, token_for("ana-at-acme")) as namesake:
        await refused(namesake.threads.get(thread_id), 404)
        assert thread_id not in {t["thread_id"] for t in await namesake.threads.search()}
    async with sdk(server, token_for("rev-1")) as reviewer:
        assert (await reviewer.threads.get(thread_id))["status"] == "interrupted"
    async with sdk(server, token_for("ana")) as ana:
        assert (await ana.threads.get(thread_id))["metadata"]["owner"] == "clerk-ana"
    assert await footprint(module_db, thread_id) == before


async def test_clerk_cannot_set_run_settings_or_another_requester(
    server: str, module_db: str
) -> None:
    async with sdk(server, token_for("ana")) as ana:
        thread_id = (await ana.threads.create())["thread_id"]
        before = await footprint(module_db)
        text = await refused(
            ana.runs.wait(
                thread_id,
                GRAPH_ID,
                input={"request": "Pay INV-1020", "user": "clerk-ana"},
                context={"dual_control_threshold": "1000000"},
            ),
            403,
        )
        assert "dual_control_threshold" in text
        text = await refused(
            ana.runs.wait(
                thread_id, GRAPH_ID, input={"request": "Pay INV-1020", "user": "clerk-ben"}
            ),
            403,
        )
        assert "clerk-ana" in text
    assert await footprint(module_db, thread_id) == {
        "runs": 0,
        "checkpoints": 0,
        "checkpoint_writes": 0,
        "approval_decisions": 0,
        "payments": before["payments"],
        "audit_events": before["audit_events"],
    }


@pytest.mark.parametrize("intruder", ["ben", "acme-clerk"])
async def test_creating_a_thread_under_anothers_id_does_not_return_it(
    server: str, http: httpx.AsyncClient, intruder: str
) -> None:
    """POST /threads naming an existing id returns that thread (if_exists="do_nothing"):
    only when the caller may read it."""
    thread_id, _ = await start_until_interrupt(
        server, token_for("ana"), "Validate INV-1001 and pay it if it matches"
    )
    headers = bearer(token_for(intruder))
    assert (await http.get(f"/threads/{thread_id}", headers=headers)).status_code == 404
    created = await http.post(
        "/threads", json={"thread_id": thread_id, "if_exists": "do_nothing"}, headers=headers
    )
    assert created.status_code >= 400, created.text[:300]
    assert "INV-1001" not in created.text and "clerk-ana" not in created.text
    async with sdk(server, token_for("ana")) as ana:
        assert (await ana.threads.get(thread_id))["metadata"]["owner"] == "clerk-ana"


async def test_ownership_metadata_is_the_servers(server: str, module_db: str) -> None:
    async with sdk(server, token_for("ana")) as ana:
        thread = await ana.threads.create(metadata={"owner": "clerk-ben", "tenant": "acme"})
        assert (thread["metadata"]["owner"], thread["metadata"]["tenant"]) == ("clerk-ana", TENANT)
        text = await refused(
            ana.threads.update(thread["thread_id"], metadata={"owner": "clerk-ben"}), 403
        )
        assert "owner" in text
        # A run that creates its own thread gives it the token's owner and tenant.
        new_id = str(uuid.uuid4())
        await ana.runs.create(
            new_id,
            GRAPH_ID,
            input={"request": "What is our price variance tolerance?", "user": "clerk-ana"},
            metadata={"owner": "clerk-ben"},
            if_not_exists="create",
        )
        created = await ana.threads.get(new_id)
        assert (created["metadata"]["owner"], created["metadata"]["tenant"]) == (
            "clerk-ana",
            TENANT,
        )
        await ana.runs.join(new_id, (await ana.runs.list(new_id))[0]["run_id"])
    async with sdk(server, token_for("ben")) as ben:
        await refused(ben.threads.get(new_id), 404)


async def test_store_and_assistant_writes_are_for_admins(
    http: httpx.AsyncClient, module_db: str
) -> None:
    before = await footprint(module_db)
    item = {"namespace": ["notes"], "key": "k1", "value": {"text": "hi"}}
    for token in ("ana", "rev-1", "ctl-1"):
        response = await http.put("/store/items", json=item, headers=bearer(token))
        assert response.status_code == 403, response.text
        response = await http.post(
            "/assistants", json={"graph_id": GRAPH_ID, "name": "mine"}, headers=bearer(token)
        )
        assert response.status_code == 403, response.text
    query = {"namespace": "notes", "key": "k1"}
    found = await http.get("/store/items", params=query, headers=bearer("admin"))
    assert found.status_code == 200 and found.json() is None, found.text
    assert (await http.put("/store/items", json=item, headers=bearer("admin"))).status_code == 204
    found = await http.get("/store/items", params=query, headers=bearer("admin"))
    assert found.json()["value"] == {"text": "hi"}
    assert await footprint(module_db) == before


async def test_no_one_sets_the_approval_policy_per_request_not_even_an_admin(
    server: str, http: httpx.AsyncClient, module_db: str
) -> None:
    # 3,746.10 EUR with no EUR rate configured: two approvers, one a controller. An admin's
    # resume carrying a rate once made the admin's one signature enough, and paid it.
    thread_id, _ = await start_until_interrupt(
        server, "ana", "Validate INV-1007 and pay it if it matches"
    )
    before = await footprint(module_db, thread_id)
    async with sdk(server, token_for("admin")) as admin:
        text = await refused(
            admin.runs.wait(
                thread_id,
                GRAPH_ID,
                command={"resume": approve("ops-1", "approver")},
                context={"fx_rates": "EUR=1.08"},
            ),
            403,
        )
        assert "fx_rates" in text and "an admin's too" in text, text
        text = await refused(
            admin.runs.wait(
                None,
                GRAPH_ID,
                input={"request": "Pay INV-1020", "user": "clerk-ana"},
                config={"configurable": {"approval_threshold": "100000000"}},
            ),
            403,
        )
        assert "approval_threshold" in text, text
    for body in (
        {"graph_id": GRAPH_ID, "name": "loose", "context": {"dual_control_threshold": "1e9"}},
        {
            "graph_id": GRAPH_ID,
            "name": "loose",
            "config": {"configurable": {"price_tolerance_pct": "90"}},
        },
    ):
        response = await http.post("/assistants", json=body, headers=bearer("admin"))
        assert response.status_code == 403, response.text
        assert "not an assistant's" in response.text
    assert await footprint(module_db, thread_id) == before


async def test_reviewer_cannot_start_threads_or_runs(server: str, module_db: str) -> None:
    before, threads = await footprint(module_db), await thread_count(server)
    async with sdk(server, token_for("rev-1")) as reviewer:
        await refused(reviewer.threads.create(), 403)
        await refused(
            reviewer.runs.wait(None, GRAPH_ID, input={"request": "Pay INV-1005", "user": "rev-1"}),
            403,
        )
    assert await footprint(module_db) == before
    assert await thread_count(server) == threads


async def test_a_clerk_request_needs_a_thread_that_stays(server: str, module_db: str) -> None:
    """A thread-less run's thread is deleted when the run ends, paused or not: the run index
    then listed an approval nobody could answer, and `payables approvals` failed on it."""
    request = {"request": "Pay INV-1005", "user": "clerk-ana"}
    before, threads = await footprint(module_db), await thread_count(server)
    async with sdk(server, token_for("ana")) as ana:
        text = await refused(ana.runs.wait(None, GRAPH_ID, input=request), 422)
        assert "Create a thread" in text, text
    assert await footprint(module_db) == before
    assert await thread_count(server) == threads


async def test_a_clerk_cannot_run_a_copy_of_a_thread_paused_for_approval(
    server: str, module_db: str
) -> None:
    """A copy, run on from its checkpoint, asked for the same payment's approval again, and
    its audit trail began at the approval: no request, route or plan on record."""
    thread_id, _ = await start_until_interrupt(server, "ana", "Pay INV-1045")
    async with sdk(server, token_for("ana")) as ana:
        copy = (await ana.threads.copy(thread_id))["thread_id"]
        before = await footprint(module_db)
        text = await refused(ana.runs.wait(copy, GRAPH_ID, input=None), 403)
        assert "going on from a thread's last checkpoint is for an admin" in text, text
    async with sdk(server, token_for("rev-1")) as reviewer:
        await refused(reviewer.runs.wait(copy, GRAPH_ID, command={"resume": approve()}), 403)
    assert await footprint(module_db) == before


async def test_clerk_and_requester_cannot_resume_and_reviewer_only_resumes(
    server: str, module_db: str
) -> None:
    thread_id, interrupt = await start_until_interrupt(
        server, "ana", "Validate INV-1004 and pay it if it matches"
    )
    before = await footprint(module_db, thread_id)
    resume = {"resume": {interrupt["id"]: approve()}}
    async with sdk(server, token_for("ana")) as owner:
        assert "clerk cannot resume" in await refused(
            owner.runs.wait(thread_id, GRAPH_ID, command=resume), 403
        )
    async with sdk(server, token_for("ben")) as other_clerk:
        await refused(other_clerk.runs.wait(thread_id, GRAPH_ID, command=resume), 403)
    async with sdk(server, token_for("ana-reviews")) as requester:
        assert "cannot decide" in await refused(
            requester.runs.wait(thread_id, GRAPH_ID, command=resume), 403
        )
    # The requester's attempt to decide her own request is on record, and only it.
    assert await answers_refused(module_db, thread_id) == [("clerk-ana", "approver")]
    before["audit_events"] += 1
    async with sdk(server, token_for("rev-1")) as reviewer:
        # A reviewer answers the interrupt, nothing else: no goto, no state update, no input.
        await refused(reviewer.runs.wait(thread_id, GRAPH_ID, command={"goto": "executor"}), 403)
        await refused(
            reviewer.runs.wait(thread_id, GRAPH_ID, command={**resume, "update": {"cursor": 99}}),
            403,
        )
        await refused(reviewer.threads.update_state(thread_id, {"cursor": 99}), 403)
    async with sdk(server, token_for("rev-acme")) as other_tenant:
        # Told what a thread that does not exist is told: nothing of this one's state.
        text = await refused(other_tenant.runs.wait(thread_id, GRAPH_ID, command=resume), 403)
    assert "no approval waiting" in text and "tenant" not in text, text
    assert await footprint(module_db, thread_id) == before
    async with sdk(server, token_for("rev-1")) as reviewer:
        assert (await reviewer.threads.get(thread_id))["status"] == "interrupted"


async def test_decision_is_recorded_under_the_token_identity(server: str, module_db: str) -> None:
    thread_id, interrupt = await start_until_interrupt(
        server, "ana", "Validate INV-1001 and pay it if it matches"
    )
    # The body claims a controller named ctl-9; the token says rev-1, a reviewer.
    resume = {"resume": {interrupt["id"]: approve("ctl-9", "controller")}}
    async with sdk(server, token_for("rev-1")) as reviewer:
        await reviewer.runs.wait(thread_id, GRAPH_ID, command=resume)
        state = await reviewer.threads.get_state(thread_id)
    values = state["values"]
    assert isinstance(values, dict) and values["status"] == "completed", values
    assert [(d["reviewer_id"], d["reviewer_role"]) for d in values["decisions"]] == [
        ("rev-1", "approver")
    ]
    assert await decisions(module_db, thread_id) == [("rev-1", "approver", "approve")]
    async with await psycopg.AsyncConnection.connect(module_db) as conn:
        cur = await conn.execute(
            "SELECT payload FROM audit_events WHERE thread_id = %s AND kind = 'decision'",
            (thread_id,),
        )
        [(payload,)] = await cur.fetchall()
        cur = await conn.execute("SELECT count(*) FROM payments WHERE thread_id = %s", (thread_id,))
        paid = await cur.fetchone()
    assert "rev-1" in json.dumps(payload) and "ctl-9" not in json.dumps(payload)
    assert paid == (1,)


async def test_second_signature_above_dual_control_must_be_a_controller(
    server: str, module_db: str
) -> None:
    thread_id, first = await start_until_interrupt(server, "ben", "Pay INV-1020")
    [step] = first["value"]["steps"]
    assert step["min_approvers"] == 2 and step["required_role"] == "controller", step
    async with sdk(server, token_for("rev-1")) as rev1:
        result = await rev1.runs.wait(
            thread_id, GRAPH_ID, command={"resume": {first["id"]: approve()}}
        )
        assert isinstance(result, dict) and result.get("__interrupt__"), result
        [second] = (await rev1.threads.get_state(thread_id))["interrupts"]
    assert second["value"]["steps"][0]["approved_by"] == [{"id": "rev-1", "role": "approver"}]
    before = await footprint(module_db, thread_id)
    resume = {"resume": {second["id"]: approve()}}
    async with sdk(server, token_for("rev-2")) as rev2:
        assert "controller" in await refused(
            rev2.runs.wait(thread_id, GRAPH_ID, command=resume), 403
        )
    async with sdk(server, token_for("admin")) as admin:
        await refused(admin.runs.wait(thread_id, GRAPH_ID, command=resume), 403)
    async with sdk(server, token_for("rev-1")) as rev1:
        # Signed already: told so, not that an approver cannot give a controller's signature.
        again = await refused(rev1.runs.wait(thread_id, GRAPH_ID, command=resume), 403)
        assert "rev-1 already approved schedule_payment" in again, again
        missing = await refused(rev1.runs.wait(thread_id, GRAPH_ID, command={"resume": None}), 422)
        assert "command.resume is missing" in missing, missing
    # Each refused attempt at the signature is on record (the malformed answer was refused
    # before it was an answer to anything).
    assert await answers_refused(module_db, thread_id) == [
        ("rev-2", "approver"),
        ("ops-1", "approver"),
        ("rev-1", "approver"),
    ]
    before["audit_events"] += 3
    assert await footprint(module_db, thread_id) == before
    async with sdk(server, token_for("ctl-1")) as controller:
        await controller.runs.wait(thread_id, GRAPH_ID, command=resume)
        values = (await controller.threads.get_state(thread_id))["values"]
    assert isinstance(values, dict) and values["status"] == "completed", values
    assert await decisions(module_db, thread_id) == [
        ("rev-1", "approver", "approve"),
        ("ctl-1", "controller", "approve"),
    ]
    async with await psycopg.AsyncConnection.connect(module_db) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1020' AND thread_id = %s",
            (thread_id,),
        )
        assert await cur.fetchone() == (1,)


async def test_reviewer_resume_sends_the_answer_and_nothing_else(
    server: str, module_db: str
) -> None:
    """A reviewer answers the approval waiting on the latest checkpoint: a fork from an
    older checkpoint, breakpoints, config or context overrides and other run options are
    refused (403, naming the field) before anything is written; the plain resume runs.
    An admin's resume keeps every run option."""
    thread_id, interrupt = await start_until_interrupt(
        server, "ana", "Validate INV-1009 and pay it if it matches"
    )
    resume = {"resume": {interrupt["id"]: approve()}}
    async with sdk(server, token_for("ana")) as ana:
        older = (await ana.threads.get_history(thread_id, limit=10))[-1]
        other_thread = (await ana.threads.create())["thread_id"]
    older_id = older["checkpoint"]["checkpoint_id"]
    before = await footprint(module_db, thread_id)
    attempts: list[tuple[dict[str, Any], str]] = [
        ({"checkpoint_id": older_id}, "checkpoint_id"),
        ({"checkpoint": {"checkpoint_id": older_id}}, "checkpoint_id"),
        ({"checkpoint": {"checkpoint_ns": "", "thread_id": other_thread}}, "checkpoint"),
        ({"interrupt_before": ["executor"]}, "interrupt_before"),
        ({"interrupt_after": "*"}, "interrupt_after"),
        (
            {"config": {"configurable": {"thread_id": other_thread}}},
            "config.configurable.thread_id",
        ),
        (
            {"config": {"configurable": {"router_model": "gpt-x"}}},
            "config.configurable.router_model",
        ),
        ({"config": {"recursion_limit": 3}}, "config.recursion_limit"),
        ({"context": {"prompt_version": "v0"}}, "context.prompt_version"),
        ({"multitask_strategy": "rollback"}, "multitask_strategy"),
        ({"after_seconds": 30}, "after_seconds"),
        ({"metadata": {"note": "mine"}}, "metadata"),
        ({"if_not_exists": "create"}, "if_not_exists"),
        ({"durability": "exit"}, "durability"),
    ]
    async with sdk(server, token_for("rev-1")) as reviewer:
        for options, field in attempts:
            text = await refused(
                reviewer.runs.wait(thread_id, GRAPH_ID, command=resume, **options), 403
            )
            assert f"cannot send {field}:" in text, (options, text)
            assert "may only send the resume answer" in text, text
        assert await footprint(module_db, thread_id) == before
        assert (await reviewer.threads.get(thread_id))["status"] == "interrupted"
        # The plain resume, as the SDK and the inbox send it, still answers the approval.
        await reviewer.runs.wait(thread_id, GRAPH_ID, command=resume)
        values = (await reviewer.threads.get_state(thread_id))["values"]
    assert isinstance(values, dict) and values["status"] == "completed", values
    assert await decisions(module_db, thread_id) == [("rev-1", "approver", "approve")]

    # Admins operate the service (and Studio): their resume naming a checkpoint still runs.
    thread_id, interrupt = await start_until_interrupt(
        server, "ana", "Validate INV-1015 and pay it if it matches"
    )
    async with sdk(server, token_for("admin")) as admin:
        latest = (await admin.threads.get_state(thread_id))["checkpoint"]["checkpoint_id"]
        await admin.runs.wait(
            thread_id,
            GRAPH_ID,
            command={"resume": {interrupt["id"]: approve()}},
            checkpoint_id=latest,
        )
        values = (await admin.threads.get_state(thread_id))["values"]
    assert isinstance(values, dict) and values["status"] == "completed", values
    assert await decisions(module_db, thread_id) == [("ops-1", "approver", "approve")]


async def test_a_resume_after_an_answer_recorded_before_a_crash_says_who_answered(
    server: str, module_db: str, tmp_path: Path
) -> None:
    """The crash window of an approval, through the server.

    rev-1's answer commits and the answering process dies before the checkpoint (a CLI
    resume killed at ``after:approval``), so the thread still shows the interrupt while the
    run index says running. A second reviewer's resume is refused saying the approval was
    answered, by whom, and what finishes the run; before, it was told the thread had no
    approval waiting. A reviewer of another tenant learns nothing of it. An admin's run
    with no input then finishes it from the recorded answer.
    """
    thread_id, interrupt = await start_until_interrupt(
        server, "ana", "Validate INV-1003 and pay it if it matches"
    )
    cli_env = server_env(
        os.environ,
        module_db,
        PAYABLES_DATA_DIR=str(tmp_path / "unused-embedded"),
        PAYABLES_FAILPOINTS="after:approval",
    )
    proc = payables(
        cli_env, "resume", thread_id, "--approve", "--reviewer", "rev-1", "--role", "approver"
    )
    assert proc.returncode == -signal.SIGKILL, explain(proc)
    assert await decisions(module_db, thread_id) == [("rev-1", "approver", "approve")]
    before = await footprint(module_db, thread_id)

    resume = {"resume": {interrupt["id"]: approve()}}
    async with sdk(server, token_for("rev-2")) as rev2:
        text = " ".join(
            (await refused(rev2.runs.wait(thread_id, GRAPH_ID, command=resume), 403)).split()
        )
    assert "already answered (rev-1: approve)" in text, text
    assert "no input" in text and f"payables continue {thread_id}" in text, text
    async with sdk(server, token_for("rev-acme")) as other_tenant:
        text = await refused(other_tenant.runs.wait(thread_id, GRAPH_ID, command=resume), 403)
    assert "rev-1" not in text and "answered" not in text, text
    assert "no approval waiting" in text, text
    # rev-2's answer is on record as refused; the other tenant's reviewer learnt nothing,
    # and nothing is recorded in a chain of a tenant they may not see.
    assert await answers_refused(module_db, thread_id) == [("rev-2", "approver")]
    before["audit_events"] += 1
    assert await footprint(module_db, thread_id) == before

    # An admin of another tenant finishes it, as the thread's tenant: the run's audit rows
    # and its run index row stay in the tenant whose request it is.
    async with sdk(server, token_for("admin-acme")) as admin:
        await admin.runs.wait(thread_id, GRAPH_ID, input=None)
        values = (await admin.threads.get_state(thread_id))["values"]
    assert isinstance(values, dict) and values["status"] == "completed", values
    assert [(d["reviewer_id"], d["decision"]) for d in values["decisions"]] == [
        ("rev-1", "approve")
    ]
    assert await decisions(module_db, thread_id) == [("rev-1", "approver", "approve")]
    async with await psycopg.AsyncConnection.connect(module_db) as conn:
        cur = await conn.execute(
            "SELECT DISTINCT tenant FROM audit_events WHERE thread_id = %s", (thread_id,)
        )
        assert await cur.fetchall() == [(TENANT,)]
        cur = await conn.execute("SELECT tenant FROM runs WHERE thread_id = %s", (thread_id,))
        assert await cur.fetchall() == [(TENANT,)]
        cur = await conn.execute(
            "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1003' AND thread_id = %s",
            (thread_id,),
        )
        assert await cur.fetchone() == (1,)


async def test_runs_are_recorded_under_the_token_tenant(server: str, module_db: str) -> None:
    thread_id, _ = await start_until_interrupt(
        server, "acme-clerk", "Validate INV-1007 and pay it if it matches"
    )
    async with await psycopg.AsyncConnection.connect(module_db) as conn:
        cur = await conn.execute(
            "SELECT requester, tenant FROM runs WHERE thread_id = %s", (thread_id,)
        )
        assert await cur.fetchone() == ("clerk-acme", "acme")
    async with sdk(server, token_for("rev-1")) as default_tenant:
        await refused(default_tenant.threads.get(thread_id), 404)
    async with sdk(server, token_for("rev-acme")) as reviewer:
        assert (await reviewer.threads.get(thread_id))["metadata"]["tenant"] == "acme"


# --- fail closed -------------------------------------------------------------------------


async def test_server_without_token_configuration_refuses_everyone(
    db_uri: str, tmp_path: Path
) -> None:
    before = await footprint(db_uri)
    env = server_env(os.environ, db_uri, PAYABLES_DATA_DIR=str(tmp_path / "unused-embedded"))
    for key in ("PAYABLES_AUTH_TOKENS", "PAYABLES_AUTH_TOKENS_FILE", "PAYABLES_JWT_SECRET"):
        env.pop(key, None)
    with langgraph_dev(env, tmp_path) as url:
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as http:
            for headers in ({}, bearer("ana"), bearer(signed())):
                response = await http.post("/threads", json={}, headers=headers)
                assert response.status_code == 401, response.text
                if headers:
                    assert "PAYABLES_AUTH_TOKENS" in response.json()["detail"]
            assert (
                await http.post("/runs/wait", json={"assistant_id": GRAPH_ID})
            ).status_code == 401
    assert await footprint(db_uri) == before


async def test_clerk_cannot_write_thread_state_to_name_another_requester(
    server: str, module_db: str, http: httpx.AsyncClient
) -> None:
    """A state write is a run input that skips create_run's checks: a clerk who writes
    ``user`` on a fresh thread and runs it with no input would be recorded as someone else,
    and could then approve the request with a reviewer token of their own."""
    async with sdk(server, token_for("ana")) as ana:
        # The thread names its graph, as a state write on a thread without runs needs.
        thread = await ana.threads.create(metadata={"graph_id": GRAPH_ID})
        thread_id = thread["thread_id"]
        before = await footprint(module_db, thread_id)
        text = await refused(
            ana.threads.update_state(
                thread_id,
                {"request": "Validate INV-1003 and pay it if it matches", "user": "clerk-zed"},
            ),
            403,
        )
        assert "state" in text
        # Metadata that is not the server's stays the owner's to change.
        await ana.threads.update(thread_id, metadata={"note": "urgent"})
    assert await footprint(module_db, thread_id) == before
    async with sdk(server, token_for("admin")) as admin:
        assert (await admin.threads.get(thread_id))["metadata"]["note"] == "urgent"
    # Nor at creation: a thread's supersteps are state writes too.
    write = {"values": {"request": "Pay INV-1003", "user": "clerk-zed"}, "as_node": "__start__"}
    created = await http.post(
        "/threads",
        json={"metadata": {"graph_id": GRAPH_ID}, "supersteps": [{"updates": [write]}]},
        headers=bearer(token_for("ana")),
    )
    # The server creates the thread, then answers 201 with the refusal of its supersteps.
    assert "Thread state is written by runs" in created.text, created.text
    new_id = created.json()["detail"].split()[1]
    state = await http.get(f"/threads/{new_id}/state", headers=bearer(token_for("ana")))
    assert state.status_code == 200 and "clerk-zed" not in state.text, state.text


async def test_input_postgres_cannot_store_is_refused_before_anything_is_written(
    server: str, module_db: str
) -> None:
    """A NUL in the request or an attachment fails in the checkpointer's write, after the
    run was accepted; it is refused up front instead (422, naming the field)."""
    async with sdk(server, token_for("ana")) as ana:
        for run_input, field in (
            ({"request": "Validate INV-1001\x00 now", "user": "clerk-ana"}, "input.request"),
            (
                {
                    "request": "Validate INV-1001",
                    "user": "clerk-ana",
                    "attachments": [{"name": "note.txt", "text": "pay\x00 it"}],
                },
                "input.attachments[0].text",
            ),
        ):
            thread_id = (await ana.threads.create())["thread_id"]
            before = await footprint(module_db, thread_id)
            text = await refused(ana.runs.wait(thread_id, GRAPH_ID, input=run_input), 422)
            assert field in text and "NUL" in text, text
            assert await footprint(module_db, thread_id) == before
        for not_an_object in ("Change V-002 bank account to GB33BUKB20201555555555", [1, 2]):
            thread_id = (await ana.threads.create())["thread_id"]
            before = await footprint(module_db, thread_id)
            text = await refused(ana.runs.wait(thread_id, GRAPH_ID, input=not_an_object), 422)
            assert "input must be an object" in text and "request" in text, text
            assert await footprint(module_db, thread_id) == before
        # Once run: refused by the graph, which left the thread holding a request nobody made.
        for without_request in ({"user": "clerk-ana"}, {"request": "  ", "user": "clerk-ana"}):
            thread_id = (await ana.threads.create())["thread_id"]
            before = await footprint(module_db, thread_id)
            text = await refused(ana.runs.wait(thread_id, GRAPH_ID, input=without_request), 422)
            assert "input.request must be the request's text" in text, text
            assert await footprint(module_db, thread_id) == before
            await ana.runs.wait(
                thread_id, GRAPH_ID, input={"request": "Validate INV-1002", "user": "clerk-ana"}
            )
