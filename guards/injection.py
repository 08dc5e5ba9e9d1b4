"""Injection detection on requests and third-party text: a flag, a score and the evidence.

A flag never drops content silently: it is recorded in the run, shown to reviewers in the
approval evidence, and returned in the result. Detection is a tripwire, not the defense:
the defense is structural (the gate, the approval node and the tools' own rules), so a
miss here cannot move money.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass

from guards.redaction import redact_text
from guards.visible import visible_text

FLAG_THRESHOLD = 0.4

_RULES: tuple[tuple[str, float, re.Pattern[str]], ...] = tuple(
    (label, weight, re.compile(pattern, re.IGNORECASE | re.DOTALL))
    for label, weight, pattern in (
        (
            "override_instructions",
            0.6,
            r"\b(ignore|disregard|forget|override)\b.{0,30}\b(previous|prior|above|all|your|"
            r"earlier)\b.{0,20}\b(instructions?|rules|prompts?|policy|polic(y|ies))",
        ),
        (
            "fake_system_message",
            0.5,
            r"(\[\s*system\s*\]|<\s*system\s*>|#+\s*system\b|\bsystem\s+(note|message|prompt|"
            r"override|notice|instruction)|\bassistant\s*:|\bsystem\s*:)",
        ),
        (
            "addresses_the_agent",
            0.4,
            r"\b(to|dear|attention|note (to|for))\s+(the\s+)?(ai|agent|assistant|model|llm|bot)\b|"
            r"\byou are (now )?(an? )?(ai|assistant|agent)\b|\bas an ai\b",
        ),
        (
            "claims_approval",
            0.5,
            r"\b(pre-?approved|already (been )?approved|approval (was |has been )?(given|granted|"
            r"obtained)|no (further )?approval (is )?(needed|required)|skip (the )?approval|"
            r"bypass (the )?approval)\b",
        ),
        (
            "payment_instruction",
            0.4,
            r"\b(pay|wire|transfer|remit|release)\b.{0,60}\b(immediately|urgent(ly)?|now|today|"
            r"to (the )?(new |following |this )?(account|iban))\b",
        ),
        (
            "bank_change_instruction",
            0.4,
            r"\b(change|update|replace|switch|use)\b.{0,40}\b(bank|account|iban|remittance|"
            r"payment details)\b.{0,40}\b(to|with|for)\b",
        ),
        (
            "split_payment",
            0.4,
            r"\b(split|divide|break)\b.{0,40}\b(payments?|parts?|installments?|instalments?)\b|"
            r"\b(below|under|beneath)\s+the\s+(approval\s+)?(threshold|limit)\b",
        ),
        (
            "exfiltration",
            0.5,
            r"\b(send|email|e-mail|forward|share)\b.{0,60}\b(bank (details|accounts?)|ibans?|"
            r"account numbers?|vendor (list|master))\b",
        ),
        (
            "fake_authority",
            0.3,
            r"\b(signed|authori[sz]ed|approved|confirmed)\s+by\s+(the\s+)?(cfo|ceo|controller|"
            r"clerk|user|finance)\b|\bon behalf of (the )?(user|clerk|controller)\b",
        ),
        ("todo_instruction", 0.4, r"\btodo\b\s*:?.{0,80}\b(pay|approve|change|send|wire)\b"),
        (
            "foreign_instruction",
            0.4,
            r"\b(ignorieren|ignorez|ignora|überweisen|zahlen sie|bankverbindung|virement|"
            r"payez|paguen?|pagar|cambi(e|ar) (la )?cuenta|transfiera|modifiez)\b",
        ),
        (
            "encoded_payload",
            0.3,
            r"\b(base64|b64|rot13|decode|decodifica)\b\s*:?|[A-Za-z0-9+/]{32,}={0,2}",
        ),
    )
)


@dataclass(frozen=True)
class InjectionFlag:
    """A suspected injection in one piece of text."""

    source: str
    score: float
    rules: tuple[str, ...]
    evidence: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """Plain JSON for state, results and evidence."""
        return {
            "kind": "injection",
            "source": self.source,
            "score": self.score,
            "rules": list(self.rules),
            "evidence": list(self.evidence),
        }


def _decoded_variants(text: str) -> list[str]:
    """The text plus any base64 or rot13 payload it carries, so encoding does not hide it."""
    text = visible_text(text)
    variants = [text]
    for blob in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", text):
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if decoded.isascii():
            variants.append(decoded.decode("ascii", "replace"))
    if re.search(r"\brot13\b", text, re.IGNORECASE):
        variants.append(codecs.decode(text, "rot13"))
    return variants


# A clerk may legitimately ask to pay or to change bank details; in the clerk's own request
# these are intent, not injection.
REQUEST_INTENT_RULES = frozenset({"payment_instruction", "bank_change_instruction"})


def scan(text: str, source: str, *, ignore: frozenset[str] = frozenset()) -> InjectionFlag | None:
    """Score ``text`` against the rules (less ``ignore``); a flag at the threshold or above."""
    hits: dict[str, str] = {}
    weights: dict[str, float] = {}
    for variant in _decoded_variants(text):
        for label, weight, pattern in _RULES:
            if label in ignore:
                continue
            match = pattern.search(variant)
            if match and label not in hits:
                start = max(match.start() - 20, 0)
                hits[label] = redact_text(variant[start : match.end() + 20].strip())[:160]
                weights[label] = weight
    remaining = 1.0
    for weight in weights.values():
        remaining *= 1 - weight
    score = round(1 - remaining, 3)
    if score < FLAG_THRESHOLD:
        return None
    return InjectionFlag(
        source=source, score=score, rules=tuple(hits), evidence=tuple(hits.values())
    )
