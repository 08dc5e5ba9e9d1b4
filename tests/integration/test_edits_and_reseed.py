"""An edit cannot change what an approval is about; a new world forgets old threads."""

from __future__ import annotations

from datetime import date

import pytest

from runtime.agent import open_agent
from runtime.context import Context
from runtime.errors import BadInput, NotFound, ResumeError
from state.audit import verify_chain
from state.db import Database
from state.runs import ThreadReused, list_runs
from state.world import SAMPLE_WORLD_PATH, load_world, read_world

pytestmark = pytest.mark.integration

REVIEWER = {"id": "rev-1", "role": "approver"}


async def test_edit_cannot_move_a_payment_to_another_invoice(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1001 and pay it if it matches", user="clerk-ana")
        args = dict(view["pending_approvals"][0]["args"], invoice_id="INV-1002")
        edit = {"type": "edit", "edited_action": {"name": "schedule_payment", "args": args}}
        with pytest.raises(ResumeError, match="may not change invoice_id"):
            await agent.resume(view["thread_id"], {"decisions": [edit], "reviewer": REVIEWER})
        after = await agent.view(view["thread_id"])
    assert after["status"] == "interrupted"
    assert (
        after["pending_approvals"][0]["interrupt_id"]
        == (view["pending_approvals"][0]["interrupt_id"])
    )


async def test_edit_cannot_send_a_vendor_email_to_another_vendor(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Change V-006 bank account to NL23KNAB0257394811 per their call", user="clerk-ana"
        )
        actions = [p["action"] for p in view["pending_approvals"]]
        assert actions == ["update_vendor_bank_account", "send_vendor_email"], view
        args = dict(view["pending_approvals"][1]["args"], vendor_id="V-001")
        edit = {"type": "edit", "edited_action": {"name": "send_vendor_email", "args": args}}
        controller = {"id": "ctl-1", "role": "controller"}
        with pytest.raises(ResumeError, match="may not change vendor_id"):
            await agent.resume(
                view["thread_id"],
                {"decisions": [{"type": "approve"}, edit], "reviewer": controller},
            )
        after = await agent.view(view["thread_id"])
    assert after["status"] == "interrupted"


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"amount": "999999.00"}, "exceeds the total of INV-1001"),
        ({"currency": "EUR"}, "must be in the invoice's currency USD, not EUR"),
        ({"pay_on": "1999-01-01"}, "cannot be paid on 1999-01-01, before today"),
    ],
)
async def test_edit_the_payment_tool_would_refuse_is_refused_before_anything_is_recorded(
    database: Database, change: dict[str, str], refusal: str
) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1001 and pay it if it matches", user="clerk-ana")
        args = dict(view["pending_approvals"][0]["args"], **change)
        edit = {"type": "edit", "edited_action": {"name": "schedule_payment", "args": args}}
        with pytest.raises(ResumeError, match=refusal):
            await agent.resume(view["thread_id"], {"decisions": [edit], "reviewer": REVIEWER})
        after = await agent.view(view["thread_id"])
    assert after["status"] == "interrupted"
    assert after["result"] is None or not after["result"].get("decisions")
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM approval_decisions WHERE thread_id = %s",
            (view["thread_id"],),
        )
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0


