"""The AP world as data: the format of `payables seed --world FILE` and of eval scenarios.

The pydantic models here are the source of truth; `state/world.schema.json` is generated
from them (`payables world-schema`) and a test keeps the two in step.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import unicodedata
from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
from psycopg.rows import scalar_row, tuple_row
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runtime.errors import BadInput, WorldFileError, shown
from runtime.settings import PROJECT_ROOT
from state.audit import append_event, content_hash, seeded_invoice, seeded_payment, seeded_vendor
from state.db import THREAD_LOCK_CLASS

SCHEMA_PATH = Path(__file__).parent / "world.schema.json"
SAMPLE_WORLD_PATH = PROJECT_ROOT / "data" / "world.sample.json"

Money = Annotated[Decimal, Field(max_digits=14, decimal_places=2)]
Quantity = Annotated[Decimal, Field(max_digits=14, decimal_places=3)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD.")]
Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
# Line numbers are Postgres INTEGER columns.
LineNo = Annotated[int, Field(gt=0, le=2**31 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # JSON can spell NUL (\u0000) and lone surrogates (\ud800); Postgres stores neither.
        if isinstance(value, str) and (
            "\x00" in value or any(unicodedata.category(c) == "Cs" for c in value)
        ):
            raise ValueError("contains a NUL character or text that is not valid UTF-8")
        return value


class Vendor(_Strict):
    """A supplier we pay, with the remittance account on file (the vendor master)."""

    vendor_id: Ident = Field(description="Stable vendor id, e.g. V-001.")
    name: str = Field(min_length=1, description="Legal name.")
    remit_bank_account: str = Field(min_length=4, description="IBAN or account number on file.")
    remit_bank_name: str = Field(default="", description="Bank name on file.")
    contact_email: str = Field(
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", description="AP contact on file."
    )
    currency: Currency
    status: Literal["active", "blocked"] = "active"


class PurchaseOrderLine(_Strict):
    """One ordered item."""

    line_no: LineNo
    sku: str = Field(min_length=1)
    description: str
    quantity: Quantity = Field(gt=0)
    unit_price: Money = Field(ge=0)


class PurchaseOrder(_Strict):
    """A purchase order; the first leg of the three-way match."""

    po_number: Ident
    vendor_id: Ident
    currency: Currency
    status: Literal["open", "closed", "cancelled"] = "open"
    issued_on: date
    lines: list[PurchaseOrderLine] = Field(min_length=1)


class ReceiptLine(_Strict):
    """Quantity received against one PO line."""

    po_line_no: LineNo
    quantity_received: Quantity = Field(ge=0)


class GoodsReceipt(_Strict):
    """Goods received against a PO; the second leg of the three-way match."""

    receipt_id: Ident
    po_number: Ident
    received_on: date
    lines: list[ReceiptLine] = Field(min_length=1)


class InvoiceLine(_Strict):
    """One billed item; ``po_line_no`` links it to the PO line it bills."""

    line_no: LineNo
    po_line_no: LineNo | None = None
    description: str
    quantity: Quantity
    unit_price: Money
    amount: Money


class Invoice(_Strict):
    """A vendor invoice; the third leg. Free text here was written by a third party."""

    invoice_id: Ident = Field(description="Our id for the document, e.g. INV-1001.")
    vendor_id: Ident
    # Indexed (one number per vendor), and Postgres caps an index row at about 2.7 kB.
    invoice_number: str = Field(
        min_length=1, max_length=200, description="The vendor's own invoice number."
    )
    # Indexed once the invoice is accepted (staged, scheduled, paid): the same cap.
    po_number: str | None = Field(
        default=None, max_length=200, description="PO the vendor cites, if any."
    )
    invoice_date: date
    due_date: date | None = None
    currency: Currency
    subtotal: Money
    tax: Money = Decimal("0")
    total: Money
    bank_account: str | None = Field(default=None, description="Account printed on the invoice.")
    notes: str = ""
    document_text: str = ""
    status: Literal["received", "staged", "flagged", "scheduled", "paid", "rejected"] = "received"
    lines: list[InvoiceLine] = Field(min_length=1)


class Payment(_Strict):
    """A payment that already exists in the world (for example, an invoice already paid).

    It is in its invoice's currency and never more than the invoice's total.
    """

    payment_id: Ident
    invoice_id: Ident
    amount: Money = Field(gt=0)
    currency: Currency
    pay_on: date
    status: Literal["scheduled", "paid", "void"] = "paid"


class PolicyPassage(_Strict):
    """One citable passage of a policy document."""

    passage_id: Ident
    heading: str = Field(min_length=1)
    body: str = Field(min_length=1)


class PolicyDocument(_Strict):
    """An AP policy document, split into passages for search and citation."""

    doc_id: Ident
    title: str = Field(min_length=1)
    passages: list[PolicyPassage] = Field(min_length=1)


class World(_Strict):
    """Everything `payables seed` loads. Ids must be unique and references must resolve."""

    description: str = ""
    vendors: list[Vendor] = Field(min_length=1)
    purchase_orders: list[PurchaseOrder] = []
    goods_receipts: list[GoodsReceipt] = []
    invoices: list[Invoice] = []
    payments: list[Payment] = []
    policy_documents: list[PolicyDocument] = []

    @model_validator(mode="after")
    def _references_resolve(self) -> World:
        problems: list[str] = []

        def unique(kind: str, ids: list[str]) -> set[str]:
            seen: set[str] = set()
            for ident in ids:
                if ident in seen:
                    problems.append(f"duplicate {kind} id {ident!r}")
                seen.add(ident)
            return seen

        vendors = unique("vendor", [v.vendor_id for v in self.vendors])
        pos = unique("purchase order", [p.po_number for p in self.purchase_orders])
        unique("goods receipt", [r.receipt_id for r in self.goods_receipts])
        unique("invoice", [i.invoice_id for i in self.invoices])
        unique("payment", [p.payment_id for p in self.payments])
        unique("policy document", [d.doc_id for d in self.policy_documents])
        unique(
            "policy passage",
            [p.passage_id for d in self.policy_documents for p in d.passages],
        )

        # Line numbers key the line tables: (PO, line), (receipt, PO line), (invoice, line).
        def repeated(numbers: list[int]) -> list[int]:
            return sorted(n for n, times in Counter(numbers).items() if times > 1)

        for po in self.purchase_orders:
            for n in repeated([ln.line_no for ln in po.lines]):
                problems.append(f"purchase order {po.po_number} has line {n} more than once")
        for receipt in self.goods_receipts:
            for n in repeated([ln.po_line_no for ln in receipt.lines]):
                problems.append(
                    f"goods receipt {receipt.receipt_id} receives PO line {n} more than once"
                    " (one receipt line per PO line)"
                )
        for invoice in self.invoices:
            for n in repeated([ln.line_no for ln in invoice.lines]):
                problems.append(f"invoice {invoice.invoice_id} has line {n} more than once")
        live = Counter(p.invoice_id for p in self.payments if p.status != "void")
        for invoice_id, times in sorted(live.items()):
            if times > 1:
                problems.append(
                    f"invoice {invoice_id} has {times} live payments; at most one may be "
                    "scheduled or paid (mark the others void)"
                )
        po_lines = {(p.po_number, line.line_no) for p in self.purchase_orders for line in p.lines}
        for po in self.purchase_orders:
            if po.vendor_id not in vendors:
                problems.append(
                    f"purchase order {po.po_number} names unknown vendor {po.vendor_id}"
                )
        for receipt in self.goods_receipts:
            if receipt.po_number not in pos:
                problems.append(
                    f"goods receipt {receipt.receipt_id} names unknown PO {receipt.po_number}"
                )
            for rline in receipt.lines:
                if (receipt.po_number, rline.po_line_no) not in po_lines:
                    problems.append(
                        f"goods receipt {receipt.receipt_id} receives PO line "
                        f"{rline.po_line_no} that {receipt.po_number} does not have"
                    )
        for invoice in self.invoices:
            if invoice.vendor_id not in vendors:
                problems.append(
                    f"invoice {invoice.invoice_id} names unknown vendor {invoice.vendor_id}"
                )
        by_id = {i.invoice_id: i for i in self.invoices}
        for payment in self.payments:
            paid = by_id.get(payment.invoice_id)
            if paid is None:
                problems.append(
                    f"payment {payment.payment_id} pays unknown invoice {payment.invoice_id}"
                )
                continue
            # The database holds both rules too (migration 0014), for every writer.
            if payment.currency != paid.currency:
                problems.append(
                    f"payment {payment.payment_id} is in {payment.currency}, but invoice "
                    f"{paid.invoice_id} is in {paid.currency}; a payment is in the currency "
                    "of the invoice it pays"
                )
            elif payment.amount > paid.total:
                problems.append(
                    f"payment {payment.payment_id} of {payment.amount} {payment.currency} is "
                    f"more than the total {paid.total} of invoice {paid.invoice_id}; a payment "
                    "never exceeds the total of the invoice it pays"
                )
        if problems:
            raise ValueError(_PROBLEMS_SEP.join(problems))
        return self


_PROBLEMS_SEP = "\n"
"""Between the cross-reference problems in one error: `parse_world` lists each on its own."""


def world_json_schema() -> dict[str, Any]:
    """The JSON Schema of a world file, as committed in `state/world.schema.json`."""
    schema = World.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://payables-agent.dev/schemas/world.schema.json"
    return schema


def parse_world(data: Any, *, source: str = "world") -> World:
    """Validate raw JSON data as a `World`, with every problem named."""
    try:
        return World.model_validate(data)
    except ValidationError as exc:
        lines = []
        errors = exc.errors(include_url=False)
        for err in errors:
            where = shown(".".join(str(p) for p in err["loc"])) or "(top level)"
            message = str(err["msg"])
            if err["type"] == "value_error" and not err["loc"]:  # the cross-reference check
                message = message.removeprefix("Value error, ")
            for problem in message.split(_PROBLEMS_SEP):
                lines.append(f"  - {where}: {shown(problem, 2000)}")
        # Ids and references are checked once every record is well formed (pydantic runs
        # the model's own check last), so fixing these can bring more to light.
        cross_checked = any(e["type"] == "value_error" and not e["loc"] for e in errors)
        later = "" if cross_checked else " Ids and references are checked once these are fixed."
        raise WorldFileError(
            f"{source} is not a valid world ({len(lines)} problem(s)):\n"
            + "\n".join(lines)
            + f"\nThe format is documented in {SCHEMA_PATH.relative_to(PROJECT_ROOT)}."
            + later
        ) from exc


def read_world(path: Path) -> World:
    """Read and validate a world file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorldFileError(f"Cannot read world file {path}: {exc}.") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorldFileError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from exc
    except RecursionError as exc:
        raise WorldFileError(f"{path} nests arrays or objects too deeply to read.") from exc
    except ValueError as exc:  # e.g. an integer longer than Python converts (4300 digits)
        raise WorldFileError(f"{path} is not usable JSON: {exc}.") from exc
    return parse_world(data, source=str(path))


