"""World files: any file `payables seed --world` is given either loads whole or is refused
with a `WorldFileError` naming every problem, and a refused file changes nothing.

Pure properties run `state.world.read_world` and `parse_world` on generated files and on
mutations of a small world cut from the sample (missing keys, wrong types, duplicates,
dangling references, negative and huge numbers, text Postgres cannot store). The database
property loads each mutation with `load_world` on real Postgres: whatever validates must
load, and a refused load leaves the previous world exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime.errors import WorldFileError
from state.db import CONNECTION_KWARGS
from state.world import SAMPLE_WORLD_PATH, World, load_world, parse_world, read_world
from tests.property.checks import db_examples
from tests.property.strategies import (
    JSON_SCALARS,
    JSON_VALUES,
    huge_text,
    is_json_text,
    mutations_of,
    nasty_text,
)

_VENDORS = {"V-001", "V-002", "V-005"}
_POS = {"PO-2001", "PO-2002", "PO-2006"}
_INVOICES = {"INV-1001", "INV-1002", "INV-1006"}  # INV-1006 is already paid


def small_world() -> dict[str, Any]:
    """Three vendors with their POs, receipts, invoices, one payment and one policy."""
    world = json.loads(SAMPLE_WORLD_PATH.read_text())
    pos = [p for p in world["purchase_orders"] if p["po_number"] in _POS]
    po_numbers = {p["po_number"] for p in pos}
    invoices = [i for i in world["invoices"] if i["invoice_id"] in _INVOICES]
    for invoice in invoices:
        invoice["document_text"] = invoice["document_text"][:80]
    invoice_ids = {i["invoice_id"] for i in invoices}
    return {
        "description": "a small world for property tests",
        "vendors": [v for v in world["vendors"] if v["vendor_id"] in _VENDORS],
        "purchase_orders": pos,
        "goods_receipts": [r for r in world["goods_receipts"] if r["po_number"] in po_numbers],
        "invoices": invoices,
        "payments": [p for p in world["payments"] if p["invoice_id"] in invoice_ids],
        "policy_documents": [
            {**d, "passages": d["passages"][:2]} for d in world["policy_documents"][:1]
        ],
    }


SMALL_WORLD = small_world()

# Values a careless export or a hostile file puts where a world expects something else.
WORLD_VALUES = st.one_of(
    JSON_VALUES,
    JSON_SCALARS,
    st.integers(min_value=2**31 - 2, max_value=2**63),
    st.integers(max_value=0),
    st.sampled_from(
        [
            "\x00",
            "INV\x00",
            "\ud800",
            "9999999999999.99",
            "99999999999999.999",
            "0.001",
            "-0.01",
            "1e3",
            "NaN",
            "9999-12-31",
            "0001-01-01",
            "2026-02-30",
            "V-001",
            "PO-2001",
            "INV-1001",
            "usd",
        ]
    ),
)
WORLDS = mutations_of(SMALL_WORLD, values=WORLD_VALUES)


def assert_clear(error: WorldFileError) -> None:
    message = str(error)
    assert len(message) > 20
    assert all(c.isprintable() or c == "\n" for c in message), message


def test_the_small_world_is_valid() -> None:
    world = parse_world(SMALL_WORLD)
    assert len(world.vendors) == 3 and len(world.invoices) == 3 and len(world.payments) == 1


@given(WORLDS)
@example({**SMALL_WORLD, "payments": SMALL_WORLD["payments"] * 2})
@example({**SMALL_WORLD, "vendors": [{**SMALL_WORLD["vendors"][0], "name": "Acme\x00"}]})
def test_parse_world_returns_a_world_or_names_the_problems(data: Any) -> None:
    try:
        world = parse_world(data, source="generated")
    except WorldFileError as exc:
        assert_clear(exc)
    else:
        assert isinstance(world, World)


FILE_TEXTS = st.one_of(
    WORLDS.filter(is_json_text).map(json.dumps),
    nasty_text(max_size=200),
    st.builds(lambda depth: "[" * depth + "]" * depth, st.integers(1, 200_000)),
    st.builds(lambda digits: '{"vendors": [' + "9" * digits + "]}", st.integers(1, 10_000)),
    huge_text(1, 5000),
    st.sampled_from(["", "null", "{", "\ufeff{}", '{"vendors": NaN}', "[]", "1e999999"]),
)


@given(st.one_of(FILE_TEXTS.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary()))
@example(b"[" * 100_000)
@example(b'{"vendors": [' + b"9" * 5000 + b"]}")
@example(b"\xff\xfe{}")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_read_world_loads_or_refuses_any_file(tmp_path: Path, content: bytes) -> None:
    # tmp_path is shared by the examples; each writes the same file before reading it.
    path = tmp_path / "world.json"
    path.write_bytes(content)
    try:
        world = read_world(path)
    except WorldFileError as exc:
        assert_clear(exc)
    else:
        assert isinstance(world, World)


def test_read_world_refuses_a_missing_file_or_a_directory(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.json", tmp_path):
        with pytest.raises(WorldFileError) as raised:
            read_world(path)
        assert_clear(raised.value)


# --- loading into Postgres ---------------------------------------------------------------

_SNAPSHOT = {
    table: f"SELECT * FROM {table} ORDER BY 1, 2"
    for table in (
        "vendors",
        "purchase_orders",
        "po_lines",
        "goods_receipts",
        "receipt_lines",
        "invoices",
        "invoice_lines",
        "payments",
        "policy_documents",
    )
}
_SNAPSHOT["policy_passages"] = "SELECT passage_id, doc_id, heading, body FROM policy_passages"
_SNAPSHOT["runs"] = "SELECT thread_id, status FROM runs ORDER BY 1"


async def snapshot(conn: psycopg.AsyncConnection[Any]) -> dict[str, list[Any]]:
    found = {}
    for table, query in _SNAPSHOT.items():
        cur = await conn.execute(query)
        found[table] = sorted(map(repr, await cur.fetchall()))
    return found


def test_load_world_loads_whatever_validates_and_a_refused_world_changes_nothing(
    db_uri: str,
) -> None:
    loaded: list[bool] = []

    @settings(max_examples=db_examples(30))
    @given(WORLDS)
    @example({**SMALL_WORLD, "payments": SMALL_WORLD["payments"] * 2})
    @example(
        {
            **SMALL_WORLD,
            "payments": [
                SMALL_WORLD["payments"][0],
                {**SMALL_WORLD["payments"][0], "payment_id": "PAY-0002"},
            ],
        }
    )
    @example(
        {
            **SMALL_WORLD,
            "purchase_orders": [
                {**po, "lines": po["lines"] + po["lines"][:1]}
                for po in SMALL_WORLD["purchase_orders"]
            ],
        }
    )
    @example(
        {
            **SMALL_WORLD,
            "invoices": [
                {**inv, "lines": [{**inv["lines"][0], "line_no": 2**31}]}
                for inv in SMALL_WORLD["invoices"]
            ],
        }
    )
    @example({**SMALL_WORLD, "description": "\x00"})
    @example(SMALL_WORLD)
    def load_one(data: Any) -> None:
        async def go() -> None:
            async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
                before = await snapshot(conn)
                try:
                    world = parse_world(data, source="generated")
                except WorldFileError:
                    return  # refused before the database saw it (the pure test covers it)
                try:
                    counts = await load_world(conn, world)
                except WorldFileError as exc:
                    assert_clear(exc)
                    assert await snapshot(conn) == before
                    raise AssertionError(f"validated, but the database refused it: {exc}") from exc
                loaded.append(True)
                assert counts["vendors"] == len(world.vendors)
                assert counts["invoices"] == len(world.invoices)
                assert (await snapshot(conn))["runs"] == []

        asyncio.run(go())

    load_one()
    assert loaded


def test_a_world_the_database_refuses_rolls_back_whole(db_uri: str) -> None:
    # Should validation ever miss a database rule, the load must still be refused whole.
    # model_copy does not validate: a duplicate vendor with a four-letter currency breaks
    # two rules that `parse_world` would have caught.
    world = parse_world(SMALL_WORLD)
    broken = world.model_copy(
        update={
            "vendors": [*world.vendors, world.vendors[0].model_copy(update={"currency": "USDX"})]
        }
    )

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_uri, **CONNECTION_KWARGS) as conn:
            before = await snapshot(conn)
            with pytest.raises(WorldFileError) as raised:
                await load_world(conn, broken)
            assert_clear(raised.value)
            assert await snapshot(conn) == before

    asyncio.run(go())
