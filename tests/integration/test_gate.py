"""The gate on a real Postgres: keys, replays, races, timeouts and refusals."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from pydantic import Field

from runtime.context import Context
from state.db import Database
from tests.approvals import grant
from tools.ap import AP_TOOLS
from tools.contract import (
    CallContext,
    Tier,
    ToolArgs,
    ToolFailure,
    ToolResult,
    ToolSpec,
    args_hash,
)
from tools.gate import ToolGate, ToolOutcome
from tools.registry import ToolRegistry

pytestmark = pytest.mark.integration

RUN = Context()


class NoteArgs(ToolArgs):
    """Write a note."""

    text: str = Field(description="The note.")


class NoteResult(ToolResult):
    """How many notes exist after the call."""

    count: int


async def slow_note(ctx: CallContext, args: NoteArgs) -> NoteResult:
    """Write an exception row, then take too long."""
    await ctx.conn.execute(
        "INSERT INTO invoice_exceptions (invoice_id, codes, detail, idempotency_key)"
        " VALUES ('INV-1001', ARRAY['note'], %s, %s)",
        (args.text, ctx.idempotency_key),
    )
    await asyncio.sleep(5)
    return NoteResult(count=1)


async def note_then_refuse(ctx: CallContext, args: NoteArgs) -> NoteResult:
    """Write an exception row, then refuse the call (as a handler's business rule would)."""
    await ctx.conn.execute(
        "INSERT INTO invoice_exceptions (invoice_id, codes, detail, idempotency_key)"
        " VALUES ('INV-1001', ARRAY['note'], %s, %s)",
        (args.text, ctx.idempotency_key),
    )
    raise ToolFailure("note_refused", "The note was refused after it was written.")


def note_tool(name: str, handler: Any, *, timeout_s: float | None = None) -> ToolSpec[Any, Any]:
    """A reversible test tool on the invoice route that writes notes through ``handler``."""
    return ToolSpec(
        name=name,
        description=f"{handler.__doc__} (test tool)",
        args_model=NoteArgs,
        result_model=NoteResult,
        tier=Tier.REVERSIBLE,
        scopes=frozenset({"invoice_processing"}),
        handler=handler,
        timeout_s=timeout_s,
    )


def gate_with(database: Database, *extra: ToolSpec[Any, Any]) -> ToolGate:
    return ToolGate(database, ToolRegistry([*AP_TOOLS, *extra]))


async def clerk_call(
    gate: ToolGate, tool: str, args: dict[str, Any], *, step_id: str
) -> ToolOutcome:
    """A clerk's call of ``tool`` on thread ``t``, routed as invoice processing."""
    return await gate.call(
        thread_id="t",
        step_id=step_id,
        route="invoice_processing",
        requester="clerk",
        tool=tool,
        args=args,
        run=RUN,
    )


async def clerk_asked(conn: psycopg.AsyncConnection[Any], request: str) -> None:
    """Thread ``t`` is a clerk's run asking ``request`` (its run index row)."""
    await conn.execute(
        "INSERT INTO runs (thread_id, request, requester, tenant, status)"
        " VALUES ('t', %s, 'clerk', 'default', 'running')",
        (request,),
    )


async def count(database: Database, sql: str) -> int:
    async with database.connection() as conn:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
    assert row is not None
    return int(next(iter(row.values())))


async def test_timeout_rolls_back_and_says_retry(database: Database) -> None:
    slow = note_tool("slow_note", slow_note, timeout_s=0.3)
    outcome = await clerk_call(gate_with(database, slow), "slow_note", {"text": "x"}, step_id="s1")
    assert outcome["ok"] is False and outcome["error"] is not None
    assert outcome["error"]["code"] == "timeout" and outcome["error"]["retryable"]
    assert await count(database, "SELECT count(*) FROM invoice_exceptions") == 0
    assert await count(database, "SELECT count(*) FROM tool_calls") == 0


async def test_same_key_replays_instead_of_writing_again(database: Database) -> None:
    gate = ToolGate(database)
    async with database.connection() as conn:
        await clerk_asked(conn, "Validate INV-1019")
    args = {"invoice_id": "INV-1019", "codes": ["duplicate_invoice"], "detail": "dup"}
    first = await clerk_call(gate, "flag_exception", args, step_id="p2s1")
    second = await clerk_call(gate, "flag_exception", args, step_id="p2s1")
    assert first["ok"] and not first["replayed"]
    assert second["ok"] and second["replayed"]
    assert second["result"] == first["result"]
    assert first["idempotency_key"] == second["idempotency_key"]
    assert await count(database, "SELECT count(*) FROM invoice_exceptions") == 1


async def test_racing_calls_with_one_key_write_once(database: Database) -> None:
    gate = ToolGate(database)
    async with database.connection() as conn:
        await clerk_asked(conn, "Validate INV-1001")
    args = {"invoice_id": "INV-1001"}
    outcomes = await asyncio.gather(
        *(clerk_call(gate, "stage_invoice", args, step_id="p2s1") for _ in range(5))
    )
    assert all(o["ok"] for o in outcomes)
    assert sum(not o["replayed"] for o in outcomes) == 1
    assert await count(database, "SELECT count(*) FROM tool_calls") == 1


async def test_irreversible_call_without_approval_is_refused(database: Database) -> None:
    outcome = await clerk_call(
        ToolGate(database),
        "schedule_payment",
        {"invoice_id": "INV-1001", "amount": "1.00", "currency": "USD"},
        step_id="p2s2",
    )
    assert outcome["error"] is not None and outcome["error"]["code"] == "approval_required"
    assert await count(database, "SELECT count(*) FROM payments WHERE thread_id = 't'") == 0


async def pay_request_for_a_staged_invoice(conn: psycopg.AsyncConnection[Any]) -> None:
    """INV-1001 staged, and thread t a clerk's run asking to pay it (the run index row)."""
    await conn.execute("UPDATE invoices SET status = 'staged' WHERE invoice_id = 'INV-1001'")
    await clerk_asked(conn, "Pay INV-1001")


async def test_approval_is_bound_to_the_exact_args(database: Database) -> None:
    gate = ToolGate(database)
    approved = {"invoice_id": "INV-1001", "amount": "1.00", "currency": "USD", "pay_on": None}
    async with database.connection() as conn:
        await pay_request_for_a_staged_invoice(conn)
        await grant(
            conn,
            step_id="p2s2",
            tool="schedule_payment",
            args=approved,
            reviewer="rev",
            role="approver",
        )
    other = await clerk_call(
        gate, "schedule_payment", {**approved, "amount": "2.00"}, step_id="p2s2"
    )
    assert other["error"] is not None and other["error"]["code"] == "approval_required"
    same = await clerk_call(gate, "schedule_payment", approved, step_id="p2s2")
    assert same["ok"], same["error"]
    assert await count(database, "SELECT count(*) FROM payments WHERE thread_id = 't'") == 1


async def test_requester_approval_does_not_count(database: Database) -> None:
    args = {"invoice_id": "INV-1001", "amount": "1.00", "currency": "USD", "pay_on": None}
    async with database.connection() as conn:
        await grant(
            conn,
            step_id="p2s2",
            tool="schedule_payment",
            args=args,
            reviewer="clerk",
            role="controller",
        )
    outcome = await clerk_call(ToolGate(database), "schedule_payment", args, step_id="p2s2")
    assert outcome["error"] is not None and outcome["error"]["code"] == "approval_required"


async def test_an_approval_in_another_thread_does_not_count(database: Database) -> None:
    """Step ids repeat across threads (p2s2); an approval of the same call at the same step
    in another run is not an approval of this one."""
    args = {"invoice_id": "INV-1001", "amount": "1.00", "currency": "USD", "pay_on": None}
    async with database.connection() as conn:
        await pay_request_for_a_staged_invoice(conn)
        await grant(
            conn,
            step_id="p2s2",
            tool="schedule_payment",
            args=args,
            reviewer="ctl",
            role="controller",
            thread_id="another-run",
        )
    outcome = await clerk_call(ToolGate(database), "schedule_payment", args, step_id="p2s2")
    assert outcome["error"] is not None, "paid on another run's approval"
    assert outcome["error"]["code"] == "approval_required"
    assert await count(database, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 0


@pytest.mark.parametrize("rejected_amount", ["1.00", "2.00"], ids=["same_args", "other_args"])
async def test_a_reject_at_a_step_stops_it_whatever_approvals_are_on_record(
    database: Database, rejected_amount: str
) -> None:
    """Two approvals (one a controller's) of the call are not enough once a reviewer rejected
    the step, whether the reject was of these args or of others (before an edit)."""
    args = {"invoice_id": "INV-1001", "amount": "1.00", "currency": "USD", "pay_on": None}
    async with database.connection() as conn:
        await pay_request_for_a_staged_invoice(conn)
        for reviewer, role in (("rev", "approver"), ("ctl", "controller")):
            await grant(
                conn,
                step_id="p2s2",
                tool="schedule_payment",
                args=args,
                reviewer=reviewer,
                role=role,
            )
        await conn.execute(
            "INSERT INTO approval_decisions (thread_id, step_id, tool, args_hash, reviewer_id,"
            " reviewer_role, decision, reason) VALUES ('t', 'p2s2', 'schedule_payment', %s,"
            " 'rev-2', 'approver', 'reject', 'not this month')",
            (args_hash("schedule_payment", {**args, "amount": rejected_amount}),),
        )
    outcome = await clerk_call(ToolGate(database), "schedule_payment", args, step_id="p2s2")
    assert outcome["error"] is not None, "paid although a reviewer rejected it"
    assert outcome["error"]["code"] == "rejected"
    assert "rev-2: not this month" in outcome["error"]["message"]
    assert await count(database, "SELECT count(*) FROM payments WHERE thread_id = 't'") == 0


async def test_business_failure_is_structured_and_changes_nothing(database: Database) -> None:
    async with database.connection() as conn:
        await clerk_asked(conn, "Validate INV-1019")
    outcome = await clerk_call(
        ToolGate(database), "stage_invoice", {"invoice_id": "INV-1019"}, step_id="p2s1"
    )
    assert outcome["error"] is not None
    assert outcome["error"]["code"] == "match_exceptions"
    assert "flag_exception" in outcome["error"]["hint"]
    assert await count(database, "SELECT count(*) FROM tool_calls") == 0
    assert await count(database, "SELECT count(*) FROM invoices WHERE status = 'staged'") == 0


async def test_get_invoice_reads_every_line_with_exact_amounts(database: Database) -> None:
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT line_no, po_line_no, description, quantity, unit_price, amount"
            " FROM invoice_lines WHERE invoice_id = 'INV-1001' ORDER BY line_no"
        )
        stored = await cur.fetchall()
    outcome = await clerk_call(
        gate_with(database), "get_invoice", {"invoice_id": "INV-1001"}, step_id="s1"
    )
    assert outcome["ok"] and outcome["result"] is not None, outcome["error"]
    lines = outcome["result"]["lines"]
    assert len(stored) >= 2 and len(lines) == len(stored)
    for line, row in zip(lines, stored, strict=True):
        assert line["line_no"] == row["line_no"] and line["po_line_no"] == row["po_line_no"]
        assert line["description"] == row["description"]
        for column in ("quantity", "unit_price", "amount"):
            assert line[column] == str(row[column])  # Decimal's own text: no float rounding


async def test_a_refused_call_leaves_nothing_its_handler_wrote(database: Database) -> None:
    gate = gate_with(database, note_tool("note_then_refuse", note_then_refuse))
    outcome = await clerk_call(gate, "note_then_refuse", {"text": "x"}, step_id="s1")
    assert outcome["error"] is not None and outcome["error"]["code"] == "note_refused"
    assert not outcome["error"]["retryable"]
    assert await count(database, "SELECT count(*) FROM invoice_exceptions") == 0
    assert await count(database, "SELECT count(*) FROM tool_calls") == 0
    refusals = "SELECT count(*) FROM audit_events WHERE payload->>'error_code' = 'note_refused'"
    assert await count(database, refusals) == 1  # the refusal itself is on record
    assert gate.breaker("note_then_refuse", RUN).failures == 0  # the backend did answer


async def test_the_approval_check_reads_the_invoice_under_its_lock(database: Database) -> None:
    """A change that commits while the call waits for the invoice is what the check sees.

    Here the invoice's remittance account changes to one that is not the vendor master's,
    which makes staging need a controller's approval; deciding on a read from before the
    lock would stage it without one.
    """
    gate = ToolGate(database)
    async with database.connection() as holder:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM invoices WHERE invoice_id = 'INV-1001' FOR UPDATE")
            call = asyncio.create_task(
                clerk_call(gate, "stage_invoice", {"invoice_id": "INV-1001"}, step_id="p2s1")
            )
            while not await count(
                database,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            ):
                assert not call.done(), call.result()
                await asyncio.sleep(0.01)
            await holder.execute(
                "UPDATE invoices SET bank_account = 'DE00999999999999999999'"
                " WHERE invoice_id = 'INV-1001'"
            )
        outcome = await call
    assert outcome["error"] is not None, "staged without the approval its new account needs"
    assert outcome["error"]["code"] == "approval_required"
    assert "account" in outcome["error"]["hint"]
    assert await count(database, "SELECT count(*) FROM invoices WHERE status = 'staged'") == 0


async def test_the_previous_releases_claim_still_works_during_a_rolling_deploy(
    database: Database,
) -> None:
    """Old containers call ``tool_call_claim(key)``; it must exist and share the new lock."""
    gate = ToolGate(database)
    staged = await clerk_call(gate, "stage_invoice", {"invoice_id": "INV-1001"}, step_id="p2s1")
    key = staged["idempotency_key"]
    async with database.connection() as old, database.connection() as new:
        async with old.transaction():
            cur = await old.execute("SELECT tool_call_claim(%s) AS result", (key,))
            assert (await cur.fetchone())["result"] == staged["result"]
            cur = await old.execute("SELECT tool_call_claim('never-called') AS result")
            assert (await cur.fetchone())["result"] is None
            # The old and the new claim take the same key lock: a new claim waits for it.
            with pytest.raises(psycopg.errors.LockNotAvailable):
                async with new.transaction():
                    await new.execute("SET LOCAL lock_timeout = '200ms'")
                    await new.execute("SELECT tool_call_claim('never-called', NULL)")
