"""Who must approve a payment is decided under the policy its request was made in.

The gate and the approval node used the settings of the process running each leg: a
reviewer resuming from a shell whose PAYABLES_* thresholds or FX rates were looser (a stale
`.env`, a dev shell) paid with one approver's signature a payment whose request had asked
for two, one a controller's, and nothing on record said the requirement had changed. Now
the router records the policy with the thread's run index row, and every later leg applies
the stricter requirement of that one and its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.agent import open_agent
from runtime.context import Context, policy_of
from state.db import Database
from tools.policy import PINNED_POLICY_NOTE

pytestmark = pytest.mark.integration

LOOSE = Context(
    approval_threshold="10000000", dual_control_threshold="10000000", fx_rates="EUR=1.08"
)
"""A shell whose settings let one approver pay anything, in USD or EUR."""


def approve(reviewer: str, role: str) -> dict[str, Any]:
    return {"decisions": [{"type": "approve"}], "reviewer": {"id": reviewer, "role": role}}


async def payments(database: Database, thread_id: str) -> list[tuple[str, str]]:
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT invoice_id, amount::text FROM payments WHERE thread_id = %s", (thread_id,)
        )
        return [(row["invoice_id"], row["amount"]) for row in await cur.fetchall()]


@pytest.mark.parametrize(
    ("request_text", "why"),
    [
        # 114,680 USD: over the dual-control threshold under the default settings.
        ("Pay INV-1039", "over the dual-control threshold"),
        # 3,746.10 EUR with no EUR rate configured: the thresholds cannot apply.
        ("Validate INV-1007 and pay it if it matches", "no rate from EUR to USD"),
    ],
)
async def test_a_resume_under_looser_settings_still_needs_what_the_request_asked(
    database: Database, request_text: str, why: str
) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(request_text, user="clerk-ana", context=Context())
        [asked] = view["pending_approvals"]
        assert asked["action"] == "schedule_payment", view
        assert (asked["requirement"]["min_approvers"], asked["requirement"]["required_role"]) == (
            2,
            "controller",
        )
        thread_id = view["thread_id"]

        once = await agent.resume(thread_id, approve("rev-1", "approver"), context=LOOSE)
        assert await payments(database, thread_id) == [], once
        [again] = once["pending_approvals"]
        requirement = again["requirement"]
        assert requirement["approved_by"] == [{"id": "rev-1", "role": "approver"}]
        assert (requirement["min_approvers"], requirement["required_role"]) == (2, "controller")
        assert any(
            why in reason and reason.endswith(PINNED_POLICY_NOTE)
            for reason in requirement["reasons"]
        ), requirement["reasons"]

        done = await agent.resume(thread_id, approve("ctl-1", "controller"), context=LOOSE)
    assert done["status"] == "completed", done
    assert len(await payments(database, thread_id)) == 1
    async with database.connection() as conn:
        cur = await conn.execute("SELECT policy FROM runs WHERE thread_id = %s", (thread_id,))
        row = await cur.fetchone()
    assert row is not None and row["policy"] == policy_of(Context())


async def test_a_resume_under_stricter_settings_applies_them(database: Database) -> None:
    # 3,340.97 USD: one approver under the default settings; a threshold lowered since the
    # request was made asks a controller too.
    strict = Context(approval_threshold="1000", dual_control_threshold="1000")
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Validate INV-1001 and pay it if it matches", user="clerk-ana", context=Context()
        )
        [asked] = view["pending_approvals"]
        assert asked["requirement"]["min_approvers"] == 1, view
        once = await agent.resume(view["thread_id"], approve("rev-1", "approver"), context=strict)
    assert await payments(database, view["thread_id"]) == [], once
    [again] = once["pending_approvals"]
    assert (again["requirement"]["min_approvers"], again["requirement"]["required_role"]) == (
        2,
        "controller",
    )
