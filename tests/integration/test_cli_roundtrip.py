"""`payables` end to end: every call is a new child process; the database is the judge.

Each CLI call runs `python -m runtime.cli` in its own interpreter against the test's
private database (`cli_env`), so nothing survives between calls except what Postgres
holds: the LangGraph checkpoints, the run index and the AP tables. Assertions read those
tables directly with psycopg.
"""

from __future__ import annotations

import json
import random
import re
import string
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from guards.redaction import redact_text
from runtime.cli import SAMPLE_INBOX_PATH
from runtime.errors import WorldFileError
from runtime.settings import PROJECT_ROOT
from state.db import CONNECTION_KWARGS
from state.world import SAMPLE_WORLD_PATH, load_world, read_world
from tests.cli import CLI_TIMEOUT_S, explain, payables, payables_fails, payables_json

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

NEW_ACCOUNT = "NL23KNAB0257394811"


# --- helpers ---------------------------------------------------------------------------


def start(
    env: dict[str, str], request: str, *, user: str, thread: str | None = None
) -> dict[str, Any]:
    """`payables run` a request in a new process; return the view."""
    thread = thread or str(uuid.uuid4())
    view = payables_json(env, "run", request, "--user", user, "--thread", thread)
    assert view["thread_id"] == thread
    assert view["request"] == redact_text(request)
    assert view["user"] == user
    return view


def resume(
    env: dict[str, str], thread: str, reviewer: str, *flags: str, role: str = "approver"
) -> dict[str, Any]:
    """`payables resume` in a new process, requiring success; return the view."""
    return payables_json(env, "resume", thread, "--reviewer", reviewer, "--role", role, *flags)


def rows(db_uri: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_uri) as conn:
        return list(conn.execute(query, params).fetchall())


def scalar(db_uri: str, query: str, *params: Any) -> Any:
    result = rows(db_uri, query, *params)
    assert len(result) == 1, result
    return result[0][0]


def payments_for(db_uri: str, invoice_id: str) -> list[tuple[Any, ...]]:
    """Live and void payments of an invoice: (payment_id, amount, pay_on, payee_account,
    thread_id, approved_by, status), oldest first."""
    return rows(
        db_uri,
        "SELECT payment_id, amount, pay_on, payee_account, thread_id, approved_by, status"
        " FROM payments WHERE invoice_id = %s ORDER BY created_at",
        invoice_id,
    )


def invoice_status(db_uri: str, invoice_id: str) -> str:
    return str(scalar(db_uri, "SELECT status FROM invoices WHERE invoice_id = %s", invoice_id))


def decisions_for(db_uri: str, thread: str) -> list[tuple[Any, ...]]:
    """(reviewer_id, reviewer_role, decision, reason, edited_args) in order."""
    return rows(
        db_uri,
        "SELECT reviewer_id, reviewer_role, decision, reason, edited_args"
        " FROM approval_decisions WHERE thread_id = %s ORDER BY decision_id",
        thread,
    )


