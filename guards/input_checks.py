"""Deterministic checks on a request before any model sees it."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_REQUEST_CHARS = 8000
MAX_ATTACHMENTS = 5
MAX_ATTACHMENT_CHARS = 100_000
MAX_ATTACHMENT_NAME_CHARS = 200

# Bidirectional embeddings, overrides and isolates reorder how text is displayed, so a
# reviewer could read an id or an amount other than the one the agent acts on
# ("Trojan Source"). Plain requests never need them.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class InputVerdict:
    """Whether a request may proceed, and if not, why in a clerk's words."""

    ok: bool
    reason: str = ""


def check_request(text: object) -> InputVerdict:
    """Refuse empty, oversized or binary-looking requests with a reason a clerk understands."""
    if not isinstance(text, str):
        return InputVerdict(
            False,
            f"The request must be text, got {type(text).__name__}. Say what to do, e.g. "
            "'Validate INV-1001 and pay it if it matches'.",
        )
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
    bidi = [c for c in text if c in BIDI_CONTROLS]
    if bidi:
        return InputVerdict(
            False,
            f"The request contains {len(bidi)} bidirectional override character(s), which "
            "change how text is displayed; retype it as plain text.",
        )
    return InputVerdict(True)


def check_attachments(attachments: object) -> InputVerdict:
    """Refuse attachments that are not a short list of ``{"name": text, "text": text}``.

    A server client sends them as it likes: nested objects, bare strings, megabytes of
    text. Each would crash a check or reach the models whole; this says what is wrong.
    """
    if attachments is None:
        return InputVerdict(True)
    if not isinstance(attachments, list):
        return InputVerdict(
            False,
            f"The attachments must be a list of {{name, text}} objects, got "
            f"{type(attachments).__name__}.",
        )
    if len(attachments) > MAX_ATTACHMENTS:
        return InputVerdict(
            False,
            f"The request has {len(attachments)} attachments; at most {MAX_ATTACHMENTS} are "
            "accepted. Send one request per invoice.",
        )
    for number, attachment in enumerate(attachments, start=1):
        what = f"Attachment {number}"
        if not isinstance(attachment, dict) or set(attachment) != {"name", "text"}:
            return InputVerdict(
                False, f"{what} must be an object with exactly a name and a text, both text."
            )
        name, text = attachment["name"], attachment["text"]
        if not isinstance(name, str) or not isinstance(text, str):
            return InputVerdict(
                False,
                f"{what}'s name and text must both be plain text (its text is "
                f"{type(text).__name__}); paste a document's text, not its structure.",
            )
        if not name.strip() or len(name) > MAX_ATTACHMENT_NAME_CHARS or not name.isprintable():
            return InputVerdict(
                False,
                f"{what}'s name must be 1 to {MAX_ATTACHMENT_NAME_CHARS} printable characters.",
            )
        if len(text) > MAX_ATTACHMENT_CHARS:
            return InputVerdict(
                False,
                f"{what} is {len(text)} characters; the limit is {MAX_ATTACHMENT_CHARS}. "
                "Attach the relevant part only.",
            )
        reason = unstorable_reason(text, f"attachment {number}")
        if reason is not None:
            return InputVerdict(False, reason)
    return InputVerdict(True)


def unstorable_reason(text: str, what: str) -> str | None:
    """Why Postgres cannot store ``text`` (``what`` names it in the message), or None.

    TEXT and JSONB refuse NUL, and a lone surrogate (what Python makes of bytes that are
    not UTF-8, e.g. in command-line arguments) cannot be encoded at all. Refuse such
    values before anything is written, instead of failing halfway through a write.
    """
    nul = text.count("\x00")
    surrogates = sum(1 for c in text if unicodedata.category(c) == "Cs")
    if not (nul or surrogates):
        return None
    problems = []
    if nul:
        problems.append(f"{nul} NUL character(s)")
    if surrogates:
        problems.append(f"{surrogates} character(s) that are not valid UTF-8")
    return f"The {what} contains {' and '.join(problems)}; send plain UTF-8 text."


def check_storable(text: str, what: str = "request") -> InputVerdict:
    """`unstorable_reason` as a verdict."""
    reason = unstorable_reason(text, what)
    return InputVerdict(True) if reason is None else InputVerdict(False, reason)


_FENCE_RE = re.compile(r"^(-{3,}|_{3,}|={3,}|`{3}.*|\"{3})$")
_FORWARD_RE = re.compile(
    r"^(-+\s*(original|forwarded) message\s*-+|begin forwarded message:?)$", re.IGNORECASE
)


def split_pasted(request: str) -> tuple[str, list[str]]:
    """The clerk's own words, and the third-party text pasted into the request.

    Pasted text is what sits between fence lines (``---``, ``___``, ``===``, code fences),
    after an "Original/Forwarded message" line, or on ``>``-quoted lines. It is data, like
    an attachment: it never supplies an account, an invoice to pay, or an instruction.
    """
    own: list[str] = []
    pasted: list[str] = []
    block: list[str] | None = None
    for line in request.splitlines():
        stripped = line.strip()
        if _FORWARD_RE.match(stripped):
            if block:
                pasted.append("\n".join(block))
            block = []  # a forwarded message runs to the end
            continue
        if _FENCE_RE.match(stripped):
            if block is None:
                block = []
            else:
                pasted.append("\n".join(block))
                block = None
            continue
        if block is not None:
            block.append(line)
        elif stripped.startswith(">"):
            pasted.append(stripped.lstrip("> "))
        else:
            own.append(line)
    if block:
        pasted.append("\n".join(block))
    return "\n".join(own).strip(), [p for p in pasted if p.strip()]
