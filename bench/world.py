"""The bench's private database: the sample world plus clean invoices to spend.

A benchmark run pays invoices, and an invoice is paid only once, so the approval flow and
the throughput runs need a supply of invoices that each take the same path. The bench world
is the sample world plus ``clones`` copies of the clean match INV-1001 (its PO, goods
receipts and lines), under new ids and invoice numbers so that no duplicate check fires.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from runtime.settings import PROJECT_ROOT
from state.db import CONNECTION_KWARGS, embedded_uri, migrate, redact_uri
from state.world import SAMPLE_WORLD_PATH, World, load_world, parse_world

TEMPLATE_INVOICE = "INV-1001"
"""The sample world's clean match that every bench invoice copies."""
FIRST_CLONE = 700001
BENCH_DATA_DIR = PROJECT_ROOT / ".data" / "bench"
"""Where the bench's own embedded Postgres keeps its cluster when DATABASE_URI is unset."""


class BenchError(RuntimeError):
    """The bench cannot run here; the message says why and what to do."""


def clone_invoice_id(index: int) -> str:
    """The id of bench invoice ``index`` (0-based), e.g. ``INV-700001``."""
    return f"INV-{FIRST_CLONE + index}"


def bench_world(clones: int, source: Path = SAMPLE_WORLD_PATH) -> World:
    """The sample world with ``clones`` copies of `TEMPLATE_INVOICE` (ids from `FIRST_CLONE`)."""
    data: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    invoice = next(i for i in data["invoices"] if i["invoice_id"] == TEMPLATE_INVOICE)
    po = next(p for p in data["purchase_orders"] if p["po_number"] == invoice["po_number"])
    receipts = [r for r in data["goods_receipts"] if r["po_number"] == po["po_number"]]
    for index in range(clones):
        number = FIRST_CLONE + index
        po_number = f"PO-{number}"
        vendor_invoice_number = f"BENCH-{number}"
        new_po = copy.deepcopy(po)
        new_po["po_number"] = po_number
        data["purchase_orders"].append(new_po)
        for r_index, receipt in enumerate(receipts):
            new_receipt = copy.deepcopy(receipt)
            new_receipt["receipt_id"] = f"GR-{number}-{r_index + 1}"
            new_receipt["po_number"] = po_number
            data["goods_receipts"].append(new_receipt)
        new_invoice = copy.deepcopy(invoice)
        new_invoice["invoice_id"] = clone_invoice_id(index)
        new_invoice["po_number"] = po_number
        new_invoice["invoice_number"] = vendor_invoice_number
        new_invoice["document_text"] = (
            invoice["document_text"]
            .replace(invoice["invoice_number"], vendor_invoice_number)
            .replace(invoice["po_number"], po_number)
        )
        data["invoices"].append(new_invoice)
    return parse_world(data, source=f"bench world ({clones} clones of {TEMPLATE_INVOICE})")


def server_uri() -> str:
    """The Postgres server to create the bench database on.

    `DATABASE_URI`'s server when set (a new database on it, never the one it names), else
    an embedded Postgres of the bench's own under ``.data/bench``.
    """
    return os.environ.get("DATABASE_URI") or embedded_uri(BENCH_DATA_DIR)


def with_dbname(uri: str, dbname: str) -> str:
    """``uri`` pointing at database ``dbname``."""
    info = psycopg.conninfo.conninfo_to_dict(uri)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _admin(uri: str, statement: sql.Composed) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(statement)


@asynccontextmanager
async def fresh_database(clones: int, server: str | None = None) -> AsyncIterator[str]:
    """A new database, migrated and seeded with `bench_world`; dropped on exit."""
    server = server or server_uri()
    name = f"payables_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    try:
        _admin(server, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        raise BenchError(
            f"The bench cannot reach Postgres at {redact_uri(server)} ({_one_line(exc)}). "
            "Check DATABASE_URI, or unset it to bench on an embedded Postgres of its own "
            "(.data/bench)."
        ) from exc
    except psycopg.Error as exc:
        raise BenchError(
            f"The bench could not create its private database on {redact_uri(server)} "
            f"({_one_line(exc)}). It needs a role that may CREATE DATABASE there; or unset "
            "DATABASE_URI to bench on an embedded Postgres of its own (.data/bench)."
        ) from exc
    uri = with_dbname(server, name)
    try:
        await migrate(uri)
        async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
            await load_world(conn, bench_world(clones))
        yield uri
    finally:
        _admin(server, drop)
