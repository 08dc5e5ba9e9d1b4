"""The three-way match as a pure function: every exception class, and only when due."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from tools.matching import (
    InvoiceLineRec,
    InvoiceRec,
    MatchInputs,
    PoLineRec,
    PurchaseOrderRec,
    Tolerances,
    VendorRec,
    compute_three_way_match,
)

D = Decimal
TOL = Tolerances(
    price_pct=D("0.02"),
    amount_abs=D("1.00"),
    approval_threshold=D("10000"),
    dual_control_threshold=D("50000"),
)
ACCOUNT = "DE89370400440532013000"


def inputs(
    *,
    price: str = "10.00",
    qty: str = "100",
    received: str = "100",
    ordered: str = "100",
    total: str | None = None,
    **changes: object,
) -> MatchInputs:
    amount = (D(price) * D(qty)).quantize(D("0.01"))
    invoice = InvoiceRec(
        invoice_id="INV-1",
        vendor_id="V-1",
        invoice_number="A-1",
        po_number="PO-1",
        invoice_date=date(2026, 3, 1),
        currency="USD",
        subtotal=amount,
        tax=D("0"),
        total=D(total) if total else amount,
        bank_account=ACCOUNT,
        status="received",
        lines=(InvoiceLineRec(1, 1, "widget", D(qty), D(price), amount),),
    )
    po = PurchaseOrderRec(
        "PO-1", "V-1", "USD", "open", (PoLineRec(1, "widget", D(ordered), D("10.00"), D(received)),)
    )
    vendor = VendorRec("V-1", "USD", ACCOUNT, "active")
    base = MatchInputs(
        invoice=invoice, vendor=vendor, purchase_order=po, duplicates=(), live_payments=()
    )
    invoice_changes = {k: v for k, v in changes.items() if k in InvoiceRec.__annotations__}
    other = {k: v for k, v in changes.items() if k not in invoice_changes}
    return replace(base, invoice=replace(invoice, **invoice_changes), **other)  # type: ignore[arg-type]


def codes(result: object) -> set[str]:
    return {e.code for e in result.exceptions}  # type: ignore[attr-defined]


def test_clean_match() -> None:
    result = compute_three_way_match(inputs(), TOL)
    assert result.verdict == "match"
    assert result.exceptions == [] and result.notices == []
    assert result.matched_total == "1000.00"
    assert result.lines[0].price_variance_pct == "0.00"


def test_price_variance_within_tolerance_is_a_notice_not_an_exception() -> None:
    result = compute_three_way_match(inputs(price="10.15"), TOL)
    assert result.verdict == "match"
    assert result.exceptions == []
    assert "+1.50%" in result.notices[0]


def test_price_variance_over_tolerance_needs_review() -> None:
    result = compute_three_way_match(inputs(price="10.50"), TOL)
    assert result.verdict == "review"
    assert codes(result) == {"price_variance_over_tolerance"}
    assert result.exceptions[0].blocking is False


def test_exactly_at_tolerance_passes() -> None:
    assert compute_three_way_match(inputs(price="10.20"), TOL).verdict == "match"


def test_billed_over_received_blocks() -> None:
    result = compute_three_way_match(inputs(received="60"), TOL)
    assert result.verdict == "exception"
    assert codes(result) == {"quantity_over_received"}
    assert result.matched_total == "600.00"


def test_billed_over_ordered_blocks() -> None:
    result = compute_three_way_match(inputs(qty="120", received="120"), TOL)
    assert codes(result) == {"quantity_over_ordered"}


def test_unknown_po_blocks() -> None:
    result = compute_three_way_match(inputs(purchase_order=None), TOL)
    assert result.verdict == "exception" and codes(result) == {"po_not_found"}


def test_missing_po_reference_blocks() -> None:
    result = compute_three_way_match(inputs(po_number=None, purchase_order=None), TOL)
    assert codes(result) == {"no_po_reference"}


def test_currency_mismatch_blocks() -> None:
    result = compute_three_way_match(inputs(currency="EUR"), TOL)
    assert codes(result) == {"currency_mismatch"}


def test_po_of_another_vendor_blocks() -> None:
    result = compute_three_way_match(inputs(vendor_id="V-2"), TOL)
    assert "vendor_mismatch" in codes(result)


def test_duplicate_invoice_blocks() -> None:
    result = compute_three_way_match(inputs(duplicates=("INV-0",)), TOL)
    assert codes(result) == {"duplicate_invoice"}
    assert "INV-0" in result.exceptions[0].detail


def test_already_paid_blocks() -> None:
    assert codes(compute_three_way_match(inputs(live_payments=("PAY-1",)), TOL)) == {"already_paid"}
    assert codes(compute_three_way_match(inputs(status="paid"), TOL)) == {"already_paid"}


def test_a_rejected_invoice_blocks() -> None:
    assert codes(compute_three_way_match(inputs(status="rejected"), TOL)) == {"invoice_rejected"}


def test_bank_account_differing_from_master_needs_review_and_is_masked() -> None:
    result = compute_three_way_match(inputs(bank_account="GB33BUKB20201555555555"), TOL)
    assert result.verdict == "review"
    assert codes(result) == {"bank_account_mismatch"}
    detail = result.exceptions[0].detail
    assert "5555" in detail and "GB33BUKB20201555555555" not in detail


def test_total_that_does_not_add_up_blocks() -> None:
    result = compute_three_way_match(inputs(total="1500.00"), TOL)
    assert codes(result) == {"total_mismatch"}


def test_blocked_vendor_blocks() -> None:
    vendor = VendorRec("V-1", "USD", ACCOUNT, "blocked")
    assert "vendor_blocked" in codes(compute_three_way_match(inputs(vendor=vendor), TOL))


@pytest.mark.parametrize(
    "qty, flags",
    [
        ("999", []),
        ("1001", ["over_approval_threshold"]),
        ("5001", ["over_dual_control_threshold", "over_approval_threshold"]),
    ],
)
def test_threshold_flags(qty: str, flags: list[str]) -> None:
    result = compute_three_way_match(inputs(qty=qty, received=qty, ordered=qty), TOL)
    assert result.verdict == "match"
    assert result.approval_flags == flags


def test_several_problems_are_all_reported() -> None:
    result = compute_three_way_match(
        inputs(price="11.00", received="50", bank_account="XX00OTHER00000000"), TOL
    )
    assert codes(result) == {
        "price_variance_over_tolerance",
        "quantity_over_received",
        "bank_account_mismatch",
    }
    assert result.verdict == "exception"


# --- what an invoice cannot get past (each once passed as a clean match) -------------------


def test_a_line_amount_that_is_not_quantity_times_price_blocks() -> None:
    """10 x 10.00 billed as 10,000.00 (lines and total agree with each other)."""
    base = inputs(qty="10", ordered="10", received="10")
    line = replace(base.invoice.lines[0], amount=D("10000.00"))
    invoice = replace(base.invoice, lines=(line,), subtotal=D("10000.00"), total=D("10000.00"))
    result = compute_three_way_match(replace(base, invoice=invoice), TOL)
    assert (result.verdict, codes(result)) == ("exception", {"line_amount_mismatch"})
    # Within the amount tolerance, rounding of a line is not a mismatch.
    line = replace(base.invoice.lines[0], quantity=D("3"), unit_price=D("33.333"))
    line = replace(line, amount=D("100.00"))
    invoice = replace(base.invoice, lines=(line,), subtotal=D("100.00"), total=D("100.00"))
    assert "line_amount_mismatch" not in codes(
        compute_three_way_match(replace(base, invoice=invoice), TOL)
    )


def test_two_lines_citing_one_po_line_are_billed_together() -> None:
    """Ordered and received 100; billed 100 on each of two lines citing PO line 1."""
    base = inputs()
    second = InvoiceLineRec(2, 1, "widget again", D("100"), D("10.00"), D("1000.00"))
    invoice = replace(
        base.invoice,
        lines=(base.invoice.lines[0], second),
        subtotal=D("2000.00"),
        total=D("2000.00"),
    )
    result = compute_three_way_match(replace(base, invoice=invoice), TOL)
    assert (result.verdict, codes(result)) == ("exception", {"quantity_over_ordered"})
    assert [e.line_no for e in result.exceptions] == [2]


def test_goods_billed_by_an_invoice_already_accepted_are_not_billed_again() -> None:
    base = inputs(qty="60")
    assert base.purchase_order is not None
    billed = replace(base.purchase_order.lines[0], billed_elsewhere=D("50"))
    po = replace(base.purchase_order, lines=(billed,))
    result = compute_three_way_match(replace(base, purchase_order=po), TOL)
    assert (result.verdict, codes(result)) == ("exception", {"quantity_over_ordered"})
    assert "50 by invoices already accepted" in result.exceptions[0].detail
    # What is left of the line can still be billed.
    fits = compute_three_way_match(replace(inputs(qty="50"), purchase_order=po), TOL)
    assert fits.verdict == "match"


@pytest.mark.parametrize("status", ["closed", "cancelled"])
def test_an_invoice_on_a_po_that_is_not_open_blocks(status: str) -> None:
    base = inputs()
    assert base.purchase_order is not None
    po = replace(base.purchase_order, status=status)
    result = compute_three_way_match(replace(base, purchase_order=po), TOL)
    assert (result.verdict, codes(result)) == ("exception", {"po_not_open"})


def test_a_price_billed_on_a_free_po_line_is_a_variance() -> None:
    base = inputs(price="500.00", qty="10", ordered="10", received="10")
    assert base.purchase_order is not None
    po = replace(base.purchase_order, lines=(PoLineRec(1, "widget", D("10"), D("0.00"), D("10")),))
    result = compute_three_way_match(replace(base, purchase_order=po), TOL)
    assert (result.verdict, codes(result)) == ("review", {"price_variance_over_tolerance"})
    assert "PO price 0" in result.exceptions[0].detail


def test_a_price_variance_is_compared_before_it_is_rounded() -> None:
    """PO 10,000.00 a unit, 2% tolerance: 10,200.49 is 2.0049% over (shown as 2.00)."""
    po_line = PoLineRec(1, "widget", D("1000"), D("10000.00"), D("1000"))
    for price, over in (("10200.49", True), ("10200.00", False)):
        base = inputs(price=price, qty="1000", ordered="1000", received="1000")
        assert base.purchase_order is not None
        po = replace(base.purchase_order, lines=(po_line,))
        result = compute_three_way_match(replace(base, purchase_order=po), TOL)
        assert ("price_variance_over_tolerance" in codes(result)) is over, price
        assert result.lines[0].price_variance_pct == "2.00"
