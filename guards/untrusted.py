"""Third-party text reaches a model only inside explicit untrusted wrappers.

Invoice notes and document text, line descriptions, attachments (vendor emails) and policy
text fetched for answers were written by someone other than the clerk. They are data: the
prompts say so, and the wrappers make it visible where such text starts and ends. A
closing tag inside the text cannot end the wrapper early.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from guards.redaction import redact_text
from guards.visible import visible_with_origins

# A tag as read: "<", any spaces, an optional "/", the name (any case).
_TAG_RE = re.compile(r"<\s*/?\s*untrusted", re.IGNORECASE)

# For each tool, where its result carries third-party text.
UNTRUSTED_FIELDS: dict[str, tuple[str, ...]] = {
    # The vendor writes its invoice number and the PO it cites as well as the free text.
    "get_invoice": ("invoice_number", "po_number", "notes", "document_text", "lines[].description"),
    "find_invoices": ("invoices[].invoice_number", "invoices[].po_number"),
    # The match repeats the vendor's line descriptions, also inside exception details.
    "compute_match": ("lines[].description", "exceptions[].detail"),
    "search_policy": ("passages[].body",),
}

ECHOING_TOOLS: frozenset[str] = frozenset({"compute_match"})
"""Tools whose third-party text only repeats what another tool (get_invoice) returns
first-hand: wrapped for models and kept out of trusted provenance like it, but scanned for
injection there, not again here (one flag per piece of text)."""


def _defuse_tags(text: str) -> str:
    """``text`` with the "<" of everything that reads as an untrusted tag escaped (``&lt;``).

    Read as a model or a reviewer would (`visible_with_origins`: full-width letters and
    brackets folded; zero-width spaces, soft hyphens, byte-order marks and combining marks
    dropped), so none of them hides a tag.
    """
    read, origin = visible_with_origins(text)
    openers = sorted({origin[m.start()] for m in _TAG_RE.finditer(read)})
    if not openers:
        return text
    out: list[str] = []
    last = 0
    for index in openers:
        out += [text[last:index], "&lt;"]
        last = index + 1
    out.append(text[last:])
    return "".join(out)


def wrap(text: str, source: str) -> str:
    """``text`` inside ``<untrusted source=...>`` tags, with look-alike tags defused."""
    safe = _defuse_tags(text)
    safe_source = re.sub(r"[^A-Za-z0-9 ._:\-\[\]]", "", source)[:80]
    return f'<untrusted source="{safe_source}">{safe}</untrusted>'


def _paths(value: Any, path: str) -> Iterator[tuple[list[Any] | dict[str, Any], Any, str]]:
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        items = value.get(head[:-2]) if isinstance(value, dict) else None
        for index, item in enumerate(items or []):
            yield from (
                (container, key, f"{head[:-2]}[{index}].{label}")
                for container, key, label in _paths(item, rest)
            )
    elif isinstance(value, dict) and head in value:
        if rest:
            yield from _paths(value[head], rest)
        elif isinstance(value[head], str):
            yield value, head, head


def untrusted_texts(tool: str, result: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(field, text)`` for every third-party string in a tool result."""
    if not result:
        return []
    found = []
    for path in UNTRUSTED_FIELDS.get(tool, ()):
        for container, key, label in _paths(result, path):
            text = container[key]
            if text:
                found.append((label, text))
    return found


def wrap_result(tool: str, result: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """A copy of ``result`` whose third-party strings are wrapped as untrusted."""
    if not result:
        return result
    wrapped = copy.deepcopy(result)
    for path in UNTRUSTED_FIELDS.get(tool, ()):
        for container, key, label in _paths(wrapped, path):
            container[key] = wrap(container[key], f"{source} {label}")
    return wrapped


def mask_untrusted(tool: str, result: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``result`` whose third-party strings have accounts, cards and secrets masked.

    Vendors print their full bank account on every invoice ("Remit to: ... IBAN DE89...").
    A tool result is kept in the run's state, which the server API, Studio and the models
    read, so the account must not be in it: nothing the agent does needs it whole (a bank
    change takes its account from the clerk's own words, a payment from the vendor master).
    """
    masked = copy.deepcopy(result)
    for path in UNTRUSTED_FIELDS.get(tool, ()):
        for container, key, _ in _paths(masked, path):
            container[key] = redact_text(container[key])
    return masked
