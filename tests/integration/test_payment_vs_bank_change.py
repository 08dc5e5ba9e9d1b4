"""A payment and a change of the vendor's bank account, at once: the payee is never stale.

The payment reads the vendor master account under the gate's lock of its invoice and
inserts the payment with it. A bank change locks the vendor row, not the invoice, so
before, it could commit between that read and the payment's insert: the payment then went
to the old account after the master had moved on (the account the invoice prints, say),
contrary to "the payee is always the vendor master account". Now the gate's claim also
holds the invoice's vendor row (FOR SHARE, migration 0016) until the payment commits.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tools.gate
from runtime.context import Context
from state.db import Database
from tests.approvals import grant_dual_control
from tools.gate import ToolGate
from tools.matching import MatchInputs

pytestmark = pytest.mark.integration

OLD = "DE89370400440532013000"
NEW = "NL23KNAB0257394811"
PAY = {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD", "pay_on": None}
CHANGE = {"vendor_id": "V-001", "new_account": NEW, "reason": "called back"}


async def one(database: Database, sql: str, *params: Any) -> Any:
    async with database.connection() as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


async def test_a_bank_change_never_slips_between_a_payments_read_and_its_insert(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = ToolGate(database)
    async with database.connection() as conn:
        for thread, request in (("pay", "Pay INV-1001"), ("bank", f"Change V-001 to {NEW}")):
            await conn.execute(
                "INSERT INTO runs (thread_id, request, requester, tenant, status)"
                " VALUES (%s, %s, 'clerk', 'default', 'running')",
                (thread, request),
            )
        await conn.execute("UPDATE invoices SET status = 'staged' WHERE invoice_id = 'INV-1001'")
        await grant_dual_control(
            conn, step_id="s2", tool="schedule_payment", args=PAY, thread_id="pay"
        )
        await grant_dual_control(
            conn, step_id="s1", tool="update_vendor_bank_account", args=CHANGE, thread_id="bank"
        )

    read, go = asyncio.Event(), asyncio.Event()
    real_load = tools.gate.load_match_inputs

    async def paused_load(conn: Any, invoice_id: str) -> MatchInputs | None:
        inputs = await real_load(conn, invoice_id)
        if not read.is_set():  # the payment's read, under its locks: hold it there
            read.set()
            await go.wait()
        return inputs

    monkeypatch.setattr(tools.gate, "load_match_inputs", paused_load)

    async def call(thread: str, step: str, route: str, tool: str, args: dict[str, Any]) -> Any:
        return await gate.call(
            thread_id=thread,
            step_id=step,
            route=route,
            requester="clerk",
            tool=tool,
            args=args,
            run=Context(tool_timeout_s=60),
        )

    payment = asyncio.create_task(call("pay", "s2", "invoice_processing", "schedule_payment", PAY))
    await asyncio.wait_for(read.wait(), 30)
    change = asyncio.create_task(
        call("bank", "s1", "vendor_change", "update_vendor_bank_account", CHANGE)
    )
    # The change either finishes or waits on a lock the payment holds; no timing involved.
    async with asyncio.timeout(30):
        while not change.done():
            waiting = await one(
                database,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'",
            )
            if waiting:
                break
            await asyncio.sleep(0.01)
    change_went_first = change.done()
    go.set()
    paid, changed = await payment, await change
    assert not change_went_first  # the payment holds the vendor while it pays
    assert paid["ok"], paid["error"]
    assert changed["ok"], changed["error"]

    payee = await one(database, "SELECT payee_account FROM payments WHERE invoice_id = 'INV-1001'")
    master = await one(database, "SELECT remit_bank_account FROM vendors WHERE vendor_id='V-001'")
    assert master == NEW
    # Serial: the payment paid the account its approval covers, then the change committed.
    # (A change that committed first would have had the payment refused, as approved for
    # another account: test_payee_bound_to_approval.py.)
    assert payee == OLD
