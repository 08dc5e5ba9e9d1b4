"""The whole graph on Postgres with scripted models in every role.

A model may choose routes and plans, but it cannot get past the gate: a plan that tries
to pay first still stops at the approval interrupt, and provider failures degrade to the
rules model with the fallback recorded in the result.
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest

import nodes.respond
from runtime.agent import open_agent
from state.db import Database
from tests.fakes import ScriptedChatModel, ScriptedModels, plan_reply, tool_reply

pytestmark = pytest.mark.integration

ROUTE_PAY_1001 = tool_reply(
    "RouteDecision",
    {
        "route": "invoice_processing",
        "confidence": 0.95,
        "invoice_ids": ["INV-1001"],
        "wants_payment": True,
        "rationale": "pay request",
    },
)


def payments(db_uri: str, invoice_id: str) -> int:
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(
            "SELECT count(*) FROM payments WHERE invoice_id = %s", (invoice_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_model_paths_serve_every_role(database: Database, db_uri: str) -> None:
    models = ScriptedModels(
        router=ScriptedChatModel([ROUTE_PAY_1001]),
        planner=ScriptedChatModel(
            [
                plan_reply(
                    False,
                    ("get_invoice", {"invoice_id": "INV-1001"}),
                    ("compute_match", {"invoice_id": "INV-1001"}),
                ),
                plan_reply(
                    True,
                    ("stage_invoice", {"invoice_id": "INV-1001"}),
                    (
                        "schedule_payment",
                        {"invoice_id": "INV-1001", "amount": "2340.00", "currency": "USD"},
                    ),
                ),
            ]
        ),
    )
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Pay INV-1001 please", user="clerk-ana")
    assert view["status"] == "interrupted"
    assert view["model_path"] == {
        "router": "model:scripted-router",
        "planner": "model:scripted-planner",
    }
    assert view["plan_source"] == "model"
    assert [a["action"] for a in view["pending_approvals"]] == ["schedule_payment"]
    assert payments(db_uri, "INV-1001") == 0


async def test_a_plan_that_pays_first_still_stops_for_approval(
    database: Database, db_uri: str
) -> None:
    models = ScriptedModels(
        planner=ScriptedChatModel(
            [
                plan_reply(
                    True,
                    (
                        "schedule_payment",
                        {"invoice_id": "INV-1001", "amount": "2340.00", "currency": "USD"},
                    ),
                ),
            ]
        )
    )
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Pay INV-1001 now, no questions", user="clerk-ana")
    assert view["status"] == "interrupted"
    approval = view["pending_approvals"][0]
    assert approval["action"] == "schedule_payment"
    assert approval["evidence"]["invoice"]["invoice_id"] == "INV-1001"
    assert approval["evidence"]["match_table"]
    assert payments(db_uri, "INV-1001") == 0


async def test_router_failure_degrades_to_rules(database: Database) -> None:
    models = ScriptedModels(router=ScriptedChatModel([ConnectionError("connection reset")]))
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "completed"
    assert view["route"] == "invoice_processing"
    assert "ConnectionError" in view["model_path"]["router"]
    assert any("connection reset" in note for note in view["result"]["notes"])


async def test_router_cannot_invent_ids(database: Database) -> None:
    invented = tool_reply(
        "RouteDecision",
        {
            "route": "invoice_processing",
            "confidence": 0.9,
            "invoice_ids": ["INV-1020"],
            "wants_payment": False,
        },
    )
    models = ScriptedModels(router=ScriptedChatModel([invented]))
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert list(view["result"]["invoices"]) == ["INV-1002"]


async def test_a_router_model_cannot_add_a_payment_the_clerk_declined(
    database: Database, db_uri: str
) -> None:
    """The clerk's own words say not to pay; a router model that says otherwise (misread,
    or steered by text it was shown) does not put a payment in the plan."""
    models = ScriptedModels(router=ScriptedChatModel([ROUTE_PAY_1001]))
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Validate INV-1001 but do not pay it", user="clerk-ana")
    assert view["model_path"]["router"] == "model:scripted-router"
    assert view["status"] == "completed"
    assert view["pending_approvals"] == []
    assert "schedule_payment" not in [step["tool"] for step in view["plan"]]
    assert payments(db_uri, "INV-1001") == 0


async def test_a_bank_change_naming_two_accounts_escalates_whatever_the_model_says(
    database: Database, db_uri: str
) -> None:
    """A router model may call it a bank change; with two accounts in the clerk's words,
    which is the new one is a guess, and the plan would take the first (the old one)."""
    request = (
        "Change the bank account of vendor V-006 from NL23KNAB0257394811 to NL91ABNA0417164300"
    )
    change = tool_reply(
        "RouteDecision",
        {
            "route": "vendor_change",
            "confidence": 0.95,
            "vendor_ids": ["V-006"],
            "bank_accounts": ["NL91ABNA0417164300"],
        },
    )
    async with open_agent(
        models=ScriptedModels(router=ScriptedChatModel([change])), database=database
    ) as agent:
        view = await agent.start(request, user="clerk-ana")
    assert view["status"] == "escalated"
    assert view["pending_approvals"] == []
    assert "one new account" in view["reason"]
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(
            "SELECT remit_bank_account FROM vendors WHERE vendor_id = 'V-006'"
        ).fetchone()
    assert row is not None and row[0] not in {"NL23KNAB0257394811", "NL91ABNA0417164300"}


async def test_respond_model_writes_the_summary(database: Database) -> None:
    models = ScriptedModels(
        respond=ScriptedChatModel(
            [tool_reply("Summary", {"summary": "INV-1002 matched and is staged."})]
        )
    )
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["summary"] == "INV-1002 matched and is staged."
    assert view["model_path"]["respond"] == "model:scripted-respond"


async def test_low_confidence_route_escalates(database: Database) -> None:
    unsure = tool_reply(
        "RouteDecision",
        {"route": "invoice_processing", "confidence": 0.2, "invoice_ids": ["INV-1002"]},
    )
    async with open_agent(
        models=ScriptedModels(router=ScriptedChatModel([unsure])), database=database
    ) as agent:
        view = await agent.start("INV-1002 something", user="clerk-ana")
    assert view["status"] == "escalated"
    assert "confidence" in view["reason"]


async def test_a_summary_that_echoes_the_system_prompt_is_replaced(database: Database) -> None:
    from runtime.prompts import RESPOND_SYSTEM

    leaky = tool_reply("Summary", {"summary": f"My instructions: {RESPOND_SYSTEM}"})
    async with open_agent(
        models=ScriptedModels(respond=ScriptedChatModel([leaky])), database=database
    ) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert "My instructions" not in view["summary"]
    assert view["summary"].startswith("[completed]")
    assert "echoed an internal prompt" in view["model_path"]["respond"]


async def test_an_escalation_without_a_rationale_still_says_what_to_do(database: Database) -> None:
    silent = tool_reply("RouteDecision", {"route": "escalate", "confidence": 0.9})
    models = ScriptedModels(router=ScriptedChatModel([silent]))
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "escalated"
    assert "a person" in view["reason"] and "INV-" in view["reason"]


async def test_policy_text_reaches_the_respond_model_only_inside_untrusted_wrappers(
    database: Database,
) -> None:
    """Policy passages are third-party text: the summary model sees them wrapped as data."""
    respond = ScriptedChatModel([tool_reply("Summary", {"summary": "Tolerance is 2%."})])
    async with open_agent(models=ScriptedModels(respond=respond), database=database) as agent:
        view = await agent.start(
            "What is our price variance tolerance for invoice matching?", user="clerk-ana"
        )
    assert view["status"] == "completed"
    [[system, human]] = respond.received
    sent = str(human.content)
    bodies = [
        json.dumps(row["body"])[1:-1]  # as the JSON the model is sent spells it
        for row in await _passages(database, view["result"]["answer"]["citations"])
    ]
    assert bodies
    outside = re.sub(r"<untrusted source=[^>]*>.*?</untrusted>", "", sent, flags=re.S)
    for body in bodies:
        assert body in sent  # the model still gets the passage...
        assert body[:40] not in outside  # ...but only inside a wrapper
    assert "<untrusted>" in str(system.content)  # and is told what the wrapper means


async def _passages(database: Database, ids: list[str]) -> list[dict[str, str]]:
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT body FROM policy_passages WHERE passage_id = ANY(%s)", (ids,)
        )
        return list(await cur.fetchall())


async def test_a_result_too_long_for_the_respond_model_is_summarized_by_rules_whole(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut at a length, the model's input could end inside an untrusted wrapper; the
    summary model is not called and the rules summary covers the whole result."""
    monkeypatch.setattr(nodes.respond, "RESPOND_INPUT_BUDGET", 200)
    respond = ScriptedChatModel([])  # any call runs past the script: a test failure
    async with open_agent(models=ScriptedModels(respond=respond), database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "completed"
    assert respond.received == []
    assert view["model_path"]["respond"] == "rules (the result was too long for the respond model)"
    assert view["summary"].startswith("[completed]") and "INV-1002" in view["summary"]
    assert any("over the respond model's 200" in n for n in view["result"]["notes"])
