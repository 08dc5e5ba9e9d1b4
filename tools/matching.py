"""Deterministic three-way match: purchase order vs goods received vs invoice.

`compute_three_way_match` is a pure function over plain records, so it is exhaustively
unit-testable; `load_match_inputs` reads those records from Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict

# Exceptions that stop an invoice from being staged or paid at all.
BLOCKING = frozenset(
    {
        "invoice_not_found",
        "no_po_reference",
        "po_not_found",
        "po_not_open",
        "vendor_mismatch",
        "currency_mismatch",
        "quantity_over_received",
        "quantity_over_ordered",
        "unmatched_line",
        "line_amount_mismatch",
        "total_mismatch",
        "duplicate_invoice",
        "already_paid",
        "invoice_rejected",
        "vendor_blocked",
    }
)
# Exceptions a reviewer may override with an explicit approval.
REVIEWABLE = frozenset({"price_variance_over_tolerance", "bank_account_mismatch"})


@dataclass(frozen=True)
class InvoiceLineRec:
    """An invoice line as stored."""

    line_no: int
    po_line_no: int | None
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal


@dataclass(frozen=True)
class InvoiceRec:
    """An invoice header and lines as stored."""

    invoice_id: str
    vendor_id: str
    invoice_number: str
    po_number: str | None
    invoice_date: date
    currency: str
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    bank_account: str | None
    status: str
    lines: tuple[InvoiceLineRec, ...]
    due_date: date | None = None


@dataclass(frozen=True)
class PoLineRec:
    """A purchase-order line with what has been received and billed against it.

    ``billed_elsewhere`` is what other invoices we accepted (staged, scheduled or paid)
    bill on the line: goods are paid for once, whichever invoice asks.
    """

    line_no: int
    description: str
    quantity: Decimal
    unit_price: Decimal
    received: Decimal
    billed_elsewhere: Decimal = Decimal("0")


@dataclass(frozen=True)
class PurchaseOrderRec:
    """A purchase order with received quantities summed per line."""

    po_number: str
    vendor_id: str
    currency: str
    status: str
    lines: tuple[PoLineRec, ...]


@dataclass(frozen=True)
class VendorRec:
    """The vendor master fields the match needs."""

    vendor_id: str
    currency: str
    remit_bank_account: str
    status: str


@dataclass(frozen=True)
class MatchInputs:
    """Everything the match looks at, read in one transaction."""

    invoice: InvoiceRec
    vendor: VendorRec
    purchase_order: PurchaseOrderRec | None
    duplicates: tuple[str, ...]
    live_payments: tuple[str, ...]


@dataclass(frozen=True)
class Tolerances:
    """Limits from the run context."""

    price_pct: Decimal
    amount_abs: Decimal
    approval_threshold: Decimal
    dual_control_threshold: Decimal


class MatchException(BaseModel):
    """One reason the invoice does not simply match."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str
    detail: str
    blocking: bool
    line_no: int | None = None


class LineComparison(BaseModel):
    """One invoice line against its PO line and receipts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    line_no: int
    po_line_no: int | None
    description: str
    billed_quantity: str
    ordered_quantity: str | None
    received_quantity: str | None
    billed_unit_price: str
    po_unit_price: str | None
    price_variance_pct: str | None


class MatchResult(BaseModel):
    """Outcome of the three-way match.

    ``verdict`` is ``match`` (pay-able), ``review`` (pay-able only with a reviewer's
    override) or ``exception`` (not pay-able; route to people).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    invoice_id: str
    vendor_id: str
    po_number: str | None
    currency: str
    invoice_total: str
    matched_total: str
    verdict: Literal["match", "review", "exception"]
    exceptions: list[MatchException]
    notices: list[str]
    lines: list[LineComparison]
    approval_flags: list[str]


