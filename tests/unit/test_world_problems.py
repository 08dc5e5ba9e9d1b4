"""A world file's problems are each listed, and counted, on a line of their own."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.errors import WorldFileError
from state.world import SAMPLE_WORLD_PATH, parse_world


def sample() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SAMPLE_WORLD_PATH.read_text())
    return data


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(WorldFileError) as refused:
        parse_world(data, source="w.json")
    return str(refused.value)


def test_reference_problems_are_counted_and_listed_one_per_line() -> None:
    data = sample()
    data["vendors"].append(dict(data["vendors"][0]))  # a duplicate id
    data["invoices"][0]["vendor_id"] = "V-999"
    text = problems(data)
    # Once "1 problem(s)" above one line holding both, joined by "; ".
    assert "w.json is not a valid world (2 problem(s)):" in text, text
    lines = [line for line in text.splitlines() if line.startswith("  - ")]
    assert lines == [
        f"  - (top level): duplicate vendor id {data['vendors'][0]['vendor_id']!r}",
        f"  - (top level): invoice {data['invoices'][0]['invoice_id']} names unknown vendor V-999",
    ], text
    assert "checked once these are fixed" not in text


def test_field_problems_say_the_references_are_checked_next() -> None:
    data = sample()
    data["invoices"][0]["vendor_id"] = "V-999"  # found only once the fields are valid
    data["vendors"][0]["currency"] = "DOLLARS"
    text = problems(data)
    assert "(1 problem(s))" in text and "vendors.0.currency" in text, text
    assert text.endswith("Ids and references are checked once these are fixed."), text