# Replacing a world clears everything that refers to the old one, in one transaction:
# threads too, since a paused approval about the old world must not resume in the new one.
# Never audit_events: the audit chain outlives worlds (and its trigger refuses TRUNCATE).
_WORLD_TABLES = (
    "checkpoints, checkpoint_blobs, checkpoint_writes, runs, run_admissions, dead_letters, "
    "answer_claims, model_calls_started, approval_decisions, approval_payees, tool_calls, "
    "step_metrics, "
    "vendor_bank_changes, email_outbox, invoice_exceptions, "
    "payments, invoice_lines, invoices, receipt_lines, goods_receipts, po_lines, "
    "purchase_orders, policy_passages, policy_documents, vendors"
)


# What the agent did that cannot be undone: the ledger rows of committed irreversible and
# destructive calls (payments scheduled, bank details changed, emails sent).
_AGENT_HISTORY = (
    # Each call's tenant is its thread's (the router indexes a thread before any call).
    "SELECT COALESCE(r.tenant, (SELECT a.tenant FROM audit_events AS a"
    " WHERE a.thread_id = t.thread_id LIMIT 1), 'default') AS tenant, t.tool, count(*)"
    " FROM tool_calls AS t LEFT JOIN runs AS r ON r.thread_id = t.thread_id"
    " WHERE t.tier IN ('irreversible', 'destructive') GROUP BY 1, 2 ORDER BY 1, 2"
)