def checkpoint_count(db_uri: str, thread: str) -> int:
    return int(scalar(db_uri, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", thread))


def schedule_ledger(db_uri: str, thread: str) -> int:
    return int(
        scalar(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE thread_id = %s AND tool = 'schedule_payment'",
            thread,
        )
    )


def only_pending(view: dict[str, Any]) -> dict[str, Any]:
    assert view["status"] == "interrupted", view
    assert len(view["pending_approvals"]) == 1, view["pending_approvals"]
    return view["pending_approvals"][0]


def approver_ids(approved_by: list[dict[str, str]]) -> set[str]:
    return {a["id"] for a in approved_by}


# --- 1. run → interrupt → approvals → resume ------------------------------------------


def test_run_pauses_lists_and_pays_after_approval_in_new_processes(
    cli_env: dict[str, str], db_uri: str
) -> None:
    # No --thread: the CLI makes a thread id and reports it.
    view = payables_json(cli_env, "run", "Pay INV-1001", "--user", "clerk-ana")
    thread = view["thread_id"]
    pending = only_pending(view)
    assert pending["action"] == "schedule_payment"
    assert pending["args"]["invoice_id"] == "INV-1001"
    assert pending["requester"] == "clerk-ana"
    # The pause is durable: checkpoints and the run index are in Postgres.
    assert checkpoint_count(db_uri, thread) > 0
    assert scalar(db_uri, "SELECT status FROM runs WHERE thread_id = %s", thread) == "interrupted"
    assert payments_for(db_uri, "INV-1001") == []
    assert invoice_status(db_uri, "INV-1001") == "staged"

    listed = payables_json(cli_env, "approvals")["pending_approvals"]
    mine = [a for a in listed if a["thread_id"] == thread]
    assert len(mine) == 1, listed
    entry = mine[0]
    assert entry["interrupt_id"] == pending["interrupt_id"] and entry["interrupt_id"]
    assert entry["action"] == "schedule_payment"
    assert entry["args"] == pending["args"]
    assert entry["request"] == "Pay INV-1001"
    total = scalar(db_uri, "SELECT total FROM invoices WHERE invoice_id = 'INV-1001'")
    assert entry["evidence"]["invoice"]["invoice_id"] == "INV-1001"
    assert entry["evidence"]["invoice"]["total"] == str(total)
    assert entry["evidence"]["verdict"] == "match"
    assert entry["evidence"]["match_table"], entry["evidence"]

    done = resume(cli_env, thread, "apr-1", "--approve")
    assert done["status"] == "completed", done
    assert done["pending_approvals"] == []
    assert done["result"]["invoices"]["INV-1001"]["actions"] == ["staged", "payment_scheduled"]

    paid = payments_for(db_uri, "INV-1001")
    assert len(paid) == 1, paid
    _, amount, _, payee, paid_thread, approved_by, status = paid[0]
    master = scalar(
        db_uri,
        "SELECT v.remit_bank_account FROM vendors v JOIN invoices i USING (vendor_id)"
        " WHERE i.invoice_id = 'INV-1001'",
    )
    assert payee == master
    assert amount == total
    assert paid_thread == thread
    assert status == "scheduled"
    assert approved_by == [{"id": "apr-1", "role": "approver"}]
    assert invoice_status(db_uri, "INV-1001") == "scheduled"
    assert [d[:3] for d in decisions_for(db_uri, thread)] == [("apr-1", "approver", "approve")]
    assert scalar(db_uri, "SELECT status FROM runs WHERE thread_id = %s", thread) == "completed"

    listed_after = payables_json(cli_env, "approvals")["pending_approvals"]
    assert [a for a in listed_after if a["thread_id"] == thread] == []


# --- 2. reject -------------------------------------------------------------------------


def test_reject_with_reason_pays_nothing(cli_env: dict[str, str], db_uri: str) -> None:
    thread = start(cli_env, "Pay INV-1002", user="clerk-ana")["thread_id"]
    view = resume(cli_env, thread, "apr-7", "--reject", "vendor disputes the quantities")
    assert view["status"] == "completed", view
    assert view["result"]["outcome"] == "rejected_by_reviewer"
    assert "vendor disputes the quantities" in view["reason"]
    assert "apr-7" in view["reason"]
    assert payments_for(db_uri, "INV-1002") == []
    assert schedule_ledger(db_uri, thread) == 0
    assert invoice_status(db_uri, "INV-1002") != "scheduled"
    assert [d[:4] for d in decisions_for(db_uri, thread)] == [
        ("apr-7", "approver", "reject", "vendor disputes the quantities")
    ]


# --- 3. edit ---------------------------------------------------------------------------


def test_edit_changes_amount_and_date(cli_env: dict[str, str], db_uri: str) -> None:
    thread = start(cli_env, "Pay INV-1001", user="clerk-ana")["thread_id"]
    edited = {
        "invoice_id": "INV-1001",
        "amount": "100.00",
        "currency": "USD",
        "pay_on": "2026-12-31",
    }
    view = resume(cli_env, thread, "apr-1", "--edit", json.dumps(edited))
    assert view["status"] == "completed", view
    paid = payments_for(db_uri, "INV-1001")
    assert len(paid) == 1, paid
    _, amount, pay_on, _, _, _, _ = paid[0]
    assert str(amount) == "100.00"
    assert pay_on.isoformat() == "2026-12-31"
    [(reviewer, _, decision, _, edited_args)] = decisions_for(db_uri, thread)
    assert (reviewer, decision) == ("apr-1", "edit")
    assert edited_args == edited
    assert view["result"]["invoices"]["INV-1001"]["payment"]["amount"] == "100.00"


@pytest.mark.parametrize(
    ("edit", "mentions"),
    [
        ('{"invoice_id": "INV-1001", "amount": "-5", "currency": "USD"}', "amount"),
        ('{"invoice_id": "INV-1001", "amount": "100.00", "currency": "USD", "iban": "X1"}', "iban"),
        ('{"invoice_id": "INV-1001", "amount": "100.00", "currency": "usd"}', "currency"),
        ('{"invoice_id": "INV-1001", "amount": ', "--edit must be JSON"),
    ],
    ids=["negative-amount", "extra-field", "bad-currency", "not-json"],
)
def test_invalid_edit_exits_2_and_changes_nothing(
    cli_env: dict[str, str], db_uri: str, edit: str, mentions: str
) -> None:
    thread = start(cli_env, "Pay INV-1001", user="clerk-ana")["thread_id"]
    before = checkpoint_count(db_uri, thread)
    stderr = payables_fails(cli_env, "resume", thread, "--reviewer", "apr-1", "--edit", edit)
    assert mentions in stderr
    # Nothing reached the graph or the ledger: same checkpoints, no decision, no payment.
    assert checkpoint_count(db_uri, thread) == before
    assert decisions_for(db_uri, thread) == []
    assert payments_for(db_uri, "INV-1001") == []
    view = payables_json(cli_env, "show", thread)
    pending = only_pending(view)
    assert pending["error"] is None
    assert pending["args"]["amount"] == "3340.97"


# --- 4. dual control -------------------------------------------------------------------


def test_dual_control_needs_two_distinct_reviewers(cli_env: dict[str, str], db_uri: str) -> None:
    thread = start(cli_env, "Pay INV-1020", user="clerk-ben")["thread_id"]
    first = resume(cli_env, thread, "ctl-1", "--approve", role="controller")
    requirement = only_pending(first)["requirement"]
    assert requirement["min_approvers"] == 2
    assert requirement["required_role"] == "controller"
    assert requirement["approved_by"] == [{"id": "ctl-1", "role": "controller"}]
    assert payments_for(db_uri, "INV-1020") == []

    stderr = payables_fails(
        cli_env, "resume", thread, "--reviewer", "ctl-1", "--role", "controller", "--approve"
    )
    assert "already approved" in stderr
    assert [d[:3] for d in decisions_for(db_uri, thread)] == [("ctl-1", "controller", "approve")]
    assert payments_for(db_uri, "INV-1020") == []

    done = resume(cli_env, thread, "apr-2", "--approve")
    assert done["status"] == "completed", done
    paid = payments_for(db_uri, "INV-1020")
    assert len(paid) == 1, paid
    approved_by = paid[0][5]
    assert approver_ids(approved_by) == {"ctl-1", "apr-2"}
    assert {"id": "ctl-1", "role": "controller"} in approved_by
    assert invoice_status(db_uri, "INV-1020") == "scheduled"


# --- 5. requester ----------------------------------------------------------------------


def test_requester_cannot_approve_own_request(cli_env: dict[str, str], db_uri: str) -> None:
    thread = start(cli_env, "Pay INV-1001", user="clerk-ana")["thread_id"]
    before = checkpoint_count(db_uri, thread)
    stderr = payables_fails(
        cli_env, "resume", thread, "--reviewer", "clerk-ana", "--role", "controller", "--approve"
    )
    assert "clerk-ana made this request" in stderr
    # Refused, and on record: the attempt is what a segregation-of-duties review looks for.
    with psycopg.connect(db_uri) as conn:
        refused = conn.execute(
            "SELECT payload->>'reviewer_id', payload->>'reviewer_role', payload->>'reason'"
            " FROM audit_events WHERE thread_id = %s AND kind = 'answer_refused'",
            (thread,),
        ).fetchall()
    assert [(who, role) for who, role, _ in refused] == [("clerk-ana", "controller")], refused
    assert "clerk-ana made this request and cannot also approve" in refused[0][2]
    events = payables_json(cli_env, "audit", "show", thread)["events"]
    [shown] = [e for e in events if e["kind"] == "answer_refused"]
    assert shown["summary"].startswith("clerk-ana (controller) refused: clerk-ana made this")
    assert payables(cli_env, "audit", "verify").returncode == 0
    assert decisions_for(db_uri, thread) == []
    assert payments_for(db_uri, "INV-1001") == []
    assert checkpoint_count(db_uri, thread) == before
    assert only_pending(payables_json(cli_env, "show", thread))["requirement"]["approved_by"] == []


# --- 6. approval threshold -------------------------------------------------------------


def test_over_approval_threshold_needs_a_controller(cli_env: dict[str, str], db_uri: str) -> None:
    thread = start(cli_env, "Pay INV-1013", user="clerk-ana")["thread_id"]
    requirement = only_pending(payables_json(cli_env, "show", thread))["requirement"]
    assert requirement["required_role"] == "controller"

    after_approver = resume(cli_env, thread, "apr-1", "--approve", role="approver")
    requirement = only_pending(after_approver)["requirement"]
    assert requirement["approved_by"] == [{"id": "apr-1", "role": "approver"}]
    assert requirement["required_role"] == "controller"
    assert payments_for(db_uri, "INV-1013") == []
    assert schedule_ledger(db_uri, thread) == 0

    done = resume(cli_env, thread, "ctl-1", "--approve", role="controller")
    assert done["status"] == "completed", done
    paid = payments_for(db_uri, "INV-1013")
    assert len(paid) == 1, paid
    assert {"id": "ctl-1", "role": "controller"} in paid[0][5]
    assert invoice_status(db_uri, "INV-1013") == "scheduled"


# --- 7. duplicates ---------------------------------------------------------------------


def test_duplicate_invoice_is_flagged_never_paid(cli_env: dict[str, str], db_uri: str) -> None:
    view = start(cli_env, "Pay INV-1019", user="clerk-ben")
    thread = view["thread_id"]
    assert view["status"] == "completed", view
    assert view["pending_approvals"] == []
    entry = view["result"]["invoices"]["INV-1019"]
    assert "duplicate_invoice" in entry["exceptions"]
    assert entry["actions"] == ["flagged"]
    assert invoice_status(db_uri, "INV-1019") == "flagged"
    flagged = rows(
        db_uri,
        "SELECT thread_id FROM invoice_exceptions"
        " WHERE invoice_id = 'INV-1019' AND 'duplicate_invoice' = ANY (codes)",
    )
    assert flagged == [(thread,)]
    assert payments_for(db_uri, "INV-1019") == []
    assert schedule_ledger(db_uri, thread) == 0


def test_paying_the_same_invoice_in_two_threads_pays_once(
    cli_env: dict[str, str], db_uri: str
) -> None:
    first = start(cli_env, "Pay INV-1009", user="clerk-ana")["thread_id"]
    second = start(cli_env, "Pay INV-1009", user="clerk-ben")["thread_id"]
    assert only_pending(payables_json(cli_env, "show", second))["action"] == "schedule_payment"

    paid_view = resume(cli_env, first, "apr-1", "--approve")
    assert paid_view["status"] == "completed", paid_view
    later = resume(cli_env, second, "apr-2", "--approve")

    paid = payments_for(db_uri, "INV-1009")
    assert len(paid) == 1, paid
    assert paid[0][4] == first
    assert schedule_ledger(db_uri, second) == 0
    assert later["status"] in {"completed", "escalated"}, later
    entry = later["result"]["invoices"]["INV-1009"]
    assert "payment_scheduled" not in entry["actions"]
    flagged_by_second = int(
        scalar(
            db_uri,
            "SELECT count(*) FROM invoice_exceptions WHERE invoice_id = 'INV-1009'"
            " AND thread_id = %s",
            second,
        )
    )
    assert flagged_by_second == 1 or later["status"] == "escalated", later
    assert invoice_status(db_uri, "INV-1009") == "scheduled"


# --- 8. resuming twice -----------------------------------------------------------------


def test_second_resume_of_a_resolved_approval_is_refused(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = start(cli_env, "Pay INV-1001", user="clerk-ana")["thread_id"]
    assert resume(cli_env, thread, "apr-1", "--approve")["status"] == "completed"
    stderr = payables_fails(cli_env, "resume", thread, "--reviewer", "apr-1", "--approve")
    assert "no pending approval" in stderr
    assert "already resolved" in stderr
    assert len(payments_for(db_uri, "INV-1001")) == 1
    assert schedule_ledger(db_uri, thread) == 1
    assert len(decisions_for(db_uri, thread)) == 1


# --- 9. racing resumes -----------------------------------------------------------------


def test_racing_resumes_pay_exactly_once(cli_env: dict[str, str], db_uri: str) -> None:
    thread = start(cli_env, "Pay INV-1001", user="clerk-ana")["thread_id"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "resume",
                thread,
                "--reviewer",
                reviewer,
                "--approve",
                "--json",
            ],
            env=cli_env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for reviewer in ("apr-1", "apr-2")
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        results.append((proc.returncode, out, err))
    codes = [code for code, _, _ in results]
    assert all(code in (0, 2) for code in codes), results
    assert 0 in codes, results
    for code, out, err in results:
        assert "Traceback" not in err, err
        if code == 0:
            assert json.loads(out)["status"] == "completed", out

    paid = payments_for(db_uri, "INV-1001")
    assert len(paid) == 1, paid
    assert paid[0][4] == thread
    assert schedule_ledger(db_uri, thread) == 1
    assert invoice_status(db_uri, "INV-1001") == "scheduled"
    assert payables_json(cli_env, "show", thread)["status"] == "completed"


# --- 10. malformed input ---------------------------------------------------------------


def test_resume_unknown_thread_exits_2(cli_env: dict[str, str], db_uri: str) -> None:
    stderr = payables_fails(cli_env, "resume", "no-such-thread", "--reviewer", "apr-1", "--approve")
    assert "no-such-thread" in stderr
    assert scalar(db_uri, "SELECT count(*) FROM approval_decisions") == 0


@pytest.mark.parametrize(
    "flags",
    [(), ("--approve", "--reject", "looks wrong")],
    ids=["no-decision", "two-decisions"],
)
def test_resume_needs_exactly_one_decision(
    cli_env: dict[str, str], db_uri: str, flags: tuple[str, ...]
) -> None:
    thread = start(cli_env, "Pay INV-1001", user="clerk-ana")["thread_id"]
    stderr = payables_fails(cli_env, "resume", thread, "--reviewer", "apr-1", *flags)
    assert "exactly one of --approve, --reject" in stderr
    assert decisions_for(db_uri, thread) == []
    assert payments_for(db_uri, "INV-1001") == []
    only_pending(payables_json(cli_env, "show", thread))


def _world_counts(db_uri: str) -> tuple[int, int, int]:
    return (
        int(scalar(db_uri, "SELECT count(*) FROM vendors")),
        int(scalar(db_uri, "SELECT count(*) FROM invoices")),
        int(scalar(db_uri, "SELECT count(*) FROM payments")),
    )


def test_seed_rejects_a_file_that_is_not_json(
    cli_env: dict[str, str], db_uri: str, tmp_path: Path
) -> None:
    before = _world_counts(db_uri)
    assert before[0] == len(json.loads(SAMPLE_WORLD_PATH.read_text())["vendors"])
    bad = tmp_path / "world-not-json.txt"
    bad.write_text("vendors: [oops\n")
    stderr = payables_fails(cli_env, "seed", "--world", str(bad))
    assert str(bad) in stderr
    assert "not valid JSON" in stderr
    assert _world_counts(db_uri) == before


def test_seed_rejects_an_unknown_vendor_and_keeps_the_world(
    cli_env: dict[str, str], db_uri: str, tmp_path: Path
) -> None:
    before = _world_counts(db_uri)
    world = json.loads(SAMPLE_WORLD_PATH.read_text())
    # A smaller world, so a partial load would show in the counts.
    world["vendors"] = world["vendors"][:1]
    keep = world["vendors"][0]["vendor_id"]
    world["purchase_orders"] = [p for p in world["purchase_orders"] if p["vendor_id"] == keep]
    kept_pos = {p["po_number"] for p in world["purchase_orders"]}
    world["goods_receipts"] = [r for r in world["goods_receipts"] if r["po_number"] in kept_pos]
    world["invoices"] = [i for i in world["invoices"] if i["vendor_id"] == keep][:1]
    world["invoices"][0] = {**world["invoices"][0], "vendor_id": "V-999"}
    bad_invoice = world["invoices"][0]["invoice_id"]
    world["payments"] = []
    path = tmp_path / "world-unknown-vendor.json"
    path.write_text(json.dumps(world))

    stderr = payables_fails(cli_env, "seed", "--world", str(path))
    assert f"invoice {bad_invoice} names unknown vendor V-999" in stderr
    assert str(path) in stderr
    assert _world_counts(db_uri) == before
    assert (
        scalar(db_uri, "SELECT vendor_id FROM invoices WHERE invoice_id = %s", bad_invoice) == keep
    )


def test_seed_keeps_a_world_the_agent_has_paid_in_unless_told_to_discard_it(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = payables_json(cli_env, "run", "Pay INV-1001", "--user", "clerk-ana")["thread_id"]
    assert resume(cli_env, thread, "apr-1", "--approve")["status"] == "completed"
    paid = payments_for(db_uri, "INV-1001")
    assert len(paid) == 1

    # One mistyped `payables seed` against a live database would erase the payment and
    # its ledger row, the record that stops it being made twice.
    stderr = " ".join(payables_fails(cli_env, "seed").split())
    assert "already acted in the current world (1 schedule_payment" in stderr, stderr
    assert "nothing was changed" in stderr and "--discard-history" in stderr, stderr
    # The demo too, on a database the user configured (the embedded one is the demo's own).
    assert "already acted" in " ".join(payables_fails(cli_env, "demo").split())
    assert payments_for(db_uri, "INV-1001") == paid
    assert schedule_ledger(db_uri, thread) == 1

    proc = payables(cli_env, "seed", "--discard-history")
    assert proc.returncode == 0, explain(proc)
    assert payments_for(db_uri, "INV-1001") == []
    assert schedule_ledger(db_uri, thread) == 0
    assert "loaded" in proc.stdout


def incompressible(length: int) -> str:
    rng = random.Random(7)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length))


def test_seed_names_an_invoice_number_too_long_to_index(
    cli_env: dict[str, str], db_uri: str, tmp_path: Path
) -> None:
    before = _world_counts(db_uri)
    world = json.loads(SAMPLE_WORLD_PATH.read_text())
    world["invoices"][0]["invoice_number"] = incompressible(6000)
    path = tmp_path / "world-long-number.json"
    path.write_text(json.dumps(world))
    stderr = " ".join(payables_fails(cli_env, "seed", "--world", str(path)).split())
    assert "invoice_number" in stderr and "200 characters" in stderr, stderr
    assert _world_counts(db_uri) == before


async def test_a_world_the_database_cannot_index_is_refused_whole(db_uri: str) -> None:
    """The backstop behind validation: Postgres's own limits become a message, not a crash."""
    world = read_world(SAMPLE_WORLD_PATH)
    first = world.invoices[0].model_copy(update={"invoice_number": incompressible(6000)})
    too_big = world.model_copy(update={"invoices": [first, *world.invoices[1:]]})
    before = _world_counts(db_uri)
    async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
        with pytest.raises(WorldFileError, match="nothing was changed"):
            await load_world(conn, too_big)
    assert _world_counts(db_uri) == before


# --- 11. vendor bank change ------------------------------------------------------------


def test_vendor_bank_change_needs_two_controllers_and_emails_contact_on_file(
    cli_env: dict[str, str], db_uri: str
) -> None:
    old_account, contact = rows(
        db_uri, "SELECT remit_bank_account, contact_email FROM vendors WHERE vendor_id = 'V-006'"
    )[0]
    request = f"Change the bank account of vendor V-006 to {NEW_ACCOUNT}, per their letter"
    view = start(cli_env, request, user="clerk-ben")
    thread = view["thread_id"]
    assert view["route"] == "vendor_change"
    assert view["status"] == "interrupted"
    pending = view["pending_approvals"]
    assert [p["action"] for p in pending] == ["update_vendor_bank_account", "send_vendor_email"]
    assert len({p["interrupt_id"] for p in pending}) == 1
    update = pending[0]
    assert update["args"]["new_account"] == "****" + NEW_ACCOUNT[-4:]  # outputs are masked
    assert update["requirement"]["min_approvers"] == 2
    assert update["requirement"]["required_role"] == "controller"
    assert update["evidence"]["vendor"]["contact_email"] == contact

    first = resume(cli_env, thread, "ctl-1", "--approve", role="controller")
    assert only_pending(first)["action"] == "update_vendor_bank_account"
    assert scalar(db_uri, "SELECT remit_bank_account FROM vendors WHERE vendor_id = 'V-006'") == (
        old_account
    )
    assert scalar(db_uri, "SELECT count(*) FROM vendor_bank_changes") == 0
    assert scalar(db_uri, "SELECT count(*) FROM email_outbox") == 0

    done = resume(cli_env, thread, "ctl-2", "--approve", role="controller")
    assert done["status"] == "completed", done
    assert scalar(db_uri, "SELECT remit_bank_account FROM vendors WHERE vendor_id = 'V-006'") == (
        NEW_ACCOUNT
    )
    changes = rows(
        db_uri,
        "SELECT vendor_id, old_account, new_account, approved_by, thread_id"
        " FROM vendor_bank_changes",
    )
    assert len(changes) == 1, changes
    vendor_id, old, new, approved_by, change_thread = changes[0]
    assert (vendor_id, old, new, change_thread) == ("V-006", old_account, NEW_ACCOUNT, thread)
    assert approver_ids(approved_by) == {"ctl-1", "ctl-2"}
    outbox = rows(db_uri, "SELECT vendor_id, to_address, thread_id FROM email_outbox")
    assert outbox == [("V-006", contact, thread)]


# --- 12. policy question ---------------------------------------------------------------


def test_policy_question_cites_stored_passages(cli_env: dict[str, str], db_uri: str) -> None:
    view = start(
        cli_env, "What is our price variance tolerance for invoice matching?", user="clerk-ben"
    )
    assert view["status"] == "completed", view
    assert view["route"] == "policy_question"
    answer = view["result"]["answer"]
    citations = answer["citations"]
    assert citations
    stored = dict(
        rows(
            db_uri,
            "SELECT passage_id, body FROM policy_passages WHERE passage_id = ANY (%s)",
            citations,
        )
    )
    assert set(citations) == set(stored)
    for passage_id in citations:
        assert f"[{passage_id}]" in answer["answer"]
    assert any("tolerance" in body.lower() for body in stored.values())


# --- 13. demo --------------------------------------------------------------------------


def test_demo_runs_the_sample_inbox(cli_env: dict[str, str], db_uri: str) -> None:
    proc = payables(cli_env, "demo", "--json")
    assert proc.returncode == 0, explain(proc)
    # The sample inbox's bank change names a full account; the progress lines showed it.
    accounts = set(re.findall(r"\b[A-Z]{2}\d{2}[A-Z0-9]{10,30}\b", SAMPLE_INBOX_PATH.read_text()))
    assert accounts, "the sample inbox names no account any more: pick another probe"
    assert not [a for a in accounts if a in proc.stdout + proc.stderr], explain(proc)
    runs = json.loads(proc.stdout)["runs"]
    assert len(runs) >= 8
    statuses = [r["status"] for r in runs]
    assert "interrupted" in statuses
    assert "completed" in statuses
    assert "refused" in statuses
    assert "failed" not in statuses
    indexed = dict(
        rows(
            db_uri,
            "SELECT thread_id, status FROM runs WHERE thread_id = ANY (%s)",
            [r["thread_id"] for r in runs],
        )
    )
    assert indexed == {r["thread_id"]: r["status"] for r in runs}
    for r in runs:
        if r["status"] == "interrupted":
            assert checkpoint_count(db_uri, r["thread_id"]) > 0
    # Every exception, staging and refusal the inbox made is vouched for by the chain.
    verified = payables(cli_env, "audit", "verify")
    assert verified.returncode == 0, explain(verified)
