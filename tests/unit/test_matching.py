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