async def load_world(
    conn: psycopg.AsyncConnection[Any],
    world: World,
    *,
    protect_history: bool = False,
    tenant: str = "default",
) -> dict[str, int]:
    """Replace the AP world with ``world`` atomically; return row counts per kind.

    The seed is recorded in ``tenant``'s audit chain (the seeding operator's): a
    ``world_seeded`` event listing the payments, invoices and vendors it wrote, which
    `state.audit.verify_chain` holds them to.

    Every thread (checkpoints and the run index) is forgotten with the old world. While a
    run is in progress, holding its thread's lock, nothing is replaced: `BadInput`. Runs
    driven by `runtime.agent.Agent` (the CLI, evals) and runs the LangGraph server executes
    (`graphs.payables.served_graph`) both hold it. With ``protect_history`` (`payables
    seed` without ``--discard-history``), a world in which the agent has made payments,
    bank changes or emails is not replaced either: `BadInput` naming them.
    """
    try:
        async with conn.transaction():
            erased = await _agent_history(conn)
            if protect_history and erased:
                _refuse_erasing_history(erased)
            await _replace_world(conn, world)
            await _record_erased_history(conn, world, erased)
            await _record_seed(conn, world, tenant)
    except (psycopg.IntegrityError, psycopg.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        # Validation should catch every such problem first; if one slips through, the
        # transaction has rolled back and the user still gets a message, not a traceback.
        detail = exc.diag.message_detail or ""
        raise WorldFileError(
            "The database refused the world, so nothing was changed: "
            f"{shown(exc.diag.message_primary or str(exc), 300)}"
            + (f" ({shown(detail, 300)})" if detail else "")
            + ". Fix the file and seed again."
        ) from exc
    return {
        "vendors": len(world.vendors),
        "purchase_orders": len(world.purchase_orders),
        "goods_receipts": len(world.goods_receipts),
        "invoices": len(world.invoices),
        "payments": len(world.payments),
        "policy_passages": sum(len(d.passages) for d in world.policy_documents),
    }


# Thread locks other sessions of this database hold: runs in progress (`THREAD_LOCK_CLASS`).
_RUNS_IN_PROGRESS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND classid = %s::oid AND objsubid = 2 AND pid <> pg_backend_pid()"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def _agent_history(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str, int]]:
    """The committed irreversible and destructive calls: (tenant, tool, calls), sorted."""
    # The tables locked as the truncate would lock them (same order, so no new deadlock),
    # so a payment committing now is either counted here or waits for the new world.
    await conn.execute(f"LOCK TABLE {_WORLD_TABLES} IN ACCESS EXCLUSIVE MODE")
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_AGENT_HISTORY)
        return [
            (str(tenant), str(tool), int(calls)) for tenant, tool, calls in await cur.fetchall()
        ]


