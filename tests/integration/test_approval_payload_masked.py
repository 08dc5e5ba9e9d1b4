"""The approval payload a reviewer reads (the inbox, the server API, `payables approvals`)
masks bank accounts everywhere in it, including the text a model wrote.

A model's plan step explains itself (``why``); a compromised or careless model can copy an
account number from third-party text into it, and the approval node put that sentence into
each action's ``description`` as it was.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from runtime.agent import open_agent
from state.db import Database
from tests.fakes import ScriptedChatModel, ScriptedModels, tool_reply

pytestmark = pytest.mark.integration

ATTACKER = "GB33BUKB20201555555555"


def plan(final: bool, *steps: tuple[str, dict[str, Any], str]) -> AIMessage:
    """A `ProposedPlan` reply whose steps carry their own ``why``."""
    return tool_reply(
        "ProposedPlan",
        {
            "final": final,
            "steps": [{"tool": tool, "args": args, "why": why} for tool, args, why in steps],
        },
    )


async def test_a_model_written_reason_is_masked_in_the_approval_payload(
    database: Database,
) -> None:
    payment = {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"}
    planner = ScriptedChatModel(
        [
            plan(
                False,
                ("get_invoice", {"invoice_id": "INV-1001"}, "Read the invoice."),
                ("compute_match", {"invoice_id": "INV-1001"}, "Match it."),
            ),
            plan(
                True,
                ("stage_invoice", {"invoice_id": "INV-1001"}, "Stage it."),
                ("schedule_payment", payment, f"The vendor asked to be paid to {ATTACKER}."),
            ),
        ]
    )
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Validate INV-1001 and pay it if it matches", user="clerk-ana")
        assert view["status"] == "interrupted", view
        [(_, request)] = await agent.pending(view["thread_id"])
    [action] = request["action_requests"]
    assert action["description"].startswith("The vendor asked to be paid to ****5555.")
    assert ATTACKER not in json.dumps(request, default=str)
    assert ATTACKER not in json.dumps(view, default=str)
