"""The audit chain on a real Postgres: what a run records, tampering, concurrency, masking.

Tampering goes around the append-only triggers the only way the database allows, as the
table owner: `ALTER TABLE audit_events DISABLE TRIGGER` inside the tampering transaction.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import psycopg
import pytest
from langgraph.types import Command

from guards.redaction import find_unmasked
from runtime.agent import Agent, open_agent
from runtime.context import Context
from runtime.settings import PROJECT_ROOT
from state.audit import (
    Appended,
    ChainReport,
    VerifyReport,
    append_event,
    content_hash,
    row_hash,
    timeline,
    verify_chain,
)
from state.db import CONNECTION_KWARGS, Database
from state.world import SAMPLE_WORLD_PATH, load_world, read_world
from tests.approvals import sign_as_two_controllers
from tests.cli import CLI_TIMEOUT_S, payables
from tools.gate import ToolGate

pytestmark = pytest.mark.integration

PAY_REQUEST = "Validate INV-1001 and pay it if it matches"
NEW_ACCOUNT = "NL23KNAB0257394811"
CHANGE_REQUEST = f"Change the bank account of vendor V-006 to {NEW_ACCOUNT}"
APPROVE = {"decisions": [{"type": "approve"}], "reviewer": {"id": "rev-1", "role": "approver"}}


# --- helpers ---------------------------------------------------------------------------


async def audit_rows(database: Database, thread_id: str | None = None) -> list[dict[str, Any]]:
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT * FROM audit_events WHERE (%s::text IS NULL OR thread_id = %s)"
            " ORDER BY tenant, seq",
            (thread_id, thread_id),
        )
        return list(await cur.fetchall())


async def approved_payment(agent: Agent) -> str:
    """INV-1001 validated, paused for approval, approved by rev-1: the thread id."""
    view = await agent.start(PAY_REQUEST, user="clerk-ana")
    assert view["status"] == "interrupted", view
    view = await agent.resume(view["thread_id"], APPROVE)
    assert view["status"] == "completed", view
    assert view["result"]["invoices"]["INV-1001"]["actions"] == ["staged", "payment_scheduled"]
    return str(view["thread_id"])


async def approved_bank_change(agent: Agent, request: str = CHANGE_REQUEST) -> str:
    """The V-006 bank change, signed by two controllers (dual control): the thread id."""
    view = await agent.start(request, user="clerk-ana")
    thread = str(view["thread_id"])
    assert view["status"] == "interrupted", view
    view = (await sign_as_two_controllers(agent, thread))[-1]
    assert view["status"] == "completed", view
    return thread


def chain_of(report: VerifyReport, tenant: str) -> ChainReport:
    """One tenant's chain in ``report`` (the seed's event makes a chain of its own)."""
    return next(c for c in report.chains if c.tenant == tenant)


async def synthetic_chain(database: Database, tenant: str, n: int = 6) -> list[Appended]:
    async with database.connection() as conn:
        return [
            await append_event(
                conn,
                tenant=tenant,
                thread_id=f"t-{tenant}",
                kind="tool_call",
                payload={"i": i, "amount": f"{i}00.00", "tool": "schedule_payment"},
                event_key=f"{tenant}-{i}",
            )
            for i in range(1, n + 1)
        ]


async def tamper(db_uri: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run ``statements`` as the owner with the append-only trigger off, then restore it."""
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
        for statement, params in statements:
            await conn.execute(statement.encode(), params)
        await conn.execute(
            "ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_update_delete"
        )
        await conn.commit()


# --- a run, end to end -----------------------------------------------------------------


async def test_a_run_records_every_kind_in_order_with_an_intact_chain(
    database: Database,
) -> None:
    async with open_agent(database=database) as agent:
        thread = await approved_payment(agent)
    rows = await audit_rows(database, thread)
    kinds = [r["kind"] for r in rows]
    assert kinds[:3] == ["request_received", "route", "plan"]
    assert kinds[-1] == "outcome"
    assert {
        "request_received",
        "route",
        "plan",
        "tool_call",
        "approval_requested",
        "decision",
        "outcome",
    } <= set(kinds)
    # One tenant, one run, after the template seed's event (seq 1).
    assert [r["seq"] for r in rows] == list(range(2, len(rows) + 2))
    assert {r["tenant"] for r in rows} == {"default"}
    first = (await audit_rows(database))[0]
    assert (first["tenant"], first["seq"], first["kind"]) == ("default", 1, "world_seeded")

    calls = [
        (r["payload"]["tool"], r["payload"]["error_code"]) for r in rows if r["kind"] == "tool_call"
    ]
    assert calls == [
        ("get_invoice", None),
        ("compute_match", None),
        ("stage_invoice", None),
        ("schedule_payment", "approval_required"),
        ("schedule_payment", None),
    ]
    # The refusal, then the request for approval, the decision and the approved call.
    order = [
        (r["kind"], r["payload"].get("tool"))
        for r in rows
        if r["kind"] in ("approval_requested", "decision")
        or (r["kind"] == "tool_call" and r["payload"]["tool"] == "schedule_payment")
    ]
    assert order == [
        ("tool_call", "schedule_payment"),
        ("approval_requested", None),
        ("decision", "schedule_payment"),
        ("tool_call", "schedule_payment"),
    ]

    by_kind = {r["kind"]: r["payload"] for r in rows}  # the last of each kind
    assert by_kind["request_received"]["request"] == PAY_REQUEST
    assert by_kind["request_received"]["requester"] == "clerk-ana"
    assert by_kind["route"]["route"] == "invoice_processing"
    plans = [r["payload"] for r in rows if r["kind"] == "plan"]
    assert [p["phase"] for p in plans] == [1, 2]
    assert all(p["model_path"] == "rules" for p in plans)
    assert all(p["prompt_version"] == Context().prompt_version for p in plans)
    assert [s["tool"] for s in plans[1]["steps"]] == ["stage_invoice", "schedule_payment"]
    requested = by_kind["approval_requested"]
    assert requested["requester"] == "clerk-ana"
    assert [a["tool"] for a in requested["actions"]] == ["schedule_payment"]
    assert requested["requirements"][0]["min_approvers"] == 1
    decision = by_kind["decision"]
    assert (decision["reviewer_id"], decision["reviewer_role"], decision["decision"]) == (
        "rev-1",
        "approver",
        "approve",
    )
    assert decision["edit_diff"] == {}
    assert by_kind["outcome"]["status"] == "completed"

    # The paid call: tier, key and result hash match the gate's ledger row.
    paid = by_kind["tool_call"]
    assert (paid["tool"], paid["ok"], paid["replayed"], paid["tier"]) == (
        "schedule_payment",
        True,
        False,
        "irreversible",
    )
    assert paid["raw_args"]["invoice_id"] == "INV-1001"
    assert paid["validated_args"]["invoice_id"] == "INV-1001"
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT idempotency_key, result FROM tool_calls WHERE thread_id = %s"
            " AND tool = 'schedule_payment'",
            (thread,),
        )
        ledger = await cur.fetchone()
        assert ledger is not None
        assert paid["idempotency_key"] == ledger["idempotency_key"]
        assert paid["result_hash"] == content_hash(ledger["result"])
        report = await verify_chain(conn)
        events = await timeline(conn, thread)
    assert report.ok and report.rows == len(rows) + 1  # + the template seed's event
    assert report.chains[0].head_hash == rows[-1]["hash"]
    assert [e["kind"] for e in events] == kinds
    assert "rev-1 (approver) approve" in events[kinds.index("decision")]["summary"]