async def _record_erased_history(
    conn: psycopg.AsyncConnection[Any], world: World, history: list[tuple[str, str, int]]
) -> None:
    """Say in each tenant's audit chain what replacing the world erased of its agent's work.

    The chain outlives worlds; without this row, the payments, bank changes and emails a
    seed erases (`--discard-history`), with their ledger rows and approvals, left no trace
    in it. Appended last in the seed's transaction (`state.audit`: append last), so the
    erasure and its record commit together.
    """
    by_tenant: dict[str, dict[str, int]] = {}
    for tenant, tool, calls in history:
        by_tenant.setdefault(tenant, {})[tool] = calls
    for tenant, erased in sorted(by_tenant.items()):
        await append_event(
            conn,
            tenant=tenant,
            thread_id=None,
            kind="world_replaced",
            payload={
                "erased_calls": erased,
                "world": shown(world.description, 200),
                "world_digest": content_hash(world.model_dump(mode="json")),
                "operator": _operator(),
            },
        )


async def _record_seed(conn: psycopg.AsyncConnection[Any], world: World, tenant: str) -> None:
    """Record what the seed wrote in ``tenant``'s chain, last in the seed's transaction.

    Its payments have no ledger row (no gate wrote them): this record is what `audit
    verify` holds them to, so a payment given a ``seed:`` key later, or a seeded one
    edited, is found. Its invoices and vendors are listed with what only gated calls change
    (an invoice's status, a vendor's account) and what nothing changes (an invoice's
    vendor, total and currency; a vendor's status), so an edit of either is found too.
    """
    payments = [seeded_payment(row) for row in _payment_rows(world)]
    invoices = {i.invoice_id: seeded_invoice(dict(i)) for i in world.invoices}
    vendors = {v.vendor_id: seeded_vendor(dict(v)) for v in world.vendors}
    await append_event(
        conn,
        tenant=tenant,
        thread_id=None,
        kind="world_seeded",
        payload={
            "world": shown(world.description, 200),
            "world_digest": content_hash(world.model_dump(mode="json")),
            "operator": _operator(),
            "payments": payments,
            "invoices": invoices,
            "vendors": vendors,
        },
    )


