"""Generators of hostile and careless input, shared by the property tests."""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from hypothesis import strategies as st

# Characters that have broken real systems: what Postgres cannot store (NUL, lone
# surrogates, as Python makes from undecodable bytes), bidi overrides that reorder what a
# reviewer sees, zero-width and BOM characters, terminal escapes, line separators that
# `str.splitlines` honours, quoting and format characters, and our own wrapper tags.
NASTY_CHARS = (
    "\x00",
    "\ud800",
    "\udcff",
    "\u202e",
    "\u202a",
    "\u2066",
    "\u2069",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\x1b",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\r",
    "\n",
    "\t",
    "\xa0",
    "\uffff",
    "\U0010ffff",
    "'",
    '"',
    "\\",
    "%s",
    "%(x)s",
    "{}",
    "[/]",
    "[bold]",
    "</untrusted>",
    "<untrusted source='clerk'>",
    "---",
    "> ",
    "INV-1001",
    "V-001",
    "PO-2001",
    "DE89370400440532013000",
)

ANY_CHAR = st.one_of(st.characters(), st.sampled_from(NASTY_CHARS))


def nasty_text(*, min_size: int = 0, max_size: int = 60) -> st.SearchStrategy[str]:
    """Any unicode (surrogates and controls included), salted with `NASTY_CHARS`."""
    return st.lists(ANY_CHAR, min_size=min_size, max_size=max_size).map("".join)


def huge_text(min_chars: int, max_chars: int) -> st.SearchStrategy[str]:
    """A long string built by repetition (generating it character by character is slow)."""
    return st.builds(
        lambda unit, n: (unit * (n // max(len(unit), 1) + 1))[:n],
        nasty_text(min_size=1, max_size=12),
        st.integers(min_chars, max_chars),
    )


WHITESPACE = st.lists(
    st.sampled_from([" ", "\t", "\n", "\r", "\xa0", "\u2003", "\u3000", "\u2028"]), max_size=20
).map("".join)


def storable(text: str) -> bool:
    """Whether Postgres can store ``text`` in a TEXT or JSONB column at all."""
    return "\x00" not in text and not any(unicodedata.category(c) == "Cs" for c in text)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text(max_size=20),
    st.sampled_from(["", " ", "0", "-1", "1e309", "NaN", "null", "true", "[]", "{}"]),
)

# Everything `json.loads` can return (it accepts NaN and Infinity), nested a few levels.
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(nasty_text(max_size=12), inner, max_size=4),
    ),
    max_leaves=12,
)


def is_json_text(value: Any) -> bool:
    """Whether ``value`` survives `json.dumps` (for values headed into JSON files)."""
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def finite(value: Any) -> bool:
    """No NaN or infinity anywhere inside ``value``."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite(v) for v in value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return True


# --- mutations of a valid value ------------------------------------------------------------

JsonPath = tuple[str | int, ...]


def paths(value: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    """Every place inside ``value`` (the root too) a mutation can hit."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found.extend(paths(inner, (*prefix, key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found.extend(paths(inner, (*prefix, index)))
    return found


def _parent(root: Any, path: JsonPath) -> tuple[Any, str | int] | None:
    node = root
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    if not isinstance(node, dict | list):
        return None
    return node, path[-1]


def _apply(root: Any, path: JsonPath, op: str, value: Any, key: str) -> Any:
    if not path:
        return {"replace": value, "wrap": [root], "stringify": json.dumps(root)}.get(op, value)
    found = _parent(root, path)
    if found is None:
        return root
    parent, step = found
    if isinstance(parent, list) and not (isinstance(step, int) and step < len(parent)):
        return root
    if isinstance(parent, dict) and step not in parent:
        return root
    current = parent[step]  # type: ignore[index]
    if op == "replace":
        parent[step] = value  # type: ignore[index]
    elif op == "delete":
        del parent[step]  # type: ignore[arg-type]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(int(step), json.loads(json.dumps(current)))
    elif op == "add_key" and isinstance(current, dict):
        current[key] = value
    elif op == "wrap":
        parent[step] = [current]  # type: ignore[index]
    elif op == "stringify":
        parent[step] = current if isinstance(current, str) else json.dumps(current)  # type: ignore[index]
    elif op == "null":
        parent[step] = None  # type: ignore[index]
    elif op == "huge" and isinstance(current, int | float) and not isinstance(current, bool):
        parent[step] = current * 10**20 + 1  # type: ignore[index]
    elif op == "negate" and isinstance(current, int | float) and not isinstance(current, bool):
        parent[step] = -current  # type: ignore[index]
    elif op == "negate" and isinstance(current, str) and current[:1].isdigit():
        parent[step] = "-" + current  # type: ignore[index]
    return root


MUTATION_OPS = (
    "replace",
    "delete",
    "duplicate",
    "add_key",
    "wrap",
    "stringify",
    "null",
    "huge",
    "negate",
)


def mutations_of(
    base: Any, *, values: st.SearchStrategy[Any] = JSON_VALUES, max_mutations: int = 3
) -> st.SearchStrategy[Any]:
    """``base`` (JSON data) with one to ``max_mutations`` edits: values replaced by anything,
    keys deleted or added, list items duplicated, values wrapped, stringified, nulled,
    made huge or negative."""
    where = paths(base)
    mutation = st.tuples(
        st.sampled_from(where), st.sampled_from(MUTATION_OPS), values, nasty_text(max_size=10)
    )

    def build(edits: list[tuple[JsonPath, str, Any, str]]) -> Any:
        value = json.loads(json.dumps(base))
        for path, op, replacement, key in edits:
            value = _apply(value, path, op, replacement, key)
        return value

    return st.lists(mutation, min_size=1, max_size=max_mutations).map(build)