async def test_resumes_and_reruns_do_not_duplicate_approval_requests(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(PAY_REQUEST, user="clerk-ana")
        thread = view["thread_id"]
        # A malformed resume re-runs the approval node, which interrupts again with an error.
        snapshot = await agent.graph.aget_state(agent.config(thread))
        bad = {"decisions": [], "reviewer": {"id": "rev-1", "role": "approver"}}
        await agent.graph.ainvoke(
            Command(resume={snapshot.interrupts[0].id: bad}),
            agent.config(thread),
            context=Context(),
            durability="sync",
        )
        assert (await agent.pending(thread))[0][1]["error"]
        view = await agent.resume(thread, APPROVE)
        assert view["status"] == "completed"
        change = await approved_bank_change(agent)
    rows = await audit_rows(database, thread)
    assert [r["kind"] for r in rows].count("approval_requested") == 1
    assert [r["kind"] for r in rows].count("decision") == 1
    # Dual control asks twice (the second round shows the first approver), never more.
    rounds = [
        r["payload"]
        for r in await audit_rows(database, change)
        if r["kind"] == "approval_requested"
    ]
    assert len(rounds) == 2
    assert rounds[0]["requirements"][0]["approved_by"] == []
    assert rounds[1]["requirements"][0]["approved_by"] == [{"id": "ctl-1", "role": "controller"}]

    # Appending an already recorded event again changes nothing.
    first = next(r for r in rows if r["kind"] == "approval_requested")
    async with database.connection() as conn:
        again = await append_event(
            conn,
            tenant="default",
            thread_id=thread,
            kind="approval_requested",
            payload={"anything": "else"},
            event_key=first["event_key"],
        )
        assert (again.id, again.seq, again.created) == (first["id"], first["seq"], False)
        assert (await verify_chain(conn)).ok


async def test_an_edit_records_the_changed_keys_old_and_new(database: Database) -> None:
    async with open_agent(database=database) as agent:
        view = await agent.start(PAY_REQUEST, user="clerk-ana")
        thread = view["thread_id"]
        args = dict(view["pending_approvals"][0]["args"])
        edited = {**args, "pay_on": "2030-01-15"}
        view = await agent.resume(
            thread,
            {
                "decisions": [
                    {
                        "type": "edit",
                        "edited_action": {"name": "schedule_payment", "args": edited},
                    }
                ],
                "reviewer": {"id": "rev-1", "role": "approver"},
            },
        )
        assert view["status"] == "completed", view
    [decision] = [
        r["payload"] for r in await audit_rows(database, thread) if r["kind"] == "decision"
    ]
    assert decision["decision"] == "edit"
    assert list(decision["edit_diff"]) == ["pay_on"]
    assert decision["edit_diff"]["pay_on"]["new"] == "2030-01-15"


# --- tampering -------------------------------------------------------------------------


def _swap_seq(tenant: str, a: int, b: int) -> list[tuple[str, tuple[Any, ...]]]:
    sql = "UPDATE audit_events SET seq = %s WHERE tenant = %s AND seq = %s"
    return [(sql, (10_000, tenant, a)), (sql, (a, tenant, b)), (sql, (b, tenant, 10_000))]


def _edit_and_rehash(
    row: dict[str, Any], prev_hash: str | None = None
) -> list[tuple[str, tuple[Any, ...]]]:
    payload = {**row["payload"], "amount": "99999.00"}
    prev_hash = prev_hash or row["prev_hash"]
    digest = row_hash(
        tenant=row["tenant"],
        seq=row["seq"],
        thread_id=row["thread_id"],
        kind=row["kind"],
        event_key=row["event_key"],
        payload=payload,
        prev_hash=prev_hash,
    )
    return [
        (
            "UPDATE audit_events SET payload = %s::jsonb, prev_hash = %s, hash = %s WHERE id = %s",
            (json.dumps(payload), prev_hash, digest, row["id"]),
        )
    ]


@pytest.mark.parametrize(
    ("tampering", "broken_seq", "broken_row_seq", "reason"),
    [
        # (what is done to seq 3, seq reported, original seq of the reported row, reason)
        ("edit_payload", 3, 3, "edited"),
        ("delete_row", 4, 4, "gap"),
        ("swap_seq", 3, 4, "reordered"),
        ("edit_and_rehash", 4, 4, "broken_link"),
        # (what is done to seq 1: it is rewritten to link to a row before it, not genesis)
        ("first_not_genesis", 1, 1, "broken_link"),
    ],
)
async def test_tampering_is_found_at_the_first_broken_link(
    database: Database,
    db_uri: str,
    tampering: str,
    broken_seq: int,
    broken_row_seq: int,
    reason: str,
) -> None:
    await synthetic_chain(database, "globex")
    await synthetic_chain(database, "acme")
    rows = {r["seq"]: r for r in await audit_rows(database) if r["tenant"] == "acme"}
    statements = {
        "edit_payload": [
            (
                "UPDATE audit_events SET payload = jsonb_set(payload, '{amount}', '\"99999.00\"')"
                " WHERE tenant = %s AND seq = %s",
                ("acme", 3),
            )
        ],
        "delete_row": [("DELETE FROM audit_events WHERE tenant = %s AND seq = %s", ("acme", 3))],
        "swap_seq": _swap_seq("acme", 3, 4),
        "edit_and_rehash": _edit_and_rehash(rows[3]),
        "first_not_genesis": _edit_and_rehash(rows[1], prev_hash="f" * 64),
    }[tampering]
    await tamper(db_uri, *statements)

    async with database.connection() as conn:
        report = await verify_chain(conn)
        only_acme = await verify_chain(conn, "acme")
    assert not report.ok
    broken = report.first_broken
    assert broken is not None
    assert (broken.tenant, broken.seq, broken.id, broken.reason) == (
        "acme",
        broken_seq,
        rows[broken_row_seq]["id"],
        reason,
    ), broken
    assert only_acme.first_broken == broken
    globex = next(c for c in report.chains if c.tenant == "globex")
    assert globex.broken is None and globex.rows == 6


@pytest.mark.parametrize("cut", ["newest rows", "every row"])
async def test_a_chain_cut_short_still_links_but_its_lost_events_are_found(
    database: Database, db_uri: str, cut: str
) -> None:
    """With the trigger off, dropping the newest rows (or all) leaves a chain that links and
    hashes. The ledger and the decisions, which commit with their events, say what is gone."""
    async with open_agent(database=database) as agent:
        thread = await approved_payment(agent)
    rows = await audit_rows(database, thread)
    decision = next(r for r in rows if r["kind"] == "decision")
    after = decision["seq"] if cut == "newest rows" else 0
    await tamper(
        db_uri, ("DELETE FROM audit_events WHERE tenant = %s AND seq >= %s", ("default", after))
    )
    async with database.connection() as conn:
        report = await verify_chain(conn)
        other_tenant = await verify_chain(conn, "acme")
    assert all(c.broken is None for c in report.chains), report.as_dict()
    assert not report.ok
    lost = {(u.table, u.thread_id, u.detail.split(" at step")[0]) for u in report.unaudited}
    assert {
        ("tool_calls", thread, "schedule_payment"),
        ("approval_decisions", thread, "rev-1 approve schedule_payment"),
    } <= lost, lost
    if not after:  # every gated write of the run is named
        async with database.connection() as conn:
            cur = await conn.execute("SELECT tool FROM tool_calls WHERE thread_id = %s", (thread,))
            ledger = {("tool_calls", thread, r["tool"]) for r in await cur.fetchall()}
        assert ledger <= lost and len(ledger) >= 2, (ledger, lost)
    assert other_tenant.unaudited == []


FORGED_ACCOUNT = "GB33BUKB20201555555555"
_HAND_MADE_PAYMENT = (
    "INSERT INTO payments (payment_id, invoice_id, vendor_id, amount, currency, payee_account,"
    " pay_on, idempotency_key) VALUES ('PAY-X', 'INV-1002', 'V-002', 900, 'USD', %s,"
    " current_date, %s)"
)
_REMIT_TO = "UPDATE vendors SET remit_bank_account = %s WHERE vendor_id = %s"
# (A trigger keeps payments within their invoice: an edit can only lower one.)
_LOWER_INV_1001 = "UPDATE payments SET amount = amount - 100 WHERE invoice_id = 'INV-1001'"
# Each: what is done past the gate, then the one record verify names: table, reason, text.
_PAST_THE_GATE: dict[str, tuple[list[tuple[str, tuple[Any, ...]]], str, str, str]] = {
    "payment inserted": (
        [(_HAND_MADE_PAYMENT, (FORGED_ACCOUNT, "hand-made"))],
        "payments",
        "outside_gate",
        "payment PAY-X of INV-1002 (900.00 USD): no schedule_payment ledger row",
    ),
    "payment given a seed key": (
        [(_HAND_MADE_PAYMENT, (FORGED_ACCOUNT, "seed:PAY-X"))],
        "payments",
        "outside_gate",
        "payment PAY-X of INV-1002 (900.00 USD): not a payment the latest seed wrote",
    ),
    "approved payment lowered": (
        [(_LOWER_INV_1001, ())],
        "payments",
        "differs",
        "amount is ",
    ),
    "approved payment lowered, its ledger row too": (
        [
            (_LOWER_INV_1001, ()),
            (
                "UPDATE tool_calls SET result = jsonb_set(result, '{amount}', (SELECT"
                " to_jsonb(amount::text) FROM payments WHERE invoice_id = 'INV-1001'))"
                " WHERE tool = 'schedule_payment'",
                (),
            ),
        ],
        "tool_calls",
        "ledger_edited",
        "schedule_payment at step ",
    ),
    "seeded payment lowered": (
        [("UPDATE payments SET amount = amount - 100 WHERE payment_id = 'PAY-0001'", ())],
        "payments",
        "differs",
        "payment PAY-0001 of INV-1006 (3885.60 USD): amount is 3885.60, the seed's record"
        " says 3985.60",
    ),
    "approval turned into another reviewer role": (
        [("UPDATE approval_decisions SET reviewer_role = 'controller'", ())],
        "approval_decisions",
        "differs",
        "schedule_payment at step p2s2 as controller: its event says approve schedule_payment"
        " as approver",
    ),
    # The vendor's account changed to match: only the change's missing ledger row gives it away.
    "bank change inserted": (
        [
            (
                "INSERT INTO vendor_bank_changes (vendor_id, old_account, new_account, reason,"
                " idempotency_key) VALUES ('V-002', 'GB29NWBK60161331926819', %s, 'call-back',"
                " 'hand-made')",
                (FORGED_ACCOUNT,),
            ),
            (_REMIT_TO, (FORGED_ACCOUNT, "V-002")),
        ],
        "vendor_bank_changes",
        "outside_gate",
        "of V-002: no update_vendor_bank_account ledger row",
    ),
    "vendor's account changed": (
        [(_REMIT_TO, (FORGED_ACCOUNT, "V-002"))],
        "vendors",
        "differs",
        "vendor V-002: remittance account is ****5555, the seed's record says ****6819",
    ),
    "vendor blocked": (
        [("UPDATE vendors SET status = 'blocked' WHERE vendor_id = 'V-003'", ())],
        "vendors",
        "differs",
        "vendor V-003: status is blocked, the seed's record says active",
    ),
    "vendor inserted": (
        [
            (
                "INSERT INTO vendors (vendor_id, name, remit_bank_account, contact_email,"
                " currency) VALUES ('V-X', 'Shell Ltd', %s, 'x@example.com', 'USD')",
                (FORGED_ACCOUNT,),
            )
        ],
        "vendors",
        "outside_gate",
        "vendor V-X: not a vendor the latest seed wrote",
    ),
    "invoice marked paid": (
        [("UPDATE invoices SET status = 'paid' WHERE invoice_id = 'INV-1002'", ())],
        "invoices",
        "differs",
        "invoice INV-1002: status is paid; no gated call changed it, and the seed's record says"
        " received",
    ),
    "scheduled invoice put back": (
        [("UPDATE invoices SET status = 'received' WHERE invoice_id = 'INV-1001'", ())],
        "invoices",
        "differs",
        "invoice INV-1001: status is received; its latest gated call (schedule_payment) left it"
        " scheduled",
    ),
    # A status one of its earlier gated calls left it in is not enough: the latest call's.
    "scheduled invoice put back to staged": (
        [("UPDATE invoices SET status = 'staged' WHERE invoice_id = 'INV-1001'", ())],
        "invoices",
        "differs",
        "invoice INV-1001: status is staged; its latest gated call (schedule_payment) left it"
        " scheduled",
    ),
    "invoice total raised": (
        [("UPDATE invoices SET total = total + 100 WHERE invoice_id = 'INV-1002'", ())],
        "invoices",
        "differs",
        "invoice INV-1002: total is ",
    ),
    "invoice inserted": (
        [
            (
                "INSERT INTO invoices (invoice_id, vendor_id, invoice_number, invoice_date,"
                " currency, subtotal, total) SELECT 'INV-X', vendor_id, 'X-1', invoice_date,"
                " currency, subtotal, total FROM invoices WHERE invoice_id = 'INV-1002'",
                (),
            )
        ],
        "invoices",
        "outside_gate",
        "invoice INV-X: not an invoice the latest seed wrote",
    ),
    "email inserted": (
        [
            (
                "INSERT INTO email_outbox (vendor_id, to_address, subject, body,"
                " idempotency_key) VALUES ('V-002', 'ap@example.com', 'Pay now', '', 'hand-made')",
                (),
            )
        ],
        "email_outbox",
        "outside_gate",
        "to V-002: no send_vendor_email ledger row",
    ),
}


@pytest.mark.parametrize("done", list(_PAST_THE_GATE))
async def test_a_record_written_or_edited_past_the_gate_is_found(
    database: Database, db_uri: str, done: str
) -> None:
    """The chain vouches for each payment, bank change and email through its ledger row
    (or, for a seeded payment, the seed's record), and for each invoice and vendor through
    the seed's record and the gated calls that change them; one made or changed by hand is
    named."""
    statements, table, reason, detail = _PAST_THE_GATE[done]
    async with open_agent(database=database) as agent:
        thread = await approved_payment(agent)
    async with database.connection() as conn:
        assert (await verify_chain(conn)).ok
    await tamper(db_uri, *statements)
    async with database.connection() as conn:
        report = await verify_chain(conn)
        only_default = await verify_chain(conn, "default")
    assert all(c.broken is None for c in report.chains)  # the chain itself is intact
    assert not report.ok
    [found] = report.unaudited
    assert (found.table, found.reason) == (table, reason), found
    assert detail in found.detail, found
    gated = table in {"tool_calls", "approval_decisions"} or "approve" in done
    assert found.thread_id == (thread if gated else None)
    # A tenant's verify covers its threads' records; a thread-less one only the full verify.
    assert only_default.unaudited == ([found] if gated else [])


SAME_LAST_FOUR = "GB82WEST12345698763000"  # like INV-1001's payee (V-001), ending in 3000
_REDIRECT = "UPDATE payments SET payee_account = %s WHERE invoice_id = 'INV-1001'"
# Each: what is done past the approval, then what verify names: table, reason, text.
_PAST_THE_APPROVAL: dict[str, tuple[list[tuple[str, tuple[Any, ...]]], list[tuple[str, ...]]]] = {
    "payment redirected": (
        [(_REDIRECT, (FORGED_ACCOUNT,))],
        [
            ("payments", "unapproved", "pays ****5555, not the account its approvers saw"),
            ("payments", "differs", "payee_account_masked is ****5555, its ledger row says"),
        ],
    ),
    "payment redirected to an account with the same last four": (
        [(_REDIRECT, (SAME_LAST_FOUR,))],
        [("payments", "unapproved", "pays ****3000, not the account its approvers saw (rev-1")],
    ),
    "approval deleted": (
        [("DELETE FROM approval_decisions", ())],
        [("tool_calls", "unapproved", "no approval of its arguments on record")],
    ),
    "approval moved to other arguments": (
        [("UPDATE approval_decisions SET args_hash = md5(args_hash)", ())],
        [("tool_calls", "unapproved", "no approval of its arguments on record")],
    ),
}


@pytest.mark.parametrize("done", list(_PAST_THE_APPROVAL))
async def test_a_payment_its_approvals_do_not_cover_is_found(
    database: Database, db_uri: str, done: str
) -> None:
    """Approvals bind a payment's arguments and account; verify checks them again after."""
    statements, expected = _PAST_THE_APPROVAL[done]
    async with open_agent(database=database) as agent:
        thread = await approved_payment(agent)
    async with database.connection() as conn:
        cur = await conn.execute("SELECT payee_account FROM payments WHERE invoice_id = 'INV-1001'")
        paid = await cur.fetchone()
    assert paid is not None and paid["payee_account"] != SAME_LAST_FOUR
    assert paid["payee_account"][-4:] == SAME_LAST_FOUR[-4:]
    await tamper(db_uri, *statements)
    async with database.connection() as conn:
        report = await verify_chain(conn)
    assert all(c.broken is None for c in report.chains)
    found = [(u.table, u.reason) for u in report.unaudited]
    assert found == [(table, reason) for table, reason, _ in expected], report.unaudited
    for u, (_, _, text) in zip(report.unaudited, expected, strict=True):
        assert text in u.detail and u.thread_id == thread, u


async def test_a_bank_change_without_dual_control_on_record_is_found(
    database: Database, db_uri: str
) -> None:
    async with open_agent(database=database) as agent:
        thread = await approved_bank_change(agent)
    async with database.connection() as conn:
        assert (await verify_chain(conn)).ok
    # One controller's approval gone: the other alone is not dual control.
    await tamper(
        db_uri,
        (
            "DELETE FROM approval_decisions WHERE decision_id = (SELECT min(decision_id)"
            " FROM approval_decisions WHERE thread_id = %s)",
            (thread,),
        ),
    )
    async with database.connection() as conn:
        report = await verify_chain(conn)
    [found] = report.unaudited
    assert (found.table, found.reason, found.thread_id) == ("tool_calls", "unapproved", thread)
    assert "dual control needs two reviewers, one a controller" in found.detail, found


EDITED_BODY = "Your new remittance account is on file. Reply to confirm."


@pytest.mark.parametrize("edited", [False, True], ids=["as proposed", "as a reviewer edited it"])
async def test_a_queued_email_rewritten_is_found(
    database: Database, db_uri: str, edited: bool
) -> None:
    """An email's body is in its call's arguments, which its approvals bind (its result
    leaves the body out): a queued email rewritten by hand, new bank details say, is named.
    One a reviewer edited is held to the body they approved."""
    async with open_agent(database=database) as agent:
        if edited:
            view = await agent.start(CHANGE_REQUEST, user="clerk-ana")
            thread = str(view["thread_id"])
            email = dict(view["pending_approvals"][1]["args"], body=EDITED_BODY)
            edit = {"type": "edit", "edited_action": {"name": "send_vendor_email", "args": email}}
            view = await agent.resume(
                thread,
                {
                    "decisions": [{"type": "approve"}, edit],
                    "reviewer": {"id": "ctl-1", "role": "controller"},
                },
            )
            assert view["status"] == "interrupted", view  # dual control: a second controller
            view = await agent.resume(
                thread,
                {
                    "decisions": [{"type": "approve"}] * len(view["pending_approvals"]),
                    "reviewer": {"id": "ctl-2", "role": "controller"},
                },
            )
            assert view["status"] == "completed", view
        else:
            thread = await approved_bank_change(agent)
    async with database.connection() as conn:
        cur = await conn.execute("SELECT body FROM email_outbox WHERE thread_id = %s", (thread,))
        [queued] = await cur.fetchall()
        assert (queued["body"] == EDITED_BODY) is edited
        assert (await verify_chain(conn)).ok
    await tamper(db_uri, ("UPDATE email_outbox SET body = %s", (f"Pay to {FORGED_ACCOUNT}",)))
    async with database.connection() as conn:
        report = await verify_chain(conn)
    [found] = report.unaudited
    assert (found.table, found.reason, found.thread_id) == ("email_outbox", "differs", thread)
    assert "body is Pay to ****5555, its ledger row says " in found.detail, found
    assert ("its ledger row says Your new remittance" in found.detail) is edited, found


# Each: whether V-006's account is set by hand before its gated change (or after it), the
# account, and what verify says of the vendor.
_AROUND_THE_BANK_CHANGE = {
    "before the change": (
        True,
        FORGED_ACCOUNT,
        "replaced ****5555, but the account was ****5678 then",
    ),
    "after it, to an account with the same last four": (
        False,
        "GB82WEST12345698764811",
        "remittance account is ****4811, its latest gated bank change says ****4811",
    ),
}


@pytest.mark.parametrize("when", list(_AROUND_THE_BANK_CHANGE))
async def test_a_vendor_account_set_by_hand_around_its_gated_change_is_found(
    database: Database, db_uri: str, when: str
) -> None:
    """A vendor's account is the seed's, then each gated change's in turn, compared in full
    after a change (the change row holds the account): a hand-set one is named either side."""
    before, account, detail = _AROUND_THE_BANK_CHANGE[when]
    if before:
        await tamper(db_uri, (_REMIT_TO, (account, "V-006")))
    async with open_agent(database=database) as agent:
        await approved_bank_change(agent)
    if not before:
        await tamper(db_uri, (_REMIT_TO, (account, "V-006")))
    async with database.connection() as conn:
        report = await verify_chain(conn)
    [found] = report.unaudited
    assert (found.table, found.reason, found.thread_id) == ("vendors", "differs", None), found
    assert found.detail.startswith("vendor V-006: ") and detail in found.detail, found


async def test_the_sample_inbox_approved_throughout_verifies(database: Database) -> None:
    """Every gated tool, every approval path (controller, dual control): nothing flagged."""
    inbox = json.loads((PROJECT_ROOT / "data" / "inbox.sample.json").read_text())
    reviewers = [("rev-1", "approver"), ("ctl-1", "controller"), ("ctl-2", "controller")]
    async with open_agent(database=database) as agent:
        for item in inbox:
            view = await agent.start(item["request"], user=item["user"])
            for reviewer, role in reviewers * 2:  # a role a step cannot take is refused
                if view["status"] != "interrupted":
                    break
                answer = [{"type": "approve"}] * len(view["pending_approvals"])
                view = await agent.resume(
                    view["thread_id"],
                    {"decisions": answer, "reviewer": {"id": reviewer, "role": role}},
                )
            assert view["status"] in {"completed", "refused"}, view
    async with database.connection() as conn:
        cur = await conn.execute("SELECT DISTINCT tool FROM tool_calls")
        tools = {r["tool"] for r in await cur.fetchall()}
        report = await verify_chain(conn)
    assert {
        "schedule_payment",
        "update_vendor_bank_account",
        "send_vendor_email",
        "flag_exception",
        "stage_invoice",
    } <= tools
    assert report.ok, report.as_dict()


async def test_a_seed_lists_what_it_wrote_in_the_operators_chain(database: Database) -> None:
    world = read_world(SAMPLE_WORLD_PATH)
    async with database.connection() as conn:
        await load_world(conn, world, tenant="acme")
        cur = await conn.execute(
            "SELECT seq, payload FROM audit_events WHERE tenant = 'acme' AND kind = 'world_seeded'"
        )
        [seed] = await cur.fetchall()
        report = await verify_chain(conn)
        events = await timeline(conn, "no-thread")  # the seed's event has no thread
    assert seed["seq"] == 1
    listed = seed["payload"]["payments"]
    assert [(p["payment_id"], p["invoice_id"], p["amount"], p["status"]) for p in listed] == [
        (p.payment_id, p.invoice_id, f"{p.amount:.2f}", p.status) for p in world.payments
    ]
    assert all(p["payee_account_masked"].startswith("****") for p in listed)
    assert seed["payload"]["invoices"] == {
        i.invoice_id: {
            "vendor_id": i.vendor_id,
            "total": f"{i.total:.2f}",
            "currency": i.currency,
            "status": i.status,
        }
        for i in world.invoices
    }
    assert seed["payload"]["vendors"] == {
        v.vendor_id: {
            "remit_account_masked": "****" + v.remit_bank_account[-4:],
            "status": v.status,
        }
        for v in world.vendors
    }
    assert find_unmasked(json.dumps(seed["payload"])) == []
    assert seed["payload"]["world_digest"] == content_hash(world.model_dump(mode="json"))
    assert report.ok and events == []


async def test_audit_rows_cannot_be_updated_deleted_or_truncated(database: Database) -> None:
    await synthetic_chain(database, "acme", n=3)
    async with database.connection() as conn:
        for statement in (
            "UPDATE audit_events SET payload = '{}' WHERE seq = 2",
            "DELETE FROM audit_events WHERE seq = 3",
            "DELETE FROM audit_events WHERE false",
            "TRUNCATE audit_events",
            "TRUNCATE audit_events, runs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                await conn.execute(statement.encode())
        cur = await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        role = await cur.fetchone()
        if role is not None and role["rolsuper"]:
            # Replication mode switches ordinary triggers off, but not these (ENABLE ALWAYS).
            await conn.execute("SET session_replication_role = replica")
            try:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    await conn.execute("DELETE FROM audit_events")
            finally:
                await conn.execute("RESET session_replication_role")
        # Reseeding the world forgets threads but never the audit chain, and records itself.
        await load_world(conn, read_world(SAMPLE_WORLD_PATH))
        report = await verify_chain(conn)
        cur = await conn.execute("SELECT kind FROM audit_events WHERE tenant = 'default'")
        seeds = [r["kind"] for r in await cur.fetchall()]
    assert report.ok and chain_of(report, "acme").rows == 3
    assert seeds == ["world_seeded", "world_seeded"]  # the template's seed, then this one


# --- concurrency and transactions ------------------------------------------------------


async def test_concurrent_appends_make_gapless_valid_chains(db_uri: str) -> None:
    async def append(i: int, tenant: str, key: str | None) -> Appended:
        async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
            return await append_event(
                conn,
                tenant=tenant,
                thread_id=f"t-{i}",
                kind="guard_flag",
                payload={"i": i, "detector": "test"},
                event_key=key,
            )

    tasks = [append(i, "acme" if i % 3 else "globex", None) for i in range(36)]
    tasks += [append(100 + i, "acme", "acme:same-event") for i in range(8)]
    appended = await asyncio.gather(*tasks)

    duplicates = appended[36:]
    assert sum(a.created for a in duplicates) == 1
    assert len({(a.id, a.seq, a.hash) for a in duplicates}) == 1
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        cur = await conn.execute(
            "SELECT tenant, array_agg(seq ORDER BY seq) AS seqs FROM audit_events"
            " WHERE tenant <> 'default' GROUP BY tenant"  # default: the template seed's event
        )
        seqs = {r["tenant"]: r["seqs"] for r in await cur.fetchall()}
        report = await verify_chain(conn)
    assert seqs == {"acme": list(range(1, 26)), "globex": list(range(1, 13))}
    assert report.ok and chain_of(report, "acme").rows + chain_of(report, "globex").rows == 37


APPEND_ELSEWHERE = """
import asyncio, os, sys
import psycopg
from state.audit import append_event
from state.db import CONNECTION_KWARGS

async def main(name: str, count: int) -> None:
    uri = os.environ["DATABASE_URI"]
    async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
        print("ready", flush=True)
        sys.stdin.readline()  # start together with the other processes
        for n in range(count):
            await append_event(
                conn, tenant="acme", thread_id=name, kind="route", payload={"n": n}
            )

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def append_elsewhere(env: dict[str, str], names: list[str], count: int) -> None:
    """Append ``count`` events to tenant acme's chain from one process per name, at once."""
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            APPEND_ELSEWHERE,
            name,
            str(count),
            env=env,
            cwd=PROJECT_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for name in names
    ]
    for child in children:  # every one connected, then all go
        assert child.stdout is not None
        ready = await asyncio.wait_for(child.stdout.readline(), CLI_TIMEOUT_S)
        assert ready == b"ready\n", ready
    for child in children:
        _, errors = await asyncio.wait_for(child.communicate(b"go\n"), CLI_TIMEOUT_S)
        assert child.returncode == 0, errors.decode()


async def test_an_append_from_another_process_is_followed_not_overwritten(
    database: Database, cli_env: dict[str, str]
) -> None:
    # This process remembers the chain's head after its own append; the other process then
    # moves it, so the next append here is linked to a stale head and must be redone.
    async with database.connection() as conn:
        await append_event(conn, tenant="acme", thread_id="t", kind="route", payload={"n": 1})
        await append_elsewhere(cli_env, ["other"], 1)
        third = await append_event(conn, tenant="acme", thread_id="t", kind="route", payload={})
        cur = await conn.execute(
            "SELECT seq, thread_id FROM audit_events WHERE tenant = 'acme' ORDER BY seq"
        )
        rows = [(r["seq"], r["thread_id"]) for r in await cur.fetchall()]
        report = await verify_chain(conn)
    assert (third.seq, third.created) == (3, True)
    assert rows == [(1, "t"), (2, "other"), (3, "t")]
    assert report.ok and chain_of(report, "acme").rows == 3


async def test_processes_appending_at_once_make_one_gapless_valid_chain(
    database: Database, cli_env: dict[str, str]
) -> None:
    # Each process guesses the head from its own last append; the others keep moving it,
    # so guesses miss and are redone (again, then under the lock), never linked twice.
    await append_elsewhere(cli_env, ["p0", "p1", "p2"], 100)
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT seq, thread_id FROM audit_events WHERE tenant = 'acme' ORDER BY seq"
        )
        rows = [(r["seq"], r["thread_id"]) for r in await cur.fetchall()]
        report = await verify_chain(conn)
    assert [seq for seq, _ in rows] == list(range(1, 301))
    assert sorted({thread for _, thread in rows}) == ["p0", "p1", "p2"]
    assert report.ok and chain_of(report, "acme").rows == 300