async def test_edit_of_amount_is_paid_as_edited(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1001 and pay it if it matches", user="clerk-ana")
        args = dict(view["pending_approvals"][0]["args"], amount="100.5")
        edit = {"type": "edit", "edited_action": {"name": "schedule_payment", "args": args}}
        done = await agent.resume(view["thread_id"], {"decisions": [edit], "reviewer": REVIEWER})
    assert done["status"] == "completed"
    assert done["result"]["invoices"]["INV-1001"]["payment"]["amount"] == "100.50"
    assert done["result"]["decisions"][0]["decision"] == "edit"


async def test_an_overdue_invoice_is_paid_from_today_not_on_its_past_due_date(
    database: Database,
) -> None:
    # INV-1001 fell due on 2026-03-02; a payment was scheduled for that day, long gone.
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1001 and pay it if it matches", user="clerk-ana")
        done = await agent.resume(
            view["thread_id"], {"decisions": [{"type": "approve"}], "reviewer": REVIEWER}
        )
    assert done["status"] == "completed", done["reason"]
    pay_on = date.fromisoformat(done["result"]["invoices"]["INV-1001"]["payment"]["pay_on"])
    assert pay_on >= date.today() > date(2026, 3, 2)


async def test_loading_a_world_forgets_old_threads(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start("Pay INV-1001", user="clerk-ana")
        assert view["status"] == "interrupted"
        async with database.connection() as conn:
            await load_world(conn, read_world(SAMPLE_WORLD_PATH))
        assert await agent.pending_everywhere() == []
        assert await list_runs(database) == []
        with pytest.raises(NotFound, match="No thread"):
            await agent.resume(
                view["thread_id"], {"decisions": [{"type": "approve"}], "reviewer": REVIEWER}
            )


async def test_a_thread_id_used_before_a_reseed_is_not_reused(database: Database) -> None:
    """The audit chain outlives worlds and its events are idempotent per thread: a new
    request on an id the old world used would have its request, route, payment and outcome
    rows taken for the old ones and dropped. Refused, from the CLI and from the graph
    (a server client may choose the id), before anything is written."""
    thread = "reseed-reuse-1"
    async with open_agent(database=database) as agent:
        view = await agent.start("Pay INV-1001", user="clerk-ana", thread_id=thread)
        done = await agent.resume(
            thread, {"decisions": [{"type": "approve"}], "reviewer": REVIEWER}
        )
        assert done["status"] == "completed", done
        async with database.connection() as conn:
            await load_world(conn, read_world(SAMPLE_WORLD_PATH))
            cur = await conn.execute("SELECT count(*) AS n FROM audit_events")
            audit_rows = (await cur.fetchone() or {})["n"]
        with pytest.raises(ThreadReused, match=f"Thread {thread} was used .* seeded"):
            await agent.start("Pay INV-1001", user="clerk-ana", thread_id=thread)
        with pytest.raises(ThreadReused, match="Start the request on a new thread"):
            await agent.graph.ainvoke(
                {"request": "Pay INV-1001", "user": "clerk-ana"},
                agent.config(thread),
                context=Context(),
            )
        async with database.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM audit_events")
            assert (await cur.fetchone() or {})["n"] == audit_rows
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM run_admissions)"
                " + (SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001') AS n"
            )
            assert (await cur.fetchone() or {})["n"] == 0
    assert view["status"] == "interrupted"


async def test_a_world_is_not_replaced_under_a_run_in_progress(database: Database) -> None:
    """A run holds its thread's lock while it runs; a seed then refuses and changes nothing.

    Before, the seed truncated the world under the run: a payment the run had just
    committed was erased while the run went on to report it, and the run kept writing
    checkpoints into the new world, a thread the new world had never seen.
    """
    async with open_agent(database=database) as agent:
        view = await agent.start("Pay INV-1001", user="clerk-ana")
        async with agent.thread_lock(view["thread_id"], "busy"):
            async with database.connection() as conn:
                with pytest.raises(BadInput, match="1 run is in progress") as refused:
                    await load_world(conn, read_world(SAMPLE_WORLD_PATH))
        assert "nothing was changed" in str(refused.value)
        assert [r["thread_id"] for r in await list_runs(database)] == [view["thread_id"]]
        assert len(await agent.pending_everywhere()) == 1
        # Once the run is done, the world is replaced.
        async with database.connection() as conn:
            await load_world(conn, read_world(SAMPLE_WORLD_PATH))
        assert await list_runs(database) == []


async def test_a_seed_that_erases_payments_says_so_in_the_audit_chain(database: Database) -> None:
    """The chain outlives worlds. A seed erasing the agent's payments (`--discard-history`)
    once left nothing in it: the payment's tool call row stayed, its payment was gone."""
    async with open_agent(database=database) as agent:
        view = await agent.start("Pay INV-1001", user="clerk-ana")
        done = await agent.resume(
            view["thread_id"], {"decisions": [{"type": "approve"}], "reviewer": REVIEWER}
        )
        assert done["status"] == "completed", done
    async with database.connection() as conn:
        await load_world(conn, read_world(SAMPLE_WORLD_PATH))
        # A world with nothing of the agent's in it is replaced without a word.
        await load_world(conn, read_world(SAMPLE_WORLD_PATH))
        cur = await conn.execute(
            "SELECT tenant, thread_id, payload FROM audit_events WHERE kind = 'world_replaced'"
        )
        [event] = await cur.fetchall()
        report = await verify_chain(conn)
    assert (event["tenant"], event["thread_id"]) == ("default", None)
    assert event["payload"]["erased_calls"] == {"schedule_payment": 1}
    assert "@" in event["payload"]["operator"] and len(event["payload"]["world_digest"]) == 64
    assert report.ok, report.as_dict()