def _pct(numerator: Decimal, denominator: Decimal) -> Decimal:
    return (numerator / denominator * 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _billed(line: InvoiceLineRec, po_line: PoLineRec, total_billed: Decimal) -> str:
    """What a line bills, with the PO line's total when other lines or invoices add to it."""
    said = f"Line {line.line_no}: billed {line.quantity}"
    if total_billed == line.quantity:
        return said
    said += f" ({total_billed} on PO line {po_line.line_no} in all"
    if po_line.billed_elsewhere:
        said += f", {po_line.billed_elsewhere} by invoices already accepted"
    return said + ")"


def compute_three_way_match(inputs: MatchInputs, tol: Tolerances) -> MatchResult:
    """Compare invoice, PO and receipts; every finding is named, none is dropped."""
    inv = inputs.invoice
    po = inputs.purchase_order
    found: list[MatchException] = []
    notices: list[str] = []

    def add(code: str, detail: str, line_no: int | None = None) -> None:
        found.append(
            MatchException(code=code, detail=detail, blocking=code in BLOCKING, line_no=line_no)
        )

    if inputs.vendor.status != "active":
        add("vendor_blocked", f"Vendor {inputs.vendor.vendor_id} is {inputs.vendor.status}.")
    if inv.po_number is None:
        add("no_po_reference", "The invoice cites no purchase order.")
    elif po is None:
        add("po_not_found", f"The invoice cites {inv.po_number}, which does not exist.")
    if po is not None:
        if po.status != "open":
            add("po_not_open", f"{po.po_number} is {po.status}; only an open PO is invoiced.")
        if po.vendor_id != inv.vendor_id:
            add(
                "vendor_mismatch",
                f"{po.po_number} belongs to {po.vendor_id}, the invoice to {inv.vendor_id}.",
            )
        if po.currency != inv.currency:
            add(
                "currency_mismatch",
                f"The invoice is in {inv.currency}, {po.po_number} in {po.currency}.",
            )
    if inputs.duplicates:
        add(
            "duplicate_invoice",
            f"Vendor invoice number {inv.invoice_number} was already received as "
            f"{', '.join(inputs.duplicates)}.",
        )
    if inputs.live_payments or inv.status == "paid":
        paid = ", ".join(inputs.live_payments) or "a payment recorded on the invoice"
        add("already_paid", f"The invoice is already paid or scheduled ({paid}).")
    if inv.status == "rejected":
        add("invoice_rejected", "The invoice was rejected; a rejected invoice is not paid.")
    if inv.bank_account and inv.bank_account != inputs.vendor.remit_bank_account:
        add(
            "bank_account_mismatch",
            f"The invoice asks for payment to account ending {inv.bank_account[-4:]}, the "
            f"vendor master has account ending {inputs.vendor.remit_bank_account[-4:]}. "
            "Payment, if any, goes to the vendor master account only.",
        )

    po_lines = {line.line_no: line for line in po.lines} if po else {}
    comparisons: list[LineComparison] = []
    matched_total = Decimal("0")
    # What this invoice bills per PO line so far: two lines citing one PO line add up.
    billed_here: dict[int, Decimal] = {}
    for line in inv.lines:
        po_line = po_lines.get(line.po_line_no) if line.po_line_no is not None else None
        variance: Decimal | None = None
        if abs(line.quantity * line.unit_price - line.amount) > tol.amount_abs:
            add(
                "line_amount_mismatch",
                f"Line {line.line_no}: {line.quantity} x {line.unit_price} is "
                f"{line.quantity * line.unit_price}, the line says {line.amount}.",
                line.line_no,
            )
        if po is not None and po_line is None:
            add(
                "unmatched_line",
                f"Invoice line {line.line_no} ({line.description}) has no matching PO line.",
                line.line_no,
            )
        if po_line is not None:
            difference = line.unit_price - po_line.unit_price
            if po_line.unit_price > 0:
                variance = _pct(difference, po_line.unit_price)
            # Compared unrounded: 2.0049% is over a 2% tolerance, though it shows as 2.00.
            if abs(difference) > po_line.unit_price * tol.price_pct:
                shown_variance = f"{variance:+}%" if variance is not None else "PO price 0"
                add(
                    "price_variance_over_tolerance",
                    f"Line {line.line_no}: billed {line.unit_price} vs PO {po_line.unit_price}"
                    f" ({shown_variance}), tolerance {tol.price_pct * 100:.2f}%.",
                    line.line_no,
                )
            elif variance is not None and variance != 0:
                notices.append(
                    f"Line {line.line_no}: price variance {variance:+}% within tolerance."
                )
            billed = billed_here.get(po_line.line_no, Decimal("0")) + line.quantity
            billed_here[po_line.line_no] = billed
            # Quantities billed on this PO line by this invoice so far, and by others.
            total_billed = billed + po_line.billed_elsewhere
            if total_billed > po_line.quantity:
                add(
                    "quantity_over_ordered",
                    f"{_billed(line, po_line, total_billed)}, ordered {po_line.quantity}.",
                    line.line_no,
                )
            elif total_billed > po_line.received:
                add(
                    "quantity_over_received",
                    f"{_billed(line, po_line, total_billed)}, received {po_line.received}.",
                    line.line_no,
                )
            matched_total += (min(line.quantity, po_line.received) * po_line.unit_price).quantize(
                Decimal("0.01"), rounding=ROUND_HALF_UP
            )
        comparisons.append(
            LineComparison(
                line_no=line.line_no,
                po_line_no=line.po_line_no,
                description=line.description,
                billed_quantity=str(line.quantity),
                ordered_quantity=str(po_line.quantity) if po_line else None,
                received_quantity=str(po_line.received) if po_line else None,
                billed_unit_price=str(line.unit_price),
                po_unit_price=str(po_line.unit_price) if po_line else None,
                price_variance_pct=str(variance) if variance is not None else None,
            )
        )

    lines_sum = sum((line.amount for line in inv.lines), Decimal("0"))
    if abs(lines_sum + inv.tax - inv.total) > tol.amount_abs:
        add(
            "total_mismatch",
            f"Lines {lines_sum} + tax {inv.tax} = {lines_sum + inv.tax}, "
            f"invoice total {inv.total}.",
        )

    flags = []
    if inv.total > tol.dual_control_threshold:
        flags.append("over_dual_control_threshold")
    if inv.total > tol.approval_threshold:
        flags.append("over_approval_threshold")

    if any(e.blocking for e in found):
        verdict: Literal["match", "review", "exception"] = "exception"
    elif found:
        verdict = "review"
    else:
        verdict = "match"
    return MatchResult(
        invoice_id=inv.invoice_id,
        vendor_id=inv.vendor_id,
        po_number=inv.po_number,
        currency=inv.currency,
        invoice_total=str(inv.total),
        matched_total=str(matched_total + inv.tax),
        verdict=verdict,
        exceptions=found,
        notices=notices,
        lines=comparisons,
        approval_flags=flags,
    )


_MATCH_INPUTS = """
SELECT i.invoice_id, i.vendor_id, i.invoice_number, i.po_number, i.invoice_date, i.currency,
       i.subtotal, i.tax, i.total, i.bank_account, i.status, i.due_date,
       v.currency AS vendor_currency, v.remit_bank_account, v.status AS vendor_status,
       p.po_number AS po_found, p.vendor_id AS po_vendor_id, p.currency AS po_currency,
       p.status AS po_status,
       COALESCE((SELECT jsonb_agg(jsonb_build_array(l.line_no, l.po_line_no, l.description,
                                                    l.quantity::text, l.unit_price::text,
                                                    l.amount::text) ORDER BY l.line_no)
                 FROM invoice_lines l WHERE l.invoice_id = i.invoice_id), '[]') AS lines,
       COALESCE((SELECT jsonb_agg(jsonb_build_array(
                            pl.line_no, pl.description, pl.quantity::text, pl.unit_price::text,
                            (SELECT COALESCE(SUM(rl.quantity_received), 0)
                             FROM goods_receipts g
                             JOIN receipt_lines rl ON rl.receipt_id = g.receipt_id
                             WHERE g.po_number = pl.po_number AND rl.po_line_no = pl.line_no
                            )::text,
                            (SELECT COALESCE(SUM(ol.quantity), 0)
                             FROM invoices o JOIN invoice_lines ol ON ol.invoice_id = o.invoice_id
                             WHERE o.po_number = pl.po_number AND ol.po_line_no = pl.line_no
                               AND o.invoice_id <> i.invoice_id
                               AND o.status IN ('staged', 'scheduled', 'paid')
                            )::text) ORDER BY pl.line_no)
                 FROM po_lines pl WHERE pl.po_number = p.po_number), '[]') AS po_lines,
       -- Another invoice with the same vendor number, written in any case or grouping, is
       -- an original if it came earlier or if we already accepted it (staged, scheduled,
       -- paid): the first of a pair stays payable, and a backdated copy of a paid one is not.
       ARRAY(SELECT d.invoice_id FROM invoices d
             WHERE d.vendor_id = i.vendor_id
               AND upper(regexp_replace(d.invoice_number, '[[:space:]._/-]', '', 'g'))
                   = upper(regexp_replace(i.invoice_number, '[[:space:]._/-]', '', 'g'))
               AND d.invoice_id <> i.invoice_id
               AND ((d.invoice_date, d.invoice_id) < (i.invoice_date, i.invoice_id)
                    OR d.status IN ('staged', 'scheduled', 'paid')
                    OR EXISTS (SELECT 1 FROM payments dp
                               WHERE dp.invoice_id = d.invoice_id AND dp.status <> 'void'))
             ORDER BY d.invoice_id) AS duplicates,
       ARRAY(SELECT pay.payment_id FROM payments pay
             WHERE pay.invoice_id = i.invoice_id AND pay.status <> 'void'
             ORDER BY pay.payment_id) AS live_payments
FROM invoices i
JOIN vendors v ON v.vendor_id = i.vendor_id  -- invoices.vendor_id is a foreign key
LEFT JOIN purchase_orders p ON p.po_number = i.po_number
WHERE i.invoice_id = %s
"""
"""Everything a match needs, in one statement: it runs twice per staged invoice (the match
tool, and the gate's read under the invoice's lock, which the approval check and the handler
share). Quantities and prices travel as text inside the JSON, so they arrive as exact
decimals."""


async def load_match_inputs(
    conn: psycopg.AsyncConnection[dict[str, Any]], invoice_id: str
) -> MatchInputs | None:
    """Read the invoice, its vendor, PO, receipts, duplicates and payments; None if unknown."""
    cur = await conn.execute(_MATCH_INPUTS, (invoice_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    invoice = InvoiceRec(
        row["invoice_id"],
        row["vendor_id"],
        row["invoice_number"],
        row["po_number"],
        row["invoice_date"],
        row["currency"].strip(),
        row["subtotal"],
        row["tax"],
        row["total"],
        row["bank_account"],
        row["status"],
        tuple(
            InvoiceLineRec(line_no, po_line_no, text, Decimal(qty), Decimal(price), Decimal(amt))
            for line_no, po_line_no, text, qty, price, amt in row["lines"]
        ),
        row["due_date"],
    )
    vendor = VendorRec(
        row["vendor_id"],
        row["vendor_currency"].strip(),
        row["remit_bank_account"],
        row["vendor_status"],
    )
    purchase_order = None
    if row["po_found"] is not None:
        purchase_order = PurchaseOrderRec(
            row["po_found"],
            row["po_vendor_id"],
            row["po_currency"].strip(),
            row["po_status"],
            tuple(
                PoLineRec(
                    line_no, text, Decimal(qty), Decimal(price), Decimal(received), Decimal(other)
                )
                for line_no, text, qty, price, received, other in row["po_lines"]
            ),
        )
    return MatchInputs(
        invoice, vendor, purchase_order, tuple(row["duplicates"]), tuple(row["live_payments"])
    )


def tolerances_from(ctx: Any) -> Tolerances:
    """Tolerances from a `runtime.context.Context`."""
    return Tolerances(
        price_pct=ctx.price_tolerance,
        amount_abs=ctx.amount_tolerance_abs,
        approval_threshold=ctx.approval_limit,
        dual_control_threshold=ctx.dual_threshold,
    )
