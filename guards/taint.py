"""Taint: which argument values could only have come from third-party text.

A value is tainted when it occurs in untrusted text (invoice notes and document text, line
descriptions, attachments) and nowhere in trusted sources (the clerk's request, and the
structured fields of our own records, less what a result only echoes from its call's
arguments: see `nodes.safety.provenance`). A tainted value in an irreversible or destructive
call is shown to the reviewer as evidence; where policy says so, the call is blocked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from guards.redaction import redact_text

_MIN_LEN = 4
_WORDLIKE = re.compile(r"^[A-Za-z]+$")


def _normalize(text: str) -> str:
    return re.sub(r"[\s,]", "", text).upper()


def _occurs_in(variants: set[str]) -> re.Pattern[str]:
    """Any of ``variants`` as a whole token of an upper-cased text.

    Spaces and commas may sit between its characters ("GB29 NWBK ...", "12,000.00"). A
    whole token: "2000.00" is not in "12000.00", "1001" is not in "INV-1001", and "2000" is
    not in "2000.50".
    """
    spelled = ("[\\s,]*".join(map(re.escape, v)) for v in sorted(variants, key=len, reverse=True))
    return re.compile(
        r"(?<![0-9A-Z.])(?<![0-9A-Z]-)(?:" + "|".join(spelled) + r")(?![0-9A-Z])(?!\.\d)"
    )


@dataclass(frozen=True)
class TaintFinding:
    """One argument value traced to third-party text only."""

    arg: str
    value: str
    sources: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """Plain JSON (value masked) for evidence and results."""
        return {"arg": self.arg, "value": redact_text(self.value), "sources": list(self.sources)}


def _scalars(args: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for key, value in args.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _scalars(value, f"{name}.")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    found += _scalars(item, f"{name}[{index}].")
                elif item is not None:
                    found.append((f"{name}[{index}]", str(item)))
        elif value is not None and not isinstance(value, bool):
            found.append((name, str(value)))
    return found


def _variants(value: str) -> set[str]:
    variants = {_normalize(value)}
    stripped = value.rstrip("0").rstrip(".") if "." in value else value
    variants.add(_normalize(stripped))
    return {v for v in variants if len(v) >= _MIN_LEN}


def find_taint(
    args: dict[str, Any], *, trusted: list[str], untrusted: list[tuple[str, str]]
) -> list[TaintFinding]:
    """Argument values present in ``untrusted`` texts and absent from every ``trusted`` one."""
    trusted_upper = [t.upper() for t in trusted]
    untrusted_upper = [(source, text.upper()) for source, text in untrusted]
    findings = []
    for name, value in _scalars(args):
        if len(value) < _MIN_LEN or _WORDLIKE.match(value):
            continue  # words and short tokens carry no provenance signal
        variants = _variants(value)
        if not variants:
            continue
        occurs = _occurs_in(variants).search
        sources = tuple(source for source, text in untrusted_upper if occurs(text))
        if sources and not any(occurs(t) for t in trusted_upper):
            findings.append(TaintFinding(name, value, sources))
    return findings
