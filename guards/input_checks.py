"""Deterministic checks on a request before any model sees it."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

MAX_REQUEST_CHARS = 8000


@dataclass(frozen=True)
class InputVerdict:
    """Whether a request may proceed, and if not, why in a clerk's words."""

    ok: bool
    reason: str = ""


def check_request(text: str) -> InputVerdict:
    """Refuse empty, oversized or binary-looking requests with a reason a clerk understands."""
    if not text.strip():
        return InputVerdict(
            False,
            "The request is empty. Say what to do, e.g. "
            "'Validate INV-1001 and pay it if it matches'.",
        )
    if len(text) > MAX_REQUEST_CHARS:
        return InputVerdict(
            False,
            f"The request is {len(text)} characters; the limit is "
            f"{MAX_REQUEST_CHARS}. Send one request per invoice or "
            "question.",
        )
    controls = [
        c for c in text if unicodedata.category(c) in {"Cc", "Cs", "Co"} and c not in "\n\r\t"
    ]
    if controls:
        return InputVerdict(
            False,
            f"The request contains {len(controls)} control or "
            "non-printable character(s); send plain text.",
        )
    return InputVerdict(True)
