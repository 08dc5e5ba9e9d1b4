"""The graph on a real Postgres, in-process: the shortest paths through every route."""

from __future__ import annotations

import pytest

from nodes.verifier import check_outcomes
from runtime.agent import open_agent
from runtime.context import Context
from state.db import Database
from tests.approvals import sign_as_two_controllers

pytestmark = pytest.mark.integration


async def test_clean_invoice_without_payment_is_staged(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana")
    assert view["status"] == "completed"
    assert view["route"] == "invoice_processing"
    assert view["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    assert view["pending_approvals"] == []


async def test_out_of_scope_is_refused(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Book me a flight to Denver", user="clerk-ana")
    assert view["status"] == "refused"
    assert view["route"] == "out_of_scope"


async def test_unknown_invoice_escalates_with_the_reason(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-9999", user="clerk-ana")
    assert view["status"] == "escalated"
    assert "INV-9999" in view["reason"]


async def test_bank_change_to_the_current_account_escalates(database: Database) -> None:
    async with open_agent(database=database) as agent:
        async with database.connection() as conn:
            cur = await conn.execute(
                "SELECT remit_bank_account FROM vendors WHERE vendor_id = 'V-006'"
            )
            row = await cur.fetchone()
        assert row is not None
        current = row["remit_bank_account"]
        view = await agent.start(
            f"Change the bank account of vendor V-006 to {current}", user="clerk-ana"
        )
        assert view["status"] == "interrupted"
        thread = view["thread_id"]
        view = (await sign_as_two_controllers(agent, thread))[-1]
    assert view["status"] == "escalated"
    assert "already the vendor master account" in view["reason"]


async def test_the_verifier_checks_a_bank_change_and_its_email_in_the_database(
    database: Database,
) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Change the bank account of vendor V-006 to NL23KNAB0257394811, per their letter",
            user="clerk-ana",
        )
        thread = view["thread_id"]
        view = (await sign_as_two_controllers(agent, thread))[-1]
        assert view["status"] == "completed", view["reason"]
        outcomes = (await agent.graph.aget_state(agent.config(thread))).values["outcomes"]
    assert {o["tool"] for o in outcomes if o["ok"]} >= {
        "update_vendor_bank_account",
        "send_vendor_email",
    }
    assert await check_outcomes(database, outcomes) == []

    # What the tools reported no longer holds: the database says so.
    async with database.connection() as conn:
        await conn.execute(
            "UPDATE vendors SET remit_bank_account = 'GB29NWBK60161331926819'"
            " WHERE vendor_id = 'V-006'"
        )
        await conn.execute("DELETE FROM email_outbox WHERE vendor_id = 'V-006'")
    assert await check_outcomes(database, outcomes) == [
        "V-006's master account is not the one its bank change set",
        "the email to V-006 is not in the outbox",
    ]


async def test_policy_question_cites_passages(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "What is our price variance tolerance for invoice matching?", user="clerk-ana"
        )
    assert view["status"] == "completed"
    answer = view["result"]["answer"]
    assert answer["citations"]
    for passage_id in answer["citations"]:
        assert f"[{passage_id}]" in answer["answer"]
    assert "2%" in answer["answer"]


async def test_a_vendor_status_question_lists_the_invoices_in_the_summary(
    database: Database,
) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Where are V-001's invoices?", user="clerk-ana")
    assert view["route"] == "payment_status"
    assert view["status"] == "completed"
    [found] = view["result"]["vendor_invoices"]
    assert found["invoices"]
    assert "nothing to do" not in view["summary"]
    for invoice in found["invoices"]:
        assert f"{invoice['invoice_id']} {invoice['status']}" in view["summary"]


async def test_a_vendor_status_lookup_that_fails_escalates(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed find_invoices has no invoice id; the run must still not end completed."""
    monkeypatch.setenv("PAYABLES_FAULTS", "tool:find_invoices:error:1")
    context = Context(retry_initial_s=0.0, tool_max_retries=1)
    async with open_agent(database=database) as agent:
        view = await agent.start("Where are V-001's invoices?", user="clerk-ana", context=context)
    assert view["route"] == "payment_status"
    assert view["status"] == "escalated"
    assert "find_invoices" in view["reason"] and "backend" in view["reason"]
    assert view["summary"].startswith("[escalated]")
