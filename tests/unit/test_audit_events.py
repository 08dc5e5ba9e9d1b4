"""Audit payloads without a database: masking, hashes, event keys and summaries."""

from __future__ import annotations

import json
from typing import Any

from state.audit import (
    GENESIS_HASH,
    BrokenLink,
    ChainReport,
    VerifyReport,
    approval_requested_event,
    content_hash,
    mask_payload,
    row_hash,
    summarize,
    tool_call_event,
)

ACCOUNT = "NL23KNAB0257394811"


def test_accounts_are_masked_wherever_they_appear() -> None:
    masked = mask_payload(
        {
            "new_account": ACCOUNT,
            "bank_accounts": [ACCOUNT, "12345678"],
            "remit_bank_account": 99887766,
            "iban": "short1234",
            "payee_account_masked": "****4811",
            "edit": {"new_account": {"old": "12345678", "new": "87654321"}},
            "reason": f"pay {ACCOUNT.lower()} or NL23 KNAB 0257 3948 11 now",
            "nested": [{"text": f"to {ACCOUNT}"}],
            "body": "send DE49-1002-0030-4471-1822-09 and N L 9 1 A B N A 0 4 1 7 1 6 4 3 0 0",
        }
    )
    text = json.dumps(masked)
    for full in (ACCOUNT, ACCOUNT.lower(), "12345678", "87654321", "99887766", "KNAB 0257"):
        assert full not in text
    assert masked["body"] == "send ****2209 and ****4300"
    # Ordinary text with dates, amounts and ids is left alone.
    plain = "Pay INV-1001 (PO-2001) by 15 May: 1,234.50 USD at 12 noon and tell V-006"
    assert mask_payload(plain) == plain
    assert masked["new_account"] == "****4811"
    assert masked["bank_accounts"] == ["****4811", "****5678"]
    assert masked["payee_account_masked"] == "****4811"
    assert masked["edit"]["new_account"] == {"old": "****5678", "new": "****4321"}
    assert masked["nested"] == [{"text": "to ****4811"}]


def test_secrets_go_digests_stay_and_odd_text_is_storable() -> None:
    digest = content_hash({"a": 1})
    key = "idem-" + "1234567890" * 6 + "abcd"
    masked = mask_payload(
        {
            "note": "api_key=sk-abcdefghijklmnop1234 and a NUL\x00 here",
            "result_hash": digest,
            "idempotency_key": key,
            "ratio": float("nan"),
            "ok": True,
            "n": 3,
        }
    )
    assert "sk-abcdefghijklmnop1234" not in masked["note"]
    assert "\x00" not in masked["note"]
    assert (masked["result_hash"], masked["idempotency_key"]) == (digest, key)
    assert (masked["ratio"], masked["ok"], masked["n"]) == ("nan", True, 3)


def test_the_row_hash_covers_content_and_link_but_not_key_order() -> None:
    base: dict[str, Any] = {
        "tenant": "acme",
        "seq": 1,
        "thread_id": "t",
        "kind": "route",
        "event_key": "t:route",
        "payload": {"a": 1, "b": [1, 2]},
        "prev_hash": GENESIS_HASH,
    }
    digest = row_hash(**base)
    assert row_hash(**{**base, "payload": {"b": [1, 2], "a": 1}}) == digest
    for change in (
        {"seq": 2},
        {"tenant": "globex"},
        {"kind": "plan"},
        {"thread_id": None},
        {"event_key": None},
        {"payload": {"a": 2, "b": [1, 2]}},
        {"prev_hash": "f" * 64},
    ):
        assert row_hash(**{**base, **change}) != digest, change


def _outcome(**changes: Any) -> dict[str, Any]:
    return {
        "step_id": "p1s2",
        "tool": "update_vendor_bank_account",
        "tier": "destructive",
        "ok": True,
        "args": {},
        "result": {"vendor_id": "V-006"},
        "error": None,
        "idempotency_key": None,
        "replayed": False,
        **changes,
    }


def test_tool_call_keys_tell_refusals_successes_and_replays_apart() -> None:
    args = {"vendor_id": "V-006", "new_account": ACCOUNT, "reason": "asked"}
    refused = _outcome(
        ok=False,
        result=None,
        error={"code": "approval_required", "message": "needs 2", "hint": "", "retryable": False},
    )
    keys = {
        tool_call_event(thread_id="t", raw_args=args, validated_args=args, outcome=o).key
        for o in (refused, _outcome(), _outcome(replayed=True))
    }
    assert len(keys) == 3
    event = tool_call_event(thread_id="t", raw_args=args, validated_args=args, outcome=_outcome())
    assert event.payload["result_hash"] == content_hash({"vendor_id": "V-006"})
    # Neither the key nor the payload carries a hash over the full account.
    assert content_hash({"tool": "update_vendor_bank_account", "args": args})[:24] not in str(
        event.key
    )


def test_a_second_approval_round_is_a_new_event() -> None:
    steps = [{"step_id": "p1s2", "tool": "t", "args": {"x": 1}, "why": ""}]

    def request(approved_by: list[dict[str, str]]) -> dict[str, Any]:
        return {"requester": "clerk", "steps": [{"approved_by": approved_by}], "evidence": []}

    first = approval_requested_event("t", request=request([]), steps=steps)
    again = approval_requested_event("t", request=request([]), steps=steps)
    second = approval_requested_event(
        "t", request=request([{"id": "ctl-1", "role": "controller"}]), steps=steps
    )
    assert first.key == again.key != second.key
    assert str(first.key).startswith("t:p1s2:") and str(first.key).endswith(":requested")


def test_summaries_are_one_line() -> None:
    assert summarize("outcome", {"status": "completed", "reason": ""}) == "completed"
    assert (
        summarize(
            "tool_call",
            {"step_id": "p2s2", "tool": "schedule_payment", "tier": "irreversible", "ok": True},
        )
        == "p2s2 schedule_payment [irreversible] ok"
    )
    line = summarize("guard_flag", {"detector": "injection", "evidence": "a\nb " * 100})
    assert "\n" not in line and len(line) <= 90


def test_a_report_is_not_ok_when_any_tenants_chain_is_broken() -> None:
    edited = BrokenLink("globex", 3, 30, "edited", "stored hash differs")
    report = VerifyReport(
        chains=[
            ChainReport("acme", 6, 6, "a" * 64),
            ChainReport("globex", 6, 6, "b" * 64, broken=edited),
            ChainReport("initech", 2, 2, "c" * 64),
        ]
    )
    assert not report.ok
    assert report.first_broken == edited
    assert report.as_dict()["ok"] is False
    assert VerifyReport(chains=[ChainReport("acme", 6, 6, "a" * 64)]).ok