async def test_numbers_jsonb_spells_differently_still_hash_as_stored(database: Database) -> None:
    # JSONB keeps digits, not spelling: 1e16 comes back as an int, -0.0 as 0.0, 1e-07 as
    # 0.0000001. The hash must be over what comes back, or verification would fail.
    payloads = [{"big": 1e16}, {"zero": -0.0}, {"tiny": 1e-7}, {"plain": 12.5, "n": [1, 2.0]}]
    async with database.connection() as conn:
        for n, payload in enumerate(payloads):
            appended = await append_event(
                conn, tenant="acme", thread_id="t", kind="route", payload=payload
            )
            assert appended.seq == n + 1
        report = await verify_chain(conn)
    assert report.ok and chain_of(report, "acme").rows == len(payloads)


async def test_an_append_in_a_rolled_back_transaction_leaves_no_gap(database: Database) -> None:
    async with database.connection() as conn:
        await append_event(conn, tenant="acme", thread_id="t", kind="route", payload={"n": 1})
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await append_event(
                    conn, tenant="acme", thread_id="t", kind="route", payload={"n": 2}
                )
                raise RuntimeError("the caller's work failed")
        last = await append_event(conn, tenant="acme", thread_id="t", kind="route", payload={})
        assert last.seq == 2
        assert (await verify_chain(conn)).ok
        with pytest.raises(ValueError, match="unknown audit event kind"):
            await append_event(conn, tenant="acme", thread_id="t", kind="nope", payload={})  # type: ignore[arg-type]


