"""Audit masking remembers only what needed no masking, and masks exactly as before."""

from __future__ import annotations

from state import audit
from state.audit import _clean_any_text, mask_payload

IBAN = "DE89370400440532013000"


def test_short_clean_strings_are_remembered_and_masked_ones_never() -> None:
    audit._KNOWN_CLEAN.clear()
    payload = {"tool": "get_invoice", "note": f"pay {IBAN}", "account": IBAN, "id": IBAN}
    first = mask_payload(payload)
    second = mask_payload(payload)
    assert first == second
    assert IBAN not in str(first)
    assert "get_invoice" in audit._KNOWN_CLEAN and "tool" in audit._KNOWN_CLEAN
    assert not any(IBAN in text for text in audit._KNOWN_CLEAN)


def test_remembered_strings_clean_exactly_as_a_fresh_clean_does() -> None:
    audit._KNOWN_CLEAN.clear()
    texts = ["step_id", "INV-1001", "p1s2", "sk-" + "a" * 40, "x" * 65, f"to {IBAN}"]
    for text in texts:
        assert audit._clean_text(text) == _clean_any_text(text)
        assert audit._clean_text(text) == _clean_any_text(text)  # from memory, if kept
    assert "x" * 65 not in audit._KNOWN_CLEAN  # too long to keep


def test_memory_is_bounded() -> None:
    audit._KNOWN_CLEAN.clear()
    for n in range(audit._KNOWN_CLEAN_MAX + 10):
        audit._clean_text(f"id-{n}")
    assert len(audit._KNOWN_CLEAN) == audit._KNOWN_CLEAN_MAX
    assert "id-0" not in audit._KNOWN_CLEAN
    assert f"id-{audit._KNOWN_CLEAN_MAX + 9}" in audit._KNOWN_CLEAN
