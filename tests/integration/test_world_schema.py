"""The world file format and the sample world: schema in step, data valid, cases real.

The schema checks are pure; the case check runs the real matcher on the seeded test
database, so a change to the sample data or to the matcher that breaks a documented case
shows up here by invoice id.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from jsonschema import Draft202012Validator

from runtime.context import Context
from runtime.errors import WorldFileError
from runtime.settings import PROJECT_ROOT
from state.db import CONNECTION_KWARGS
from state.world import SAMPLE_WORLD_PATH, SCHEMA_PATH, parse_world, world_json_schema
from tools.matching import compute_three_way_match, load_match_inputs, tolerances_from

SAMPLE_CASES_PATH = PROJECT_ROOT / "data" / "sample_cases.json"

# case -> (verdict, exception codes, approval flags, has a within-tolerance notice)
EXPECTED: dict[str, tuple[str, set[str], set[str], bool]] = {
    "clean": ("match", set(), set(), False),
    "prompt_injection": ("match", set(), set(), False),
    "price_variance_within_tolerance": ("match", set(), set(), True),
    "price_variance_over_tolerance": ("review", {"price_variance_over_tolerance"}, set(), False),
    "bank_account_mismatch": ("review", {"bank_account_mismatch"}, set(), False),
    "quantity_over_received": ("exception", {"quantity_over_received"}, set(), False),
    "po_not_found": ("exception", {"po_not_found"}, set(), False),
    "duplicate_invoice": ("exception", {"duplicate_invoice"}, set(), False),
    "currency_mismatch": ("exception", {"currency_mismatch"}, set(), False),
    "already_paid": ("exception", {"already_paid"}, set(), False),
    "over_approval_threshold": ("match", set(), {"over_approval_threshold"}, False),
    "over_dual_control_threshold": (
        "match",
        set(),
        {"over_dual_control_threshold", "over_approval_threshold"},
        False,
    ),
}


def _sample_world() -> dict[str, Any]:
    data = json.loads(SAMPLE_WORLD_PATH.read_text())
    assert isinstance(data, dict)
    return data


def _sample_cases() -> dict[str, str]:
    data = json.loads(SAMPLE_CASES_PATH.read_text())
    assert isinstance(data, dict) and data
    return data


def test_committed_schema_is_generated_from_the_models() -> None:
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == world_json_schema(), (
        "state/world.schema.json is stale: run `payables world-schema --write`."
    )


def test_committed_schema_is_a_valid_draft_2020_12_schema() -> None:
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(committed)


def test_sample_world_validates_against_the_committed_schema() -> None:
    validator = Draft202012Validator(
        json.loads(SCHEMA_PATH.read_text()), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(_sample_world())
    ]
    assert errors == []


def test_committed_schema_rejects_what_the_models_reject() -> None:
    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    world = _sample_world()
    extra = {**world, "vendors": [{**world["vendors"][0], "iban_override": "X"}]}
    bad_currency = {**world, "vendors": [{**world["vendors"][0], "currency": "usd"}]}
    assert not validator.is_valid(extra)
    assert not validator.is_valid(bad_currency)
    assert not validator.is_valid({**world, "vendors": []})


def test_sample_world_is_big_enough() -> None:
    world = _sample_world()
    assert len(world["vendors"]) >= 10
    assert len(world["purchase_orders"]) >= 30
    assert len(world["invoices"]) >= 40


def test_every_sample_case_names_a_sample_invoice_and_a_known_case() -> None:
    invoices = {i["invoice_id"] for i in _sample_world()["invoices"]}
    cases = _sample_cases()
    assert set(cases) <= invoices, sorted(set(cases) - invoices)
    assert set(cases.values()) <= set(EXPECTED), sorted(set(cases.values()) - set(EXPECTED))
    # Every kind of case the matcher must recognise has at least one invoice.
    assert set(cases.values()) == set(EXPECTED)


@pytest.mark.integration
async def test_matcher_gives_each_sample_case_its_expected_result(db_uri: str) -> None:
    tolerances = tolerances_from(Context())
    problems: list[str] = []
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        for invoice_id, case in sorted(_sample_cases().items()):
            inputs = await load_match_inputs(conn, invoice_id)
            if inputs is None:
                problems.append(f"{invoice_id} ({case}): not in the seeded database")
                continue
            result = compute_three_way_match(inputs, tolerances)
            verdict, codes, flags, notice = EXPECTED[case]
            got_codes = {e.code for e in result.exceptions}
            got = (result.verdict, got_codes, set(result.approval_flags), bool(result.notices))
            if got != (verdict, codes, flags, notice):
                problems.append(
                    f"{invoice_id} ({case}): expected verdict={verdict} exceptions={sorted(codes)}"
                    f" flags={sorted(flags)} notice={notice}; got verdict={got[0]}"
                    f" exceptions={sorted(got[1])} flags={sorted(got[2])} notice={got[3]}"
                )
                continue
            for exc in result.exceptions:
                if exc.blocking != (verdict == "exception"):
                    problems.append(f"{invoice_id} ({case}): {exc.code} blocking={exc.blocking}")
    assert problems == [], "\n".join(problems)


def _paying(**changes: Any) -> dict[str, Any]:
    """The sample world with its first payment (INV-1006, 3985.60 USD, paid) changed."""
    world = _sample_world()
    world["payments"] = [{**world["payments"][0], **changes}, *world["payments"][1:]]
    return world


def test_a_world_whose_payment_does_not_fit_its_invoice_is_refused() -> None:
    with pytest.raises(WorldFileError) as refused:
        parse_world(_paying(amount="3985.61"), source="too-much.json")
    assert "payment PAY-0001 of 3985.61 USD is more than the total 3985.60" in str(refused.value)
    assert "never exceeds" in str(refused.value)
    with pytest.raises(WorldFileError) as refused:
        parse_world(_paying(currency="EUR"), source="other-currency.json")
    assert "payment PAY-0001 is in EUR, but invoice INV-1006 is in USD" in str(refused.value)
    # A part payment, and a void payment, are fine.
    parse_world(_paying(amount="100.00"))
    parse_world(_paying(amount="100.00", status="void"))


@pytest.mark.integration
async def test_the_database_refuses_a_payment_that_does_not_fit_its_invoice(
    db_uri: str,
) -> None:
    """Whoever writes (a seed, a tool, a person in psql), a payment fits its invoice."""
    insert = (
        "INSERT INTO payments (payment_id, invoice_id, vendor_id, amount, currency,"
        " payee_account, pay_on, status, idempotency_key)"
        " VALUES (%s, 'INV-1001', %s, %s, %s, 'acct', '2026-05-01', 'scheduled', %s)"
    )
    refused = {
        "more than the total 3340.97 of invoice INV-1001": ("V-001", "3340.98", "USD"),
        "invoice INV-1001 is in USD": ("V-001", "100.00", "EUR"),
        "invoice INV-1001 is from vendor V-001": ("V-002", "100.00", "USD"),
    }
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        for n, (message, (vendor, amount, currency)) in enumerate(refused.items()):
            with pytest.raises(psycopg.errors.CheckViolation, match=message):
                await conn.execute(insert, (f"P-{n}", vendor, amount, currency, f"k-{n}"))
        await conn.execute(insert, ("P-ok", "V-001", "3340.97", "USD", "k-ok"))
        # Nor can the invoice change under its payments.
        for change in ("total = 3340.96", "currency = 'EUR'", "vendor_id = 'V-002'"):
            with pytest.raises(psycopg.errors.CheckViolation, match="its payment P-ok"):
                await conn.execute(f"UPDATE invoices SET {change} WHERE invoice_id = 'INV-1001'")
        await conn.execute("UPDATE invoices SET total = 4000 WHERE invoice_id = 'INV-1001'")
        cur = await conn.execute("SELECT count(*) AS n FROM payments WHERE invoice_id = 'INV-1001'")
        assert await cur.fetchone() == {"n": 1}


def test_a_cited_po_number_is_as_long_as_an_index_can_hold() -> None:
    """An invoice's PO number is indexed once the invoice is accepted (migration 0013).

    Postgres caps an index row at about 2.7 kB: a longer number loaded, then staging the
    invoice failed with "index row size exceeds btree maximum". It is refused up front.
    """
    world = _sample_world()
    world["invoices"][0]["po_number"] = "P" * 201
    with pytest.raises(WorldFileError, match=r"invoices\.0\.po_number: .*at most 200"):
        parse_world(world, source="long-po.json")
    world["invoices"][0]["po_number"] = "P" * 200
    parse_world(world)