async def test_the_gate_audits_in_the_side_effects_transaction(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = ToolGate(database)
    call: dict[str, Any] = {
        "thread_id": "t-gate",
        "route": "invoice_processing",
        "requester": "clerk-ana",
        "run": Context(),
    }
    # Refusals before any transaction are recorded too, with the raw arguments.
    refused = await gate.call(
        step_id="s1", tool="schedule_payment", args={"invoice_id": "INV-1001", "amount": -1}, **call
    )
    assert refused["error"] is not None and refused["error"]["code"] == "invalid_arguments"
    unknown = await gate.call(step_id="s2", tool="wire_money", args={"to": "x"}, **call)
    assert unknown["error"] is not None and unknown["error"]["code"] == "unknown_tool"
    [bad_args, no_tool] = [r["payload"] for r in await audit_rows(database, "t-gate")]
    assert (bad_args["error_code"], bad_args["raw_args"]["amount"], bad_args["validated_args"]) == (
        "invalid_arguments",
        -1,
        None,
    )
    assert (no_tool["tool"], no_tool["tier"], no_tool["error_code"]) == (
        "wire_money",
        "unknown",
        "unknown_tool",
    )

    # When the audit row cannot be written, the side effect does not commit either.
    import tools.gate

    async with database.connection() as conn:
        await conn.execute(
            "INSERT INTO runs (thread_id, request, requester, tenant, status)"
            " VALUES ('t-gate', 'Validate INV-1002', 'clerk-ana', 'default', 'running')"
        )

    real_record = tools.gate.record

    async def failing_record(
        target: Any, tenant: str, thread_id: Any, event: Any, **kwargs: Any
    ) -> Any:
        if event.payload["ok"]:
            raise RuntimeError("audit storage failed")
        return await real_record(target, tenant, thread_id, event, **kwargs)

    monkeypatch.setattr(tools.gate, "record", failing_record)
    with pytest.raises(RuntimeError, match="audit storage failed"):
        await gate.call(
            step_id="s3",
            tool="stage_invoice",
            args={"invoice_id": "INV-1002", "note": "clean"},
            **call,
        )
    async with database.connection() as conn:
        cur = await conn.execute("SELECT status FROM invoices WHERE invoice_id = 'INV-1002'")
        invoice = await cur.fetchone()
        cur = await conn.execute("SELECT count(*) AS n FROM tool_calls WHERE thread_id = 't-gate'")
        ledger = await cur.fetchone()
    assert invoice is not None and invoice["status"] == "received"
    assert ledger is not None and ledger["n"] == 0
    assert len(await audit_rows(database, "t-gate")) == 2


# --- masking ---------------------------------------------------------------------------


async def test_no_full_bank_account_reaches_the_audit_table(database: Database) -> None:
    world = read_world(SAMPLE_WORLD_PATH)
    accounts = {v.remit_bank_account for v in world.vendors}
    accounts |= {i.bank_account for i in world.invoices if i.bank_account}
    async with open_agent(database=database) as agent:
        await approved_payment(agent)
        change = await approved_bank_change(agent)
        # The same request typed in lower case, and with the account printed in groups.
        await agent.start(CHANGE_REQUEST.replace(NEW_ACCOUNT, NEW_ACCOUNT.lower()), user="clerk-bo")
        await agent.start(
            CHANGE_REQUEST.replace(NEW_ACCOUNT, "NL23 KNAB 0257 3948 11"), user="clerk-bo"
        )
    async with database.connection() as conn:
        cur = await conn.execute("SELECT row_to_json(a)::text AS line FROM audit_events AS a")
        dump = "\n".join(r["line"] for r in await cur.fetchall())
        cur = await conn.execute("SELECT remit_bank_account FROM vendors WHERE vendor_id = 'V-006'")
        master = await cur.fetchone()
    assert master is not None and master["remit_bank_account"] == NEW_ACCOUNT  # it changed
    for account in {*accounts, NEW_ACCOUNT}:
        for spelling in (
            account,
            account.lower(),
            " ".join(account[i : i + 4] for i in range(0, len(account), 4)),
        ):
            assert spelling not in dump, f"{spelling} is in the audit table"
    assert find_unmasked(dump) == []
    # The change is still on record, masked: the new account's last four characters.
    change_rows = await audit_rows(database, change)
    request = next(r for r in change_rows if r["kind"] == "request_received")
    assert request["payload"]["request"].endswith("****4811")
    changed = [
        r["payload"]
        for r in change_rows
        if r["kind"] == "tool_call" and r["payload"]["tool"] == "update_vendor_bank_account"
    ]
    assert changed and all(p["raw_args"]["new_account"] == "****4811" for p in changed)
    assert all(p["validated_args"]["new_account"] == "****4811" for p in changed)


# --- the CLI ---------------------------------------------------------------------------


def test_cli_audit_verify_and_show(db_uri: str, cli_env: dict[str, str]) -> None:
    async def run_one() -> tuple[str, list[dict[str, Any]]]:
        database = Database(db_uri, max_size=4)
        async with open_agent(database=database) as agent:
            thread = await approved_payment(agent)
        database = Database(db_uri, max_size=2)
        try:
            return thread, await audit_rows(database, thread)
        finally:
            await database.close()

    thread, rows = asyncio.run(run_one())

    intact = payables(cli_env, "audit", "verify", "--json")
    assert intact.returncode == 0, intact.stderr
    report = json.loads(intact.stdout)
    assert report["ok"] is True and report["rows"] == len(rows) + 1  # + the seed's event
    assert report["first_broken"] is None
    assert payables(cli_env, "audit", "verify", "--tenant", "default").returncode == 0
    # A mistyped tenant is not an intact chain of 0 rows.
    typo = payables(cli_env, "audit", "verify", "--tenant", "defualt")
    assert typo.returncode == 2, typo.stdout
    message = " ".join(typo.stderr.split())
    assert "'defualt' has no audit rows" in message and "tenants with rows: default" in message

    shown = payables(cli_env, "audit", "show", thread, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [e["kind"] for e in json.loads(shown.stdout)["events"]] == [r["kind"] for r in rows]
    text = payables(cli_env, "audit", "show", thread)
    assert text.returncode == 0, text.stderr
    assert "approval_requested" in text.stdout and "rev-1 (approver) approve" in text.stdout
    unknown = payables(cli_env, "audit", "show", "no-such-thread")
    assert unknown.returncode == 2 and "No audit events" in unknown.stderr

    # Someone with the owner's rights turns the trigger off and rewrites a decision.
    decision = next(r for r in rows if r["kind"] == "decision")
    asyncio.run(
        tamper(
            db_uri,
            (
                "UPDATE audit_events SET payload = jsonb_set(payload, '{reviewer_id}', '\"ctl-9\"')"
                " WHERE id = %s",
                (decision["id"],),
            ),
        )
    )
    broken = payables(cli_env, "audit", "verify", "--json")
    assert broken.returncode == 1, broken.stderr
    first = json.loads(broken.stdout)["first_broken"]
    assert (first["seq"], first["id"], first["reason"]) == (
        decision["seq"],
        decision["id"],
        "edited",
    )
    text = payables(cli_env, "audit", "verify")
    assert text.returncode == 1
    assert f"seq {decision['seq']}, id {decision['id']}, edited" in text.stdout
    # The decision's event now names ctl-9: rev-1's decision on record has no event.
    assert "MISSING EVENTS" in text.stdout
    assert f"approval_decisions on thread {thread}: rev-1 approve schedule_payment" in text.stdout
    assert json.loads(broken.stdout)["unaudited"][0]["table"] == "approval_decisions"


def test_cli_audit_verify_names_a_payment_written_past_the_gate(
    db_uri: str, cli_env: dict[str, str]
) -> None:
    asyncio.run(tamper(db_uri, (_HAND_MADE_PAYMENT, (FORGED_ACCOUNT, "hand-made"))))
    text = payables(cli_env, "audit", "verify")
    assert text.returncode == 1, text.stderr
    assert "tenant default: 1 rows, intact" in text.stdout
    assert "WRITTEN PAST THE GATE" in text.stdout and "MISSING EVENTS" not in text.stdout
    assert "payments on no thread: payment PAY-X of INV-1002" in text.stdout
    assert FORGED_ACCOUNT not in text.stdout
    [found] = json.loads(payables(cli_env, "audit", "verify", "--json").stdout)["unaudited"]
    assert (found["table"], found["reason"], found["thread_id"]) == (
        "payments",
        "outside_gate",
        None,
    )
