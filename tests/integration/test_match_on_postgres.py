"""The three-way match's reads on Postgres: what other invoices already took.

INV-1006 (vendor V-005's invoice CJS-7710, dated 2026-01-29, on PO-2006) is paid in the
sample world and billed everything PO-2006 received. Each case below once matched cleanly.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.context import Context
from state.db import Database
from tools.gate import ToolGate, ToolOutcome

pytestmark = pytest.mark.integration

PO_2006_LINES = [(1, 1, "2", "920.00", "1840.00"), (2, 2, "3", "640.00", "1920.00")]


async def call(database: Database, tool: str, invoice_id: str, step_id: str) -> ToolOutcome:
    """``tool`` on ``invoice_id`` through the gate, on a clerk's thread that asked about it."""
    async with database.connection() as conn:
        await conn.execute(
            "INSERT INTO runs (thread_id, request, requester, tenant, status)"
            " VALUES ('t', %s, 'clerk', 'default', 'running') ON CONFLICT DO NOTHING",
            (f"Validate {invoice_id}",),
        )
    return await ToolGate(database).call(
        thread_id="t",
        step_id=step_id,
        route="invoice_processing",
        requester="clerk",
        tool=tool,
        args={"invoice_id": invoice_id},
        run=Context(),
    )


async def add_invoice(
    database: Database,
    invoice_id: str,
    *,
    vendor_id: str = "V-005",
    number: str,
    po: str = "PO-2006",
    invoice_date: str,
    lines: list[tuple[int, int, str, str, str]] = PO_2006_LINES,
) -> None:
    total = sum(float(amount) for *_, amount in lines)
    async with database.connection() as conn:
        await conn.execute(
            "INSERT INTO invoices (invoice_id, vendor_id, invoice_number, po_number,"
            " invoice_date, currency, subtotal, tax, total)"
            " VALUES (%s, %s, %s, %s, %s, 'USD', %s, 0, %s)",
            (invoice_id, vendor_id, number, po, invoice_date, total, total),
        )
        for line_no, po_line_no, qty, price, amount in lines:
            await conn.execute(
                "INSERT INTO invoice_lines (invoice_id, line_no, po_line_no, description,"
                " quantity, unit_price, amount) VALUES (%s, %s, %s, 'item', %s, %s, %s)",
                (invoice_id, line_no, po_line_no, qty, price, amount),
            )


async def match_codes(database: Database, invoice_id: str) -> dict[str, Any]:
    outcome = await call(database, "compute_match", invoice_id, "p1s1")
    assert outcome["result"] is not None, outcome["error"]
    result = outcome["result"]
    return {"verdict": result["verdict"], "codes": {e["code"] for e in result["exceptions"]}}


@pytest.mark.parametrize(
    ("number", "invoice_date"),
    [
        ("CJS-7710", "2026-01-20"),  # a copy dated before the paid original
        ("cjs 7710 ", "2026-02-20"),  # the same number in another case and grouping
    ],
)
async def test_a_copy_of_a_paid_invoice_is_a_duplicate_and_is_not_staged(
    database: Database, number: str, invoice_date: str
) -> None:
    await add_invoice(database, "INV-1099", number=number, invoice_date=invoice_date)
    found = await match_codes(database, "INV-1099")
    assert found["verdict"] == "exception" and "duplicate_invoice" in found["codes"], found
    staged = await call(database, "stage_invoice", "INV-1099", "p2s1")
    assert staged["error"] is not None and staged["error"]["code"] == "match_exceptions"


async def test_goods_an_accepted_invoice_billed_are_not_billed_again(database: Database) -> None:
    await add_invoice(database, "INV-1099", number="CJS-7799", invoice_date="2026-02-20")
    found = await match_codes(database, "INV-1099")
    assert found == {"verdict": "exception", "codes": {"quantity_over_ordered"}}


async def test_a_line_billed_at_ten_times_its_quantity_and_price_is_not_staged(
    database: Database,
) -> None:
    """PO-2046 line 1: 13 received at 104.00; billed 13 x 104.00 as 13,520.00."""
    await add_invoice(
        database,
        "INV-1098",
        vendor_id="V-010",
        number="GFM-9999",
        po="PO-2046",
        invoice_date="2026-04-30",
        lines=[(1, 1, "13", "104.00", "13520.00")],
    )
    found = await match_codes(database, "INV-1098")
    assert found == {"verdict": "exception", "codes": {"line_amount_mismatch"}}
    staged = await call(database, "stage_invoice", "INV-1098", "p2s1")
    assert staged["error"] is not None and staged["error"]["code"] == "match_exceptions"