def _payment_rows(world: World) -> list[dict[str, Any]]:
    """The ``payments`` rows the seed writes: each to its vendor's master account."""
    invoices = {i.invoice_id: i for i in world.invoices}
    vendors = {v.vendor_id: v for v in world.vendors}
    rows = []
    for p in world.payments:
        vendor_id = invoices[p.invoice_id].vendor_id
        rows.append(
            {
                "payment_id": p.payment_id,
                "invoice_id": p.invoice_id,
                "vendor_id": vendor_id,
                # Two places, as the column stores it, so the seed's record lists it the same.
                "amount": p.amount.quantize(Decimal("0.01")),
                "currency": p.currency,
                "payee_account": vendors[vendor_id].remit_bank_account,
                "pay_on": p.pay_on,
                "status": p.status,
                "idempotency_key": f"seed:{p.payment_id}",
            }
        )
    return rows


def _operator() -> str:
    """Who seeded, as the operating system names them (the CLI has no other identity)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container's), nor in the env
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _refuse_erasing_history(history: list[tuple[str, str, int]]) -> None:
    calls: Counter[str] = Counter()
    for _, tool, count in history:
        calls[tool] += count
    if calls:
        done = ", ".join(f"{count} {tool}" for tool, count in sorted(calls.items()))
        raise BadInput(
            f"The agent has already acted in the current world ({done}: committed calls that "
            "cannot be undone). Seeding would erase them with their payments and ledger "
            "rows (the audit chain stays), so nothing was changed. To replace the world "
            "anyway, seed with --discard-history; to keep this one, seed another database "
            "(PAYABLES_DATABASE_URI)."
        )


async def _replace_world(conn: psycopg.AsyncConnection[Any], world: World) -> None:
    await conn.execute(f"TRUNCATE {_WORLD_TABLES} RESTART IDENTITY")
    # A run in progress would go on writing into the new world (checkpoints of a thread it
    # forgot, a payment it just committed erased under it). Checked once the truncate holds
    # its tables: a run that takes its lock from now on waits for this transaction, then
    # finds the new world.
    async with conn.cursor(row_factory=scalar_row) as counting:
        await counting.execute(_RUNS_IN_PROGRESS, (THREAD_LOCK_CLASS,))
        running = await counting.fetchone()
    if running:
        raise BadInput(
            f"{running} run{' is' if running == 1 else 's are'} in progress; replacing the "
            "world now would erase what they write (payments too) while they go on. Wait "
            "for them to finish or pause (`payables threads`), then seed again; nothing "
            "was changed."
        )
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO vendors (vendor_id, name, remit_bank_account, remit_bank_name,"
            " contact_email, currency, status) VALUES (%s,%s,%s,%s,%s,%s,%s)",
            [
                (
                    v.vendor_id,
                    v.name,
                    v.remit_bank_account,
                    v.remit_bank_name,
                    v.contact_email,
                    v.currency,
                    v.status,
                )
                for v in world.vendors
            ],
        )
        await cur.executemany(
            "INSERT INTO purchase_orders (po_number, vendor_id, currency, status, issued_on)"
            " VALUES (%s,%s,%s,%s,%s)",
            [
                (p.po_number, p.vendor_id, p.currency, p.status, p.issued_on)
                for p in world.purchase_orders
            ],
        )
        await cur.executemany(
            "INSERT INTO po_lines (po_number, line_no, sku, description, quantity, unit_price)"
            " VALUES (%s,%s,%s,%s,%s,%s)",
            [
                (p.po_number, ln.line_no, ln.sku, ln.description, ln.quantity, ln.unit_price)
                for p in world.purchase_orders
                for ln in p.lines
            ],
        )
        await cur.executemany(
            "INSERT INTO goods_receipts (receipt_id, po_number, received_on) VALUES (%s,%s,%s)",
            [(r.receipt_id, r.po_number, r.received_on) for r in world.goods_receipts],
        )
        await cur.executemany(
            "INSERT INTO receipt_lines (receipt_id, po_line_no, quantity_received)"
            " VALUES (%s,%s,%s)",
            [
                (r.receipt_id, ln.po_line_no, ln.quantity_received)
                for r in world.goods_receipts
                for ln in r.lines
            ],
        )
        await cur.executemany(
            "INSERT INTO invoices (invoice_id, vendor_id, invoice_number, po_number,"
            " invoice_date, due_date, currency, subtotal, tax, total, bank_account, notes,"
            " document_text, status) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                (
                    i.invoice_id,
                    i.vendor_id,
                    i.invoice_number,
                    i.po_number,
                    i.invoice_date,
                    i.due_date,
                    i.currency,
                    i.subtotal,
                    i.tax,
                    i.total,
                    i.bank_account,
                    i.notes,
                    i.document_text,
                    i.status,
                )
                for i in world.invoices
            ],
        )
        await cur.executemany(
            "INSERT INTO invoice_lines (invoice_id, line_no, po_line_no, description,"
            " quantity, unit_price, amount) VALUES (%s,%s,%s,%s,%s,%s,%s)",
            [
                (
                    i.invoice_id,
                    ln.line_no,
                    ln.po_line_no,
                    ln.description,
                    ln.quantity,
                    ln.unit_price,
                    ln.amount,
                )
                for i in world.invoices
                for ln in i.lines
            ],
        )
        await cur.executemany(
            "INSERT INTO payments (payment_id, invoice_id, vendor_id, amount, currency,"
            " payee_account, pay_on, status, idempotency_key) VALUES (%(payment_id)s,"
            " %(invoice_id)s, %(vendor_id)s, %(amount)s, %(currency)s, %(payee_account)s,"
            " %(pay_on)s, %(status)s, %(idempotency_key)s)",
            _payment_rows(world),
        )
        await cur.executemany(
            "INSERT INTO policy_documents (doc_id, title) VALUES (%s,%s)",
            [(d.doc_id, d.title) for d in world.policy_documents],
        )
        await cur.executemany(
            "INSERT INTO policy_passages (passage_id, doc_id, heading, body) VALUES (%s,%s,%s,%s)",
            [
                (p.passage_id, d.doc_id, p.heading, p.body)
                for d in world.policy_documents
                for p in d.passages
            ],
        )
