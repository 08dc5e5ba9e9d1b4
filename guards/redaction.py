"""Masking for everything that leaves the agent: results, CLI output, logs, audit rows.

Bank accounts keep their last four characters (IBANs in any spacing or case, across line
breaks too; domestic account numbers after a word naming an account or a US routing
number); secrets (API keys, bearer tokens, database passwords) are replaced whole. Text
beyond ASCII is also read as shown (full-width digits and letters folded, zero-width
characters dropped, any dash as "-"), so such characters hide nothing. Card numbers are
found with LangChain's PII detector, and in the other printed groupings (4-6-5, dotted) by
`_GROUPED_CARD_RE`; both check the Luhn sum, so ordinary long numbers are left alone.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import TypeVar

from langchain.agents.middleware.pii import detect_credit_card
from stdnum import iban, luhn
from stdnum.us import rtn

from guards.visible import visible_text

T = TypeVar("T")

# IBAN-like: country code, check digits, 10-30 alphanumerics, optionally printed in groups.
ACCOUNT_RE = re.compile(r"\b[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]){10,30}\b", re.ASCII)
# The same with up to three separators between characters ("N L 9 1 ...", "DE49-1002-...",
# "GB29  NWBK", "GB29 - NWBK"), matched case-insensitively; only checksum-valid IBANs count,
# so prose does not.
_SEP = r"[\s.\-_/]{0,3}"
_SPREAD_ACCOUNT_RE = re.compile(
    rf"(?<![A-Z0-9])[A-Z]{_SEP}[A-Z]{_SEP}\d{_SEP}\d(?:{_SEP}[A-Z0-9]){{10,30}}",
    re.IGNORECASE | re.ASCII,
)
# Card numbers in the groupings LangChain's detector does not read: Amex and Diners' 4-6-5
# and 4-6-4, and 4-4-4-4(-3) with dots; the Luhn sum decides.
_GROUPED_CARD_RE = re.compile(
    r"(?<![\d.,\-])\d{4}([ .\-])(?:\d{6}\1\d{4,5}|\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?)"
    r"(?![\d]|[.,\-]\d)",
    re.ASCII,
)
# Bare account numbers: 10+ digits not part of an amount or an id with a dash.
DIGITS_RE = re.compile(r"(?<![\d.,\-])\d{10,}(?![\d.,])", re.ASCII)
# Account numbers that are not IBANs (US, UK, most domestic formats) are 6-17 digits, too
# short for `DIGITS_RE` to tell from an amount or a count. Written after a word naming an
# account ("account 123456789", "Acct #: 4402-8719-33", "a/c 7654 3210 98", "Konto 5320130")
# or after a US routing number (ABA checksum) they are accounts; digits may be grouped with
# single spaces or dashes. Not an amount ("12,345.67"), a masked account ("****6819") nor
# a date ("account 2026-12-07").
_ACCOUNT_DIGITS = (
    r"(?!(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?!\d|-\d))"
    r"\d(?:[ \-]?\d){5,16}(?![\d]|[.,]\d|-\d)"
)
_LABELLED_ACCOUNT_RE = re.compile(
    r"(?i)(?<![a-z])(?:bank\s+)?(?:account|acct|acc|a/c|konto(?:nummer|nr)?|cuenta|compte|"
    r"conto)\.?(?:[\s_]*(?:no|nr|num|number|#)\.?)?[\"']?\s*[:#=]?\s*[\"']?\s*"
    rf"(?P<account>{_ACCOUNT_DIGITS})",
    re.ASCII,
)
_ROUTED_ACCOUNT_RE = re.compile(
    rf"(?<![\d.,\-])(?P<routing>\d{{9}})[\s,;/\-]{{1,3}}(?P<account>{_ACCOUNT_DIGITS})",
    re.ASCII,
)
# The ids this system mints: UUIDs (threads, checkpoints, runs) and 32- or 64-digit hex
# (interrupt ids, digests, idempotency keys). Their hex can hold 10+ digits in a row after a
# letter ("...-d39359504819"), which is not an account; masking it broke the id.
_MINTED_ID_RE = re.compile(
    r"(?<![\w\-])(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-f]{64}|[0-9a-f]{32})(?![\w\-])"
)
MASKED_ACCOUNT_RE = re.compile(r"\*{4}[A-Z0-9]{4}\b")
SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}"), "[secret]"),
    (re.compile(r"\blsv2_[A-Za-z0-9_]{8,}"), "[secret]"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[secret]"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-]{8,}"), "Bearer [secret]"),
    # Also as an environment variable (OPENAI_API_KEY=...) or a JSON field ("password": "...").
    (
        re.compile(
            r"(?i)(?<![a-z0-9])([a-z0-9_]*(?:api[_-]?key|token|secret|password)[\"']?)"
            r"(\s*[:=]\s*[\"']?)[^\s\"',}]+"
        ),
        r"\1\2[secret]",
    ),
    # Up to the last "@" before the host: a password may hold "@" itself.
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/\s@]+:)[^\s/]+@"), r"\1***@"),
)


# Dashes a reader takes for "-" between groups of an account (NFKC leaves them as they are).
_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"))


def as_shown(text: str) -> str:
    """``text`` as a reader sees it (`visible_text`), dashes and digits read as ASCII.

    NFKC leaves dashes and Arabic-Indic or Devanagari digits as they are.
    """
    shown = visible_text(text).translate(_DASHES)
    if shown.isascii():
        return shown
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in shown)


def mask_account(account: str | None) -> str | None:
    """Show only the last four characters of a bank account."""
    if account is None:
        return None
    compact = re.sub(r"[ \-]", "", account)
    return "****" + compact[-4:]


def _longest_valid_iban(compact: str) -> str | None:
    for end in range(min(len(compact), 34), 14, -1):
        if iban.is_valid(compact[:end]):
            return compact[:end]
    return None


def extract_accounts(text: str) -> list[str]:
    """Bank accounts written in ``text``, compact and upper-case.

    A checksum-valid IBAN wins (so "GB33... and pay" does not swallow "ANDPAY"); an
    IBAN-shaped token that fails the checksum is kept as written, without trailing words.
    A second account run on after a valid one ("NL23... to GB94...") is found too, and
    accounts hidden by characters beyond ASCII (`as_shown`) as well as those written plainly.
    """
    found: list[str] = []
    readings = [text] if text.isascii() else list(dict.fromkeys((text, as_shown(text))))
    for match, valid, _ in (run for reading in readings for run in _spread_accounts(reading)):
        if valid is None:
            token = ACCOUNT_RE.match(match.group(0).upper())
            if token:
                groups = re.split(r"[ \-]", token.group(0))
                while len(groups) > 1 and groups[-1].isalpha():
                    groups.pop()  # trailing words ("... AND PAY") are not the account
                valid = "".join(groups)
        if valid and valid not in found:
            found.append(valid)
    return found


def _spread_accounts(text: str) -> list[tuple[re.Match[str], str | None, int]]:
    """Account-shaped runs in ``text``, in any spacing: (match, valid IBAN or None, end).

    ``end`` is where a valid IBAN's last character is in ``text`` (the match's end when
    none is valid). The search goes on from there, so a second account run on after the
    first ("nl23 ... 11 to gb94 ...") is found too.
    """
    found: list[tuple[re.Match[str], str | None, int]] = []
    pos = 0
    while match := _SPREAD_ACCOUNT_RE.search(text, pos):
        raw = match.group(0)
        valid = _longest_valid_iban(re.sub(r"[^A-Z0-9]", "", raw.upper()))
        pos = match.end() if valid is None else match.start() + _end_of(raw, valid)
        found.append((match, valid, pos))
    return found


def _end_of(raw: str, compact: str) -> int:
    """Where in ``raw`` the characters of ``compact`` (its alphanumeric prefix) end."""
    seen = end = 0
    while seen < len(compact):
        seen += raw[end].isalnum()
        end += 1
    return end


def find_hidden_accounts(text: str) -> list[str]:
    """Checksum-valid IBANs written spread out, with separators, or backwards."""
    return [
        valid
        for candidate in (text, text[::-1])
        for _, valid, _ in _spread_accounts(candidate)
        if valid is not None
    ]


def redact_text(text: str) -> str:
    """Mask accounts, card numbers and secrets in free text.

    The patterns read ASCII. Text beyond it is masked as written, then read as shown
    (`as_shown`); when that reading holds more to mask ("GB29\u200bNWBK..." with zero-width
    spaces, full-width or Arabic-Indic digits), the masked reading is returned instead, the
    invisible characters gone.
    """
    masked = _redact_as_written(text)
    if masked.isascii():
        return masked
    shown = as_shown(masked)
    if shown == masked:
        return masked
    masked_shown = _redact_as_written(shown)
    return masked if masked_shown == shown else masked_shown


def _redact_as_written(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    for match in sorted(detect_credit_card(text), key=lambda m: m["start"], reverse=True):
        text = (
            text[: match["start"]] + "[card ****" + match["value"][-4:] + "]" + text[match["end"] :]
        )
    text = _GROUPED_CARD_RE.sub(_mask_if_card, text)
    # Checksum-valid IBANs first, in any spacing (across a line break too): masking an
    # IBAN-shaped first line alone would leave the rest of the account on the next one.
    # Keeps what follows an account's last character: "gb29 ... 19 and pay" keeps " and pay".
    for run, valid, end in reversed(_spread_accounts(text)):
        if valid is not None:
            text = text[: run.start()] + "****" + valid[-4:] + text[end:]
    text = ACCOUNT_RE.sub(lambda m: mask_account(m.group(0)) or "", text)
    text = _mask_domestic_accounts(text)
    return _mask_bare_digits(text)


def _domestic_accounts(text: str) -> list[tuple[int, int]]:
    """Spans of the non-IBAN account numbers in ``text``: labelled, or after a routing number.

    Not inside an id the system minted: hex spells "acc", so a digest or interrupt id
    holding "9acc00504454" read as a labelled account and was masked, which broke the id.
    """
    spans = [m.span("account") for m in _LABELLED_ACCOUNT_RE.finditer(text)]
    spans += [
        m.span("account")
        for m in _ROUTED_ACCOUNT_RE.finditer(text)
        if rtn.is_valid(m.group("routing"))
    ]
    ids = _minted_ids(text)
    return sorted({span for span in spans if not _inside(span[0], ids)})


def _minted_ids(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _MINTED_ID_RE.finditer(text)]


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def _mask_domestic_accounts(text: str) -> str:
    for start, end in reversed(_domestic_accounts(text)):
        digits = re.sub(r"\D", "", text[start:end])
        text = text[:start] + "****" + digits[-4:] + text[end:]
    return text


def _mask_bare_digits(text: str) -> str:
    """`DIGITS_RE` runs masked to their last four, except inside an id the system minted."""
    ids = _minted_ids(text)

    def mask(match: re.Match[str]) -> str:
        if _inside(match.start(), ids):
            return match.group(0)
        return "****" + match.group(0)[-4:]

    return DIGITS_RE.sub(mask, text)


def _card_digits(match: re.Match[str]) -> str | None:
    """The digits of a `_GROUPED_CARD_RE` match if they pass the Luhn sum, else None."""
    digits = re.sub(r"\D", "", match.group(0))
    return digits if luhn.is_valid(digits) else None


def _grouped_cards(text: str) -> list[re.Match[str]]:
    return [m for m in _GROUPED_CARD_RE.finditer(text) if _card_digits(m)]


def _mask_if_card(match: re.Match[str]) -> str:
    digits = _card_digits(match)
    return f"[card ****{digits[-4:]}]" if digits else match.group(0)


def redact(value: T) -> T:
    """`redact_text` applied to every string inside nested dicts, lists and tuples."""
    if isinstance(value, str):
        return redact_text(value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [redact(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)  # type: ignore[return-value]
    return value


def find_unmasked(text: str) -> list[str]:
    """Full account numbers, card numbers or secrets in ``text``, as written or as shown."""
    found = _unmasked_as_written(text)
    if text.isascii():
        return found
    seen = {_compact(item) for item in found}
    for item in _unmasked_as_written(as_shown(text)):
        if _compact(item) not in seen:
            seen.add(_compact(item))
            found.append(item)
    return found


def _compact(item: str) -> str:
    return re.sub(r"[\W_]", "", as_shown(item)).upper()


def _unmasked_as_written(text: str) -> list[str]:
    found = [m.group(0) for m in ACCOUNT_RE.finditer(text)]
    found += find_hidden_accounts(text)
    found += [m["value"] for m in detect_credit_card(text)]
    found += [m.group(0) for m in _grouped_cards(text)]
    found += [text[start:end] for start, end in _domestic_accounts(text)]
    found += [m.group(0) for pattern, _ in SECRET_PATTERNS[:4] for m in pattern.finditer(text)]
    return found


class RedactingFilter(logging.Filter):
    """A logging filter that masks accounts, cards and secrets in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message with its redacted rendering."""
        record.msg = redact_text(record.getMessage())
        record.args = ()
        return True
