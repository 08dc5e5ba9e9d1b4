"""The tamper-evident audit chain: what the agent saw, decided and did, per tenant.

Table ``audit_events`` (migration ``0003_audit.sql``) holds one hash chain per tenant. Each
row carries a per-tenant sequence number ``seq`` (1, 2, 3, … without gaps), the hash of the
previous row of the same tenant (``prev_hash``; the first row links to `GENESIS_HASH`) and
its own ``hash``.

What is hashed. ``hash = sha256(canonical_json(content))`` (`tools.contract.canonical_json`:
sorted keys, no whitespace), hex-encoded, where ``content`` is::

    {"v": 1, "tenant": ..., "seq": ..., "thread_id": ..., "kind": ..., "event_key": ...,
     "payload": ..., "prev_hash": ...}

with ``payload`` exactly as the database returns it (the writer round-trips it through
JSONB before hashing, so number spellings that JSONB normalises cannot break a hash). Not
hashed: ``id`` (a database serial that only orders inserts) and ``created_at`` (a
database-side clock reading, kept for people; its text form depends on the session time
zone and precision, and ordering is what ``seq`` and the links prove). So editing
``created_at`` goes undetected; editing anything else breaks the row's hash or a link.

Appends. `append_event` takes an open connection, so a caller can write inside its own
transaction: the gate records a tool call in the same transaction as the side effect and
its ledger row, so neither commits without the other. Appends of one tenant are
serialised by ``pg_advisory_xact_lock`` on the tenant (held to the end of the caller's
transaction); under it the tenant's last row is read and the next one inserted. Callers
that hold a transaction open should append last, just before committing. An append is
one statement, the database function ``audit_append`` (migration ``0008``): the writer
hashes the row on the chain head it last saw in this process, and the function inserts it
only if that is still the head; otherwise it answers with the head and the stored payload,
and the writer hashes again (at most four statements, the last one under the lock).
An optional ``event_key`` (unique per tenant) makes an append idempotent: LangGraph re-runs
a node after an interrupt resumes and after a crash, and the same event is recorded once.

Append-only. Triggers raise on UPDATE, DELETE and TRUNCATE of ``audit_events`` for every
role, including the owner and superusers (the embedded setup connects as a superuser, so
privileges alone would not hold), and they fire under ``session_replication_role =
replica`` too. The owner or a superuser can still ``ALTER TABLE audit_events DISABLE
TRIGGER``; that is what the chain is for: `verify_chain` then finds the first broken link.
Limits, by design of an unkeyed hash chain: someone who can disable the triggers can
rewrite a chain from some row to the end consistently, and can drop the newest rows; only
a copy of the chain heads kept elsewhere (`VerifyReport.chains` lists each tenant's head
``seq`` and ``hash``) detects that. A role that may INSERT can append new, well-formed
rows. Running the agent as a role that neither owns the table nor is a superuser (SELECT
and INSERT only) takes the DISABLE TRIGGER route away; only a keyed hash (an HMAC whose
key lives outside the database) would stop well-formed forged appends.

Payloads never hold full bank account numbers or secrets (`mask_payload`, applied to
every payload on append): `guards.redaction.redact` masks free text (accounts to their
last four characters, secrets whole); on top, every value under a key naming an account
is masked whatever its format, and IBAN-like tokens in any case or grouping. The digests
this module takes for event keys are over masked values: with the masked text beside
them, a hash over a full account number could be brute-forced back. Two exceptions: a
``tool_call`` row carries the gate's idempotency key (it joins the row to its ledger row
in ``tool_calls``, which holds the full arguments anyway), and ``request_received`` a
sha256 of each attachment's text (which the audit does not hold, so there is nothing to
brute-force against).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import re
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, get_args

import psycopg
from psycopg import pq, sql
from psycopg.rows import dict_row

from guards.redaction import mask_account, redact
from state.db import Database
from tools.contract import Tier, args_hash, canonical_json, payee_digest
from tools.policy import CONTROLLER

Kind = Literal[
    "request_received",
    "route",
    "plan",
    "tool_call",
    "guard_flag",
    "approval_requested",
    "decision",
    "outcome",
    "world_replaced",  # a seed erased the agent's payments, bank changes or emails
    "world_seeded",  # a seed wrote a world; lists its payments, invoices and vendors
    "answer_refused",  # an answer to an approval was refused (self-approval, role, stale)
]
KINDS: tuple[str, ...] = get_args(Kind)
HASH_VERSION = 1
GENESIS_HASH = "0" * 64
# Advisory-lock class for audit appends: the two-int lock space never meets the gate's
# one-bigint idempotency locks.
_AUDIT_LOCK_CLASS = 0x61756474  # "audt"

Reason = Literal["edited", "broken_link", "gap", "reordered"]


# --- masking --------------------------------------------------------------------------

# IBAN-like tokens in free text from people, models and third parties, beyond what
# `guards.redaction` finds: any letter case, printed in groups of four with spaces or
# dashes (DE49-1002-0030-...), or with a space between every character (N L 9 1 ...).
_IBAN_GROUPED = re.compile(
    r"\b[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]{4}){2,7}(?:[ \-]?[A-Za-z0-9]{1,4})?\b"
)
_IBAN_SPACED_OUT = re.compile(r"\b[A-Za-z] [A-Za-z] \d \d(?: [A-Za-z0-9]){10,30}\b")
# Hex digests (sha256) and the gate's idempotency keys; masking would corrupt them.
_DIGEST_RE = re.compile(r"(?:idem-)?[0-9a-f]{64}")


def _is_account_key(key: str) -> bool:
    lowered = key.lower()
    return ("account" in lowered or "iban" in lowered) and not lowered.endswith("_masked")


def _mask_account_value(value: Any) -> Any:
    if isinstance(value, str):
        return value if value.startswith("****") else mask_account(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return mask_account(str(value))
    if isinstance(value, list | tuple):
        return [_mask_account_value(v) for v in value]
    if isinstance(value, Mapping):  # e.g. an edit diff: {"old": ..., "new": ...}
        return {_clean_text(str(k)): _mask_account_value(v) for k, v in value.items()}
    return mask_payload(value)


_KNOWN_CLEAN: OrderedDict[str, None] = OrderedDict()
"""Short strings that needed no cleaning (keys, ids, tool names, codes), most recent last.

Payloads repeat them in every event, and cleaning runs a dozen regular expressions. Only
strings that came out unchanged are kept, so nothing masked is ever remembered."""
_KNOWN_CLEAN_MAX = 4096
_SHORT_TEXT = 64


def _clean_text(text: str) -> str:
    if text in _KNOWN_CLEAN:
        with contextlib.suppress(KeyError):  # another thread's loop may have evicted it
            _KNOWN_CLEAN.move_to_end(text)
        return text
    cleaned = _clean_any_text(text)
    if cleaned == text and len(text) <= _SHORT_TEXT:
        _KNOWN_CLEAN[text] = None
        if len(_KNOWN_CLEAN) > _KNOWN_CLEAN_MAX:
            with contextlib.suppress(KeyError):
                _KNOWN_CLEAN.popitem(last=False)
    return cleaned


def _clean_any_text(text: str) -> str:
    if _DIGEST_RE.fullmatch(text):
        return text  # a hash or an idempotency key, not text to mask
    # JSONB refuses NUL and lone surrogates; the audit must never fail on odd input.
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    text = redact(text)
    for pattern in (_IBAN_SPACED_OUT, _IBAN_GROUPED):
        text = pattern.sub(lambda m: _mask_token(m.group(0)), text)
    return text


def _mask_token(token: str) -> str:
    return "****" + re.sub(r"[ \-]", "", token).upper()[-4:]


def mask_payload(value: Any) -> Any:
    """``value`` as plain JSON with accounts masked and secrets removed.

    Strings go through `guards.redaction.redact`, then IBAN-like tokens in any letter
    case, grouped with spaces or dashes or spaced out, are masked too. Strings and numbers
    under a key naming an account or IBAN (``new_account``, ``bank_accounts``, …, not
    ``*_masked``) keep only their last four characters whatever their format. Hex digests
    are left alone; NUL characters go; non-finite floats become strings.
    """
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, Mapping):
        return {
            # Keys are caller text too (a model's or a reviewer's): cleaned and masked alike.
            _clean_text(str(k)): _mask_account_value(v)
            if _is_account_key(str(k))
            else mask_payload(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_payload(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean_text(str(value))


def content_hash(value: Any) -> str:
    """sha256 (hex) of ``value``'s canonical JSON, e.g. a tool result."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def masked_digest(value: Any) -> str:
    """A short digest of ``value`` after masking, for event keys.

    Never a hash over full account numbers: with the masked text beside it, such a hash
    could be brute-forced back to the account.
    """
    return content_hash(mask_payload(value))[:24]


def row_hash(
    *,
    tenant: str,
    seq: int,
    thread_id: str | None,
    kind: str,
    event_key: str | None,
    payload: Any,
    prev_hash: str,
) -> str:
    """The hash of one audit row (see the module docstring for what it covers)."""
    return content_hash(
        {
            "v": HASH_VERSION,
            "tenant": tenant,
            "seq": seq,
            "thread_id": thread_id,
            "kind": kind,
            "event_key": event_key,
            "payload": payload,
            "prev_hash": prev_hash,
        }
    )


# --- appending ------------------------------------------------------------------------


@dataclass(frozen=True)
class Appended:
    """Where an event sits in its chain; ``created`` is False for a de-duplicated append."""

    id: int
    seq: int
    hash: str
    created: bool


Conn = psycopg.AsyncConnection[Any]


async def append_event(
    conn: Conn,
    *,
    tenant: str,
    thread_id: str | None,
    kind: Kind,
    payload: Mapping[str, Any],
    event_key: str | None = None,
    relaxed: bool = False,
) -> Appended:
    """Append one event to ``tenant``'s chain; idempotent per ``event_key``.

    Runs inside the caller's transaction when there is one (the per-tenant lock is then
    held until that transaction ends: append last), else in its own. ``payload`` is
    masked with `mask_payload` before it is stored. ``relaxed`` lets the transaction
    commit without waiting for the disk (see `RELAXED_COMMIT`); only for a transaction
    that moves no money and changes no bank account.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown audit event kind {kind!r}; one of {', '.join(KINDS)}")
    masked = mask_payload(payload)
    if conn.autocommit or conn.info.transaction_status == pq.TransactionStatus.INTRANS:
        # In autocommit, the one statement is the transaction: the lock lives as long.
        return await _append(conn, tenant, thread_id, kind, masked, event_key, relaxed)
    async with conn.transaction():
        return await _append(conn, tenant, thread_id, kind, masked, event_key, relaxed)


RELAXED_COMMIT = "off"
"""``synchronous_commit`` for relaxed appends: the commit returns before its WAL is on disk.

Durability is chosen deliberately. Postgres writes WAL in order, so the next synchronous
commit (every checkpoint, every payment or bank change, which keep the server's setting)
puts a relaxed commit on disk too: when a run returns, all it wrote is on disk. Only a
crash of Postgres itself, during a run, can lose the newest relaxed rows, and then it
loses everything after them as well: a suffix of each tenant's chain, never a gap, and
never a row that something durable depends on. The run then continues from its last
checkpoint and records those events again. This saves a disk flush per event.
"""

_APPEND = "SELECT * FROM audit_append(%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s)"
"""Migration ``0008_audit_append.sql``: lock, de-duplicate, check the link, insert."""

_HEADS: dict[tuple[str, str, int, str], tuple[int, str]] = {}
"""The chain head (seq, hash) this process last wrote or saw, per database and tenant.

Only a guess that saves a round trip: `audit_append` checks the link under the lock and
answers with the real head when the guess is stale (another process appended, or the
transaction that wrote it rolled back)."""


def _jsonb_stable(value: Any) -> bool:
    """Whether ``value`` comes back from JSONB as Python's own JSON round trip gives it.

    Only floats can differ: JSONB keeps a number's digits, not its spelling, so 1e16 comes
    back as an int, and -0.0 as 0.0. Finite floats that Python writes without an exponent
    come back the same; anything else is hashed on what the database returns instead.
    """
    if isinstance(value, float):
        text = repr(value)
        return math.isfinite(value) and "e" not in text and text != "-0.0"
    if isinstance(value, Mapping):
        return all(_jsonb_stable(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_jsonb_stable(v) for v in value)
    return True


async def _append(
    conn: Conn,
    tenant: str,
    thread_id: str | None,
    kind: str,
    payload: Any,
    event_key: str | None,
    relaxed: bool = False,
) -> Appended:
    """Append with one `audit_append` call when this process knows the chain's head.

    Inside a transaction, a first call that finds the head elsewhere has taken the lock
    for the transaction, so the second call, on the head it reported, is certain. In
    autocommit, appends of one tenant queue in this process (`_tenant_turn`), so each
    links to the one before; a miss (another process appended) is retried once on the
    reported head, and a second miss is appended in a transaction of its own, under the
    lock: never more than four calls, the last one certain.
    """
    text = json.dumps(payload)
    info = conn.info
    head_key = (info.host, info.dbname, info.port, tenant)
    # The row hashes the payload as the database returns it (see the module docstring).
    stored: Any = json.loads(text) if _jsonb_stable(payload) else None
    call = _AppendCall(conn, tenant, thread_id, kind, event_key, text, relaxed)
    if conn.info.transaction_status == pq.TransactionStatus.INTRANS:
        # No queueing here: this transaction may append again while it holds the database
        # lock, and an append queued behind one waiting for that lock would never run.
        answer = await call.send(_HEADS.get(head_key) if stored is not None else None, stored)
        if isinstance(answer, Appended):
            return call.remember(head_key, answer)
        return call.remember(head_key, await call.under_lock(answer))
    async with _tenant_turn(head_key):
        answer = await call.send(_HEADS.get(head_key) if stored is not None else None, stored)
        if isinstance(answer, _Head):
            answer = await call.send(answer.head, answer.stored)
        if isinstance(answer, Appended):
            return call.remember(head_key, answer)
        async with conn.transaction():
            return call.remember(head_key, await call.under_lock(answer))


_TURNS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str, int, str], asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _tenant_turn(head_key: tuple[str, str, int, str]) -> asyncio.Lock:
    """The in-process queue of autocommit appends to one chain, on the running loop.

    Without it, concurrent runs of one tenant guess the same head and all but one miss,
    each miss costing round trips; with it, each guess is the head the one before left.
    """
    turns = _TURNS.setdefault(asyncio.get_running_loop(), {})
    turn = turns.get(head_key)
    if turn is None:
        turn = turns[head_key] = asyncio.Lock()
    return turn


@dataclass(frozen=True)
class _AppendCall:
    """One event to append through `audit_append`."""

    conn: Conn
    tenant: str
    thread_id: str | None
    kind: str
    event_key: str | None
    text: str
    relaxed: bool

    async def send(self, head: tuple[int, str] | None, stored: Any) -> Appended | _Head:
        """Link the row to ``head`` and append it, or learn the head (``head`` None)."""
        prev_seq, prev_hash = head if head is not None else (0, GENESIS_HASH)
        digest = None
        if head is not None:
            digest = row_hash(
                tenant=self.tenant,
                seq=prev_seq + 1,
                thread_id=self.thread_id,
                kind=self.kind,
                event_key=self.event_key,
                payload=stored,
                prev_hash=prev_hash,
            )
        cur = await self.conn.cursor(row_factory=dict_row).execute(
            _APPEND,
            (
                _AUDIT_LOCK_CLASS,
                RELAXED_COMMIT if self.relaxed else None,
                self.tenant,
                self.thread_id,
                self.kind,
                self.event_key,
                self.text,
                prev_seq,
                prev_hash,
                digest,
            ),
        )
        row = await cur.fetchone()
        assert row is not None  # audit_append always answers one row
        if row["id"] is not None:
            return Appended(row["id"], row["seq"], row["hash"], row["created"])
        return _Head((row["seq"], row["hash"] or GENESIS_HASH), row["payload"])

    async def under_lock(self, seen: _Head) -> Appended:
        """Append on ``seen``; inside the caller's transaction, so the lock stays held."""
        answer = await self.send(seen.head, seen.stored)
        if isinstance(answer, _Head):
            # The head moved between an autocommit call and this transaction's first; this
            # transaction holds the lock now, so the head it reported stays put.
            answer = await self.send(answer.head, answer.stored)
        if isinstance(answer, _Head):  # unreachable under the lock
            raise RuntimeError(f"audit chain of tenant {self.tenant!r} moved under its lock")
        return answer

    @staticmethod
    def remember(head_key: tuple[str, str, int, str], appended: Appended) -> Appended:
        if appended.created:
            _HEADS[head_key] = (appended.seq, appended.hash)
        return appended


@dataclass(frozen=True)
class _Head:
    """The chain's head as `audit_append` reported it, and the payload as JSONB stored it."""

    head: tuple[int, str]
    stored: Any


async def record_event(
    target: Database | Conn,
    *,
    tenant: str,
    thread_id: str | None,
    kind: Kind,
    payload: Mapping[str, Any],
    event_key: str | None = None,
    relaxed: bool = False,
) -> Appended:
    """`append_event` on ``target``: a connection, or a database to borrow one from.

    On a database the event gets a transaction of its own, holding nothing else, which
    commits relaxed (`RELAXED_COMMIT`); on a connection ``relaxed`` says whether the
    caller's transaction may.
    """
    if not isinstance(target, Database):
        return await append_event(
            target,
            tenant=tenant,
            thread_id=thread_id,
            kind=kind,
            payload=payload,
            event_key=event_key,
            relaxed=relaxed,
        )
    async with target.connection() as conn:
        return await append_event(
            conn,
            tenant=tenant,
            thread_id=thread_id,
            kind=kind,
            payload=payload,
            event_key=event_key,
            relaxed=True,
        )


# --- the agent's events ---------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One event to record: its kind, payload (masked when appended) and idempotency key."""

    kind: Kind
    payload: dict[str, Any]
    key: str | None


async def record(
    target: Database | Conn,
    tenant: str,
    thread_id: str | None,
    event: Event,
    *,
    relaxed: bool = False,
) -> Appended:
    """Append ``event`` to ``tenant``'s chain (the nodes' and the gate's one-line hook).

    ``relaxed`` as in `record_event`.
    """
    return await record_event(
        target,
        tenant=tenant,
        thread_id=thread_id,
        kind=event.kind,
        payload=event.payload,
        event_key=event.key,
        relaxed=relaxed,
    )


def request_received_event(
    thread_id: str, *, request: str, requester: str, attachments: Sequence[Mapping[str, Any]]
) -> Event:
    """The request as received (masked), who sent it, and digests of any attachments."""
    return Event(
        "request_received",
        {
            "request": request[:8000],
            "request_chars": len(request),
            "requester": requester,
            "attachments": [
                {
                    "name": str(a.get("name", "")),
                    "chars": len(str(a.get("text", ""))),
                    "hash": content_hash(str(a.get("text", ""))),
                }
                for a in attachments
            ],
        },
        f"{thread_id}:request_received",
    )


def route_event(
    thread_id: str,
    *,
    route: str,
    confidence: float,
    reason: str,
    model_path: str,
    entities: Mapping[str, Any] | None = None,
    status: str | None = None,
) -> Event:
    """The router's decision: route (so tool scope), confidence, which model, what it found."""
    return Event(
        "route",
        {
            "route": route,
            "confidence": confidence,
            "reason": reason,
            "model_path": model_path,
            "entities": dict(entities or {}),
            "status": status,
        },
        f"{thread_id}:route:{route}",
    )


def plan_event(
    thread_id: str,
    *,
    plan: Mapping[str, Any],
    model_path: str,
    model: str,
    prompt_version: str,
    notes: Sequence[str] = (),
) -> Event:
    """A phase's plan, which planner served it (model path, model, prompt version).

    The key holds the phase and a digest of the steps: a deterministic re-run is recorded
    once; a model that plans differently on a re-run is recorded as what it was.
    """
    steps = [
        {"step_id": s["step_id"], "tool": s["tool"], "args": s["args"], "why": s["why"]}
        for s in plan["steps"]
    ]
    digest = masked_digest(steps)
    return Event(
        "plan",
        {
            "phase": plan["phase"],
            "source": plan["source"],
            "final": plan["final"],
            "steps": steps,
            "model_path": model_path,
            "model": model,
            "prompt_version": prompt_version,
            "notes": list(notes),
        },
        f"{thread_id}:plan:{plan['phase']}:{digest}",
    )


def tool_call_event(
    *,
    thread_id: str,
    raw_args: Any,
    validated_args: dict[str, Any] | None,
    outcome: Mapping[str, Any],
) -> Event:
    """One gated call (``outcome`` is a `tools.gate.ToolOutcome`).

    The key names the thread, step, tool, args and how the call ended (ok, replayed, or the
    error code and message), so a re-run that ends the same way is recorded once, and a
    refusal followed by the approved call is recorded twice.
    """
    error = outcome.get("error")
    result = outcome.get("result")
    status = "replayed" if outcome.get("replayed") else "ok"
    if error:
        status = f"{error.get('code')}-{masked_digest(error)}"
    args = validated_args if validated_args is not None else raw_args
    args_digest = masked_digest({"tool": outcome["tool"], "args": args})
    return Event(
        "tool_call",
        {
            "step_id": outcome["step_id"],
            "tool": outcome["tool"],
            "tier": outcome["tier"],
            "raw_args": raw_args,
            "validated_args": validated_args,
            "result_hash": content_hash(result) if result is not None else None,
            "idempotency_key": outcome.get("idempotency_key"),
            "ok": bool(outcome.get("ok")),
            "error_code": error.get("code") if error else None,
            "error_message": error.get("message") if error else None,
            "replayed": bool(outcome.get("replayed")),
        },
        f"{thread_id}:tool_call:{outcome['step_id']}:{args_digest}:{status}",
    )


def approval_requested_event(
    thread_id: str, *, request: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]
) -> Event:
    """An approval request (``request``: an `ApprovalRequest`), recorded before interrupt().

    The key is the thread, the step ids, and a digest of their args and of who approved
    them so far: a re-run of the node asks again with the same key (recorded once); the
    second round of a dual-control approval, or a request after an edit, is a new event.
    """
    requirements = [dict(r) for r in request.get("steps", [])]
    round_digest = masked_digest(
        {
            "args": [s["args"] for s in steps],
            "approved_by": [r.get("approved_by", []) for r in requirements],
        }
    )
    step_ids = ",".join(s["step_id"] for s in steps)
    return Event(
        "approval_requested",
        {
            "requester": request.get("requester"),
            "actions": [
                {"step_id": s["step_id"], "tool": s["tool"], "args": s["args"]} for s in steps
            ],
            "requirements": requirements,
            "evidence_hash": content_hash(request.get("evidence", [])),
        },
        f"{thread_id}:{step_ids}:{round_digest}:requested",
    )


def edit_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The keys whose values an edit changed, with old and new values."""
    return {
        key: {"old": old.get(key), "new": new.get(key)}
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    }


def decision_event(
    thread_id: str, decision: Mapping[str, Any], *, original_args: Mapping[str, Any]
) -> Event:
    """A reviewer's decision on one step (``decision``: a `state.graph_state.Decision`).

    ``original_args`` are the validated args the reviewer was shown; for an edit the
    payload lists the keys that changed, old against new.
    """
    decided = masked_digest({"tool": decision["tool"], "args": decision["args"]})
    return Event(
        "decision",
        {
            "step_id": decision["step_id"],
            "tool": decision["tool"],
            "reviewer_id": decision["reviewer_id"],
            "reviewer_role": decision["reviewer_role"],
            "decision": decision["decision"],
            "reason": decision["reason"],
            "args": decision["args"],
            "edit_diff": edit_diff(original_args, decision["args"])
            if decision["decision"] == "edit"
            else {},
        },
        f"{thread_id}:{decision['step_id']}:{decision['reviewer_id']}:"
        f"{decision['decision']}:{decided}:decision",
    )


def answer_refused_event(
    thread_id: str, *, request_key: str, reviewer: Mapping[str, Any], reason: str, attempt: str
) -> Event:
    """An answer to the approval request ``request_key`` that was refused, and why.

    ``reviewer`` is who answered as far as it is known (the server's verified user, or
    whom the answer names on the CLI). ``attempt`` tells refusals apart: the approval
    step's count of answers it refused to this request, so its re-run records each once,
    or a new id for each refusal made before the step (`record_refused_answer`).
    """
    return Event(
        "answer_refused",
        {
            "request_key": request_key,
            "reviewer_id": str(reviewer.get("id", "?")),
            "reviewer_role": str(reviewer.get("role", "")),
            "reason": reason,
        },
        f"{thread_id}:{request_key}:answer_refused:{attempt}",
    )


async def latest_approval_request(conn: Conn, thread_id: str) -> dict[str, Any] | None:
    """The thread's latest ``approval_requested`` event (seq, payload, event_key, tenant).

    None for a thread with no request on record.
    """
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT seq, payload, event_key, tenant FROM audit_events WHERE thread_id = %s"
        " AND kind = 'approval_requested' ORDER BY seq DESC LIMIT 1",
        (thread_id,),
    )
    return await cur.fetchone()


async def record_refused_answer(
    conn: Conn, thread_id: str, *, reviewer: Mapping[str, Any], reason: str
) -> None:
    """Record an answer refused before it reached the approval step (`answer_refused`).

    Refused by the CLI's checks or the server's admission; recorded against the thread's
    latest approval request, in its tenant's chain. A thread with no request on record
    (asked before the chain recorded requests) records nothing: there is no request to tie
    the refusal to.
    """
    asked = await latest_approval_request(conn, thread_id)
    if asked is None:
        return
    event = answer_refused_event(
        thread_id,
        request_key=asked["event_key"],
        reviewer=reviewer,
        reason=reason,
        attempt=str(uuid.uuid4()),
    )
    await record(conn, asked["tenant"], thread_id, event)


def guard_flag_event(thread_id: str, flag: Mapping[str, Any]) -> Event:
    """A guard's flag (suspected injection, PII, taint), keyed by its masked content."""
    return Event("guard_flag", dict(flag), f"{thread_id}:guard_flag:{masked_digest(flag)}")


def outcome_event(thread_id: str, *, status: str, reason: str, route: str | None) -> Event:
    """How the run ended."""
    return Event(
        "outcome",
        {"status": status, "reason": reason, "route": route},
        f"{thread_id}:outcome",
    )


# --- verifying ------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokenLink:
    """The first row of a chain that does not verify, and why.

    ``edited``: the stored hash is not the hash of the row's content. ``broken_link``: the
    row's ``prev_hash`` is not the previous row's hash. ``gap``: ``seq`` skips numbers (rows
    were deleted). ``reordered``: the row is out of place (it was inserted after the next
    row, or it links to a row other than its predecessor).
    """

    tenant: str
    seq: int
    id: int
    reason: Reason
    detail: str


@dataclass(frozen=True)
class ChainReport:
    """One tenant's chain: its length, its head, and its first broken link if any."""

    tenant: str
    rows: int
    head_seq: int | None
    head_hash: str | None
    broken: BrokenLink | None = None


UnauditedTable = Literal[
    "tool_calls",
    "approval_decisions",
    "payments",
    "vendor_bank_changes",
    "email_outbox",
    "invoice_exceptions",
    "invoices",
    "vendors",
]
UnauditedReason = Literal["no_event", "outside_gate", "differs", "ledger_edited", "unapproved"]


@dataclass(frozen=True)
class Unaudited:
    """A committed record the chain does not vouch for, and why.

    ``no_event``: a ledger row or decision whose event the chain does not hold.
    ``outside_gate``: a payment, bank change, email or exception with no ledger row of its
    tool on its thread (for a payment the seed wrote: not in the seed's record), or an
    invoice or vendor not in the seed's record.
    ``differs``: one whose columns say other than its ledger row's result (or the seed's
    record), a decision other than its event, or an invoice or vendor that the seed's record
    and its gated calls do not account for. ``ledger_edited``: a ledger row whose
    result is not the one its event hashed. ``unapproved``: an irreversible or destructive
    call without the approvals of its arguments it always needs, or a payment to another
    account than its approvers were shown.
    """

    table: UnauditedTable
    thread_id: str | None
    detail: str
    reason: UnauditedReason = "no_event"


@dataclass(frozen=True)
class VerifyReport:
    """The result of `verify_chain`."""

    chains: list[ChainReport] = field(default_factory=list)
    unaudited: list[Unaudited] = field(default_factory=list)
    """Records the chain does not vouch for: events missing, writes past the gate, edits."""

    @property
    def ok(self) -> bool:
        """True when every chain verified and every record has its event."""
        return all(c.broken is None for c in self.chains) and not self.unaudited

    @property
    def first_broken(self) -> BrokenLink | None:
        """The first broken link over the chains (tenants in name order)."""
        return next((c.broken for c in self.chains if c.broken is not None), None)

    @property
    def rows(self) -> int:
        """Rows checked."""
        return sum(c.rows for c in self.chains)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON, as `payables audit verify --json` prints it."""
        broken = self.first_broken
        return {
            "ok": self.ok,
            "rows": self.rows,
            "first_broken": asdict(broken) if broken else None,
            "chains": [asdict(c) for c in self.chains],
            "unaudited": [asdict(u) for u in self.unaudited],
        }


async def verify_chain(conn: Conn, tenant: str | None = None) -> VerifyReport:
    """Walk each tenant's chain (or only ``tenant``'s) in ``seq`` order.

    Each row must follow its predecessor (``seq`` + 1, inserted after it, linking to its
    hash) and hash to its stored hash; a chain's report names the first row that does not.
    Rows stream through a server-side cursor, so memory does not grow with the chain.

    Then the records the chain vouches for, directly or through the gate's ledger:

    - every ledger row of a gated write (``tool_calls``) and every reviewer decision must
      have its event, which commits with it (`append_event` in the same transaction); each
      decision must be the one its event records (the gate reads the table: a reject
      turned into an approval would pay), and each ledger row's result the one its event
      hashed;
    - every irreversible call must have an approval of its arguments on record, every
      destructive one two reviewers' including a controller's (what the policy always
      asks; thresholds that vary with settings are not judged again), and every payment
      must pay the account its approvers were shown;
    - every payment, bank change, email and exception must have a ledger row of its tool,
      on its thread, whose result says the same (an email's body: whose arguments do; a
      payment the seed wrote instead: the latest seed's ``world_seeded`` record);
    - every invoice and vendor must be in that record, with what no tool changes as it
      says (an invoice's vendor, total and currency; a vendor's status), an invoice in
      the status its latest gated call left it in (the seed's if none did), and a vendor's
      account the seed's (by its mask) or, after a gated bank change, the latest change's
      (in full).

    A chain cut short, or emptied, with its triggers disabled still links and hashes; the
    first check names what it lost. The others name records written or edited past the
    gate. At most `UNAUDITED_SHOWN` records are named in all.
    """
    tenants = await audit_tenants(conn) if tenant is None else [tenant]
    chains = [await _verify_tenant(conn, t) for t in tenants]
    unaudited = await _unaudited(conn, tenant)
    for check in (
        _edited_decisions,
        _edited_ledger_rows,
        _unapproved_calls,
        _records_past_the_gate,
    ):
        if len(unaudited) >= UNAUDITED_SHOWN:
            break
        unaudited += await check(conn, tenant, UNAUDITED_SHOWN - len(unaudited))
    return VerifyReport(chains=chains, unaudited=unaudited)


UNAUDITED_SHOWN = 20
"""How many records the chain does not vouch for `verify_chain` names (it stops there)."""

# Each record's thread is its tenant's (the run index); a record of a thread with no run
# index row (a seeded payment; pruned runs keep theirs) is checked only when no tenant is
# named.
_UNAUDITED_SQL = (
    "SELECT 'tool_calls' AS record, t.thread_id, t.tool || ' at step ' || t.step_id"
    " || ' (key ' || left(t.idempotency_key, 12) || '...)' AS detail, t.created_at AS at"
    " FROM tool_calls AS t LEFT JOIN runs AS r ON r.thread_id = t.thread_id"
    " WHERE (%(tenant)s::text IS NULL OR r.tenant = %(tenant)s) AND NOT EXISTS ("
    " SELECT 1 FROM audit_events AS a WHERE a.thread_id = t.thread_id AND a.kind = 'tool_call'"
    " AND a.payload->>'idempotency_key' = t.idempotency_key"
    " AND (%(tenant)s::text IS NULL OR a.tenant = %(tenant)s))"
    " UNION ALL"
    " SELECT 'approval_decisions', d.thread_id, d.reviewer_id || ' ' || d.decision || ' '"
    " || d.tool || ' at step ' || d.step_id, d.created_at"
    " FROM approval_decisions AS d LEFT JOIN runs AS r ON r.thread_id = d.thread_id"
    " WHERE (%(tenant)s::text IS NULL OR r.tenant = %(tenant)s) AND NOT EXISTS ("
    " SELECT 1 FROM audit_events AS a WHERE a.thread_id = d.thread_id AND a.kind = 'decision'"
    " AND a.payload->>'step_id' = d.step_id AND a.payload->>'reviewer_id' = d.reviewer_id"
    " AND (%(tenant)s::text IS NULL OR a.tenant = %(tenant)s))"
    " ORDER BY at LIMIT %(limit)s"
)


async def _unaudited(conn: Conn, tenant: str | None) -> list[Unaudited]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_UNAUDITED_SQL, {"tenant": tenant, "limit": UNAUDITED_SHOWN})
    return [Unaudited(r["record"], r["thread_id"], r["detail"]) for r in await cur.fetchall()]


# Decisions whose reviewer's events on the step all say another decision, role or tool (one
# with no event at all is `_UNAUDITED_SQL`'s). A reviewer may decide a step again after an
# edit: any of their events on the step that says the same vouches for the row.
_EDITED_DECISIONS_SQL = (
    "SELECT d.thread_id, d.reviewer_id || ' ' || d.decision || ' ' || d.tool || ' at step '"
    " || d.step_id || ' as ' || d.reviewer_role || ': its event says ' || e.latest AS detail"
    " FROM approval_decisions AS d LEFT JOIN runs AS r ON r.thread_id = d.thread_id"
    # An event missing a field says otherwise (false, not NULL); no event at all: NULL.
    " CROSS JOIN LATERAL (SELECT bool_or(COALESCE(a.payload->>'decision' = d.decision"
    " AND a.payload->>'tool' = d.tool AND a.payload->>'reviewer_role' = d.reviewer_role,"
    " false)) AS matched, (array_agg(concat(a.payload->>'decision', ' ', a.payload->>'tool',"
    " ' as ', a.payload->>'reviewer_role') ORDER BY a.id DESC))[1] AS latest"
    " FROM audit_events AS a WHERE a.thread_id = d.thread_id AND a.kind = 'decision'"
    " AND a.payload->>'step_id' = d.step_id AND a.payload->>'reviewer_id' = d.reviewer_id"
    " AND (%(tenant)s::text IS NULL OR a.tenant = %(tenant)s)) AS e"
    " WHERE (%(tenant)s::text IS NULL OR r.tenant = %(tenant)s) AND NOT e.matched"
    " ORDER BY d.created_at LIMIT %(limit)s"
)


async def _edited_decisions(conn: Conn, tenant: str | None, limit: int) -> list[Unaudited]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_EDITED_DECISIONS_SQL, {"tenant": tenant, "limit": limit})
    return [
        Unaudited("approval_decisions", r["thread_id"], r["detail"], "differs")
        for r in await cur.fetchall()
    ]


# The result the first successful (not replayed) event of each ledger row hashed; a ledger
# row without one is `_UNAUDITED_SQL`'s.
_LEDGER_WITH_HASH_SQL = (
    "SELECT t.thread_id, t.step_id, t.tool, t.result, (SELECT a.payload->>'result_hash'"
    " FROM audit_events AS a WHERE a.thread_id = t.thread_id AND a.kind = 'tool_call'"
    " AND a.payload->>'idempotency_key' = t.idempotency_key AND a.payload->>'ok' = 'true'"
    " AND a.payload->>'replayed' = 'false'"
    " AND (%(tenant)s::text IS NULL OR a.tenant = %(tenant)s) ORDER BY a.id LIMIT 1)"
    " AS result_hash FROM tool_calls AS t LEFT JOIN runs AS r ON r.thread_id = t.thread_id"
    " WHERE (%(tenant)s::text IS NULL OR r.tenant = %(tenant)s) ORDER BY t.created_at"
)


async def _found_in(
    conn: Conn,
    query: sql.Composed | str,
    tenant: str | None,
    problem: Callable[[dict[str, Any]], Unaudited | None],
    limit: int,
) -> list[Unaudited]:
    """What ``problem`` finds in the rows of ``query``, up to ``limit``.

    The rows stream through a server-side cursor, so memory does not grow with the table.
    """
    found: list[Unaudited] = []
    async with (
        conn.transaction(),
        conn.cursor(name=f"audit_check_{id(conn)}", row_factory=dict_row) as cur,
    ):
        await cur.execute(query, {"tenant": tenant})
        async for row in cur:
            if (unaudited := problem(row)) is not None:
                found.append(unaudited)
                if len(found) >= limit:
                    break
    return found


async def _edited_ledger_rows(conn: Conn, tenant: str | None, limit: int) -> list[Unaudited]:
    return await _found_in(conn, _LEDGER_WITH_HASH_SQL, tenant, _ledger_problem, limit)


def _ledger_problem(row: Mapping[str, Any]) -> Unaudited | None:
    if row["result_hash"] is None or content_hash(row["result"]) == row["result_hash"]:
        return None
    return Unaudited(
        "tool_calls",
        row["thread_id"],
        f"{row['tool']} at step {row['step_id']}: its result is not the one its event recorded",
        "ledger_edited",
    )


# Each approval-tier ledger row with the approvals recorded for its step, and the account
# a payment paid.
_APPROVED_CALLS_SQL = (
    "SELECT t.thread_id, t.step_id, t.tool, t.tier, t.args, p.payment_id, p.payee_account,"
    " COALESCE((SELECT jsonb_agg(jsonb_build_object('reviewer_id', d.reviewer_id,"
    " 'reviewer_role', d.reviewer_role, 'args_hash', d.args_hash,"
    " 'payee_digest', d.payee_digest, 'payee_masked', d.payee_masked) ORDER BY d.decision_id)"
    " FROM approval_decisions AS d WHERE d.thread_id = t.thread_id AND d.step_id = t.step_id"
    " AND d.tool = t.tool AND d.decision <> 'reject'), '[]'::jsonb) AS approvals"
    " FROM tool_calls AS t LEFT JOIN payments AS p ON p.idempotency_key = t.idempotency_key"
    " LEFT JOIN runs AS r ON r.thread_id = t.thread_id"
    " WHERE t.tier IN ('irreversible', 'destructive')"
    " AND (%(tenant)s::text IS NULL OR r.tenant = %(tenant)s) ORDER BY t.created_at"
)


async def _unapproved_calls(conn: Conn, tenant: str | None, limit: int) -> list[Unaudited]:
    return await _found_in(conn, _APPROVED_CALLS_SQL, tenant, _approval_problem, limit)


def _approval_problem(row: Mapping[str, Any]) -> Unaudited | None:
    def unapproved(table: UnauditedTable, detail: str) -> Unaudited:
        return Unaudited(table, row["thread_id"], detail, "unapproved")

    call = f"{row['tool']} at step {row['step_id']}"
    wanted = args_hash(row["tool"], row["args"])
    approvals = [a for a in row["approvals"] if a["args_hash"] == wanted]
    reviewers = {a["reviewer_id"] for a in approvals}
    if not reviewers:
        return unapproved("tool_calls", f"{call}: no approval of its arguments on record")
    if row["tier"] == Tier.DESTRUCTIVE.value and (
        len(reviewers) < 2 or not any(a["reviewer_role"] == CONTROLLER for a in approvals)
    ):
        return unapproved(
            "tool_calls",
            f"{call}: approved by {', '.join(sorted(reviewers))}; dual control needs two "
            "reviewers, one a controller",
        )
    if row["payee_account"] is None:
        return None
    paid = payee_digest(row["payee_account"])
    # An approval recorded before approvals carried the payee (digest NULL) says nothing.
    other = [a for a in approvals if a["payee_digest"] not in (None, paid)]
    if not other:
        return None
    shown = ", ".join(f"{a['reviewer_id']} was shown {a['payee_masked']}" for a in other)
    return unapproved(
        "payments",
        f"payment {row['payment_id']} of {call}: pays {_masked(row['payee_account'])}, not "
        f"the account its approvers saw ({shown})",
    )


@dataclass(frozen=True)
class _GatedRecord:
    """A table only a gated tool writes, and what its ledger result says of each row."""

    table: UnauditedTable
    tool: str
    name: Callable[[Mapping[str, Any]], str]
    said: Callable[[Mapping[str, Any]], dict[str, Any]]
    """The row's columns as its tool's result (`tools.ap`) states them, or its arguments do
    (``from_args``)."""
    from_args: tuple[str, ...] = ()
    """Columns the call's arguments state and its result does not: the ledger keeps the
    arguments its approvals bind (`_approval_problem`)."""


def _masked(account: str) -> str:
    return mask_account(account) or ""


def _payment_said(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "payment_id": r["payment_id"],
        "invoice_id": r["invoice_id"],
        "vendor_id": r["vendor_id"],
        "amount": str(r["amount"]),
        "currency": r["currency"],
        "pay_on": str(r["pay_on"]),
        "payee_account_masked": _masked(r["payee_account"]),
    }


_GATED_RECORDS = (
    _GatedRecord(
        "payments",
        "schedule_payment",
        lambda r: f"payment {r['payment_id']} of {r['invoice_id']} ({r['amount']} {r['currency']})",
        _payment_said,
    ),
    _GatedRecord(
        "vendor_bank_changes",
        "update_vendor_bank_account",
        lambda r: f"bank change {r['change_id']} of {r['vendor_id']}",
        lambda r: {
            "change_id": r["change_id"],
            "vendor_id": r["vendor_id"],
            "old_account_masked": _masked(r["old_account"]),
            "new_account_masked": _masked(r["new_account"]),
        },
    ),
    _GatedRecord(
        "email_outbox",
        "send_vendor_email",
        lambda r: f"email {r['outbox_id']} to {r['vendor_id']}",
        lambda r: {
            "outbox_id": r["outbox_id"],
            "vendor_id": r["vendor_id"],
            "to_address": r["to_address"],
            "subject": r["subject"],
            "body": r["body"],
        },
        from_args=("body",),
    ),
    _GatedRecord(
        "invoice_exceptions",
        "flag_exception",
        lambda r: f"exception {r['exception_id']} on {r['invoice_id']}",
        lambda r: {
            "exception_id": r["exception_id"],
            "invoice_id": r["invoice_id"],
            "codes": list(r["codes"]),
        },
    ),
)


def seeded_payment(payment: Mapping[str, Any]) -> dict[str, Any]:
    """A payment the seed wrote as its ``world_seeded`` record lists it (no thread, no gate).

    ``payment`` has the columns of ``payments``; the account is masked, as in every audit
    payload.
    """
    return {**_payment_said(payment), "status": payment["status"]}


def seeded_invoice(invoice: Mapping[str, Any]) -> dict[str, Any]:
    """An invoice as the seed's ``world_seeded`` record lists it.

    That is what a payment to it is held to (vendor, total, currency), which no tool
    changes, and its status, which only the gated calls that stage, flag and pay it change.
    ``invoice`` has the columns of ``invoices``.
    """
    return {
        "vendor_id": invoice["vendor_id"],
        "total": f"{Decimal(invoice['total']):.2f}",
        "currency": invoice["currency"].strip(),
        "status": invoice["status"],
    }


def seeded_vendor(vendor: Mapping[str, Any]) -> dict[str, Any]:
    """A vendor as the seed's ``world_seeded`` record lists it.

    That is its remittance account, masked (gated bank changes replace it), and its status
    (no tool changes it). ``vendor`` has the columns of ``vendors``.
    """
    return {
        "remit_account_masked": _masked(vendor["remit_bank_account"]),
        "status": vendor["status"],
    }


_STATUS_TOOLS = ("stage_invoice", "flag_exception", "schedule_payment")
"""The gated tools that set an invoice's status; each result says the status it left."""

# Each invoice with the status its latest gated call left it in (only the full verify:
# invoices have no thread, so no tenant). Latest by its event's id: the event is appended
# in the call's transaction, under the invoice's lock (the gate's claim), so ids follow
# the order the calls changed the invoice in. A call whose event is gone counts as the
# earliest (`_UNAUDITED_SQL` names it).
_INVOICES_SQL = (
    "SELECT i.invoice_id, i.vendor_id, i.total, i.currency, i.status, g.tool AS last_tool,"
    " g.status AS left_in FROM invoices AS i LEFT JOIN (SELECT DISTINCT ON"
    " (t.args->>'invoice_id') t.args->>'invoice_id' AS invoice_id, t.tool,"
    " t.result->>'status' AS status FROM tool_calls AS t CROSS JOIN LATERAL"
    " (SELECT min(a.id) AS id FROM audit_events AS a WHERE a.thread_id = t.thread_id"
    " AND a.kind = 'tool_call' AND a.payload->>'idempotency_key' = t.idempotency_key) AS e"
    f" WHERE t.tool IN {_STATUS_TOOLS!r} ORDER BY t.args->>'invoice_id', e.id DESC NULLS LAST)"
    " AS g ON g.invoice_id = i.invoice_id WHERE %(tenant)s::text IS NULL ORDER BY i.invoice_id"
)


def _naming(
    table: UnauditedTable, thread_id: str | None, name: str
) -> Callable[[UnauditedReason, str], Unaudited]:
    """How verify names a record of ``table`` called ``name`` and what is wrong with it."""
    return lambda reason, detail: Unaudited(table, thread_id, f"{name}: {detail}", reason)


def _invoice_problem(
    seeded: Mapping[str, Mapping[str, Any]], row: Mapping[str, Any]
) -> Unaudited | None:
    found = _naming("invoices", None, f"invoice {row['invoice_id']}")  # no thread
    if (listed := seeded.get(row["invoice_id"])) is None:
        return found("outside_gate", "not an invoice the latest seed wrote")
    held_to = seeded_invoice(row)
    del held_to["status"]
    if (detail := _difference(held_to, listed, "the seed's record")) is not None:
        return found("differs", detail)
    if row["last_tool"] is None:
        if row["status"] == listed["status"]:
            return None
        said = f"no gated call changed it, and the seed's record says {listed['status']}"
    elif row["status"] == row["left_in"]:
        return None
    else:
        said = f"its latest gated call ({row['last_tool']}) left it {row['left_in']}"
    return found("differs", f"status is {row['status']}; {said}")


# Each vendor with its bank changes in the order they were made (each holds the vendor's
# row while it changes it), full accounts for the comparison only (only the full verify).
_VENDORS_SQL = (
    "SELECT v.vendor_id, v.remit_bank_account, v.status, c.changes FROM vendors AS v"
    " LEFT JOIN (SELECT vendor_id, jsonb_agg(jsonb_build_object('change_id', change_id,"
    " 'old', old_account, 'new', new_account) ORDER BY change_id) AS changes"
    " FROM vendor_bank_changes GROUP BY vendor_id) AS c ON c.vendor_id = v.vendor_id"
    " WHERE %(tenant)s::text IS NULL ORDER BY v.vendor_id"
)


def _vendor_problem(
    seeded: Mapping[str, Mapping[str, Any]], row: Mapping[str, Any]
) -> Unaudited | None:
    found = _naming("vendors", None, f"vendor {row['vendor_id']}")  # no thread
    if (listed := seeded.get(row["vendor_id"])) is None:
        return found("outside_gate", "not a vendor the latest seed wrote")
    if row["status"] != listed["status"]:
        return found(
            "differs", f"status is {row['status']}, the seed's record says {listed['status']}"
        )
    # The account the seed wrote (by its mask), then each gated change's in turn (in full):
    # a change that replaced another account, or an account no change left, was edited.
    was = listed["remit_account_masked"]
    exact: str | None = None
    for change in row["changes"] or []:
        follows = (change["old"] == exact) if exact is not None else (_masked(change["old"]) == was)
        if not follows:
            return found(
                "differs",
                f"bank change {change['change_id']} replaced {_masked(change['old'])}, but "
                f"the account was {was} then",
            )
        exact, was = change["new"], _masked(change["new"])
    account = row["remit_bank_account"]
    if (account == exact) if exact is not None else (_masked(account) == was):
        return None
    by = "its latest gated bank change" if exact is not None else "the seed's record"
    return found("differs", f"remittance account is {_masked(account)}, {by} says {was}")


_RECORDS_SQL = (
    "SELECT e.*, t.tool AS ledger_tool, t.thread_id AS ledger_thread,"
    " t.result AS ledger_result, t.args AS ledger_args FROM {table} AS e"
    " LEFT JOIN tool_calls AS t ON t.idempotency_key = e.idempotency_key"
    " LEFT JOIN runs AS r ON r.thread_id = e.thread_id"
    " WHERE (%(tenant)s::text IS NULL OR r.tenant = %(tenant)s) ORDER BY e.created_at"
)


async def _seed_record(conn: Conn) -> dict[str, Any] | None:
    """The latest seed's ``world_seeded`` payload; None when no seed recorded one.

    Worlds seeded by releases before the record (migration 0026) have none: their seeded
    payments, invoices and vendors are taken as they are. A record of the release before it
    listed invoices and vendors (no ``invoices`` or ``vendors`` key) leaves those unchecked.
    """
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT payload FROM audit_events WHERE kind = 'world_seeded' ORDER BY id DESC LIMIT 1"
    )
    row = await cur.fetchone()
    return None if row is None else dict(row["payload"])


async def _records_past_the_gate(conn: Conn, tenant: str | None, limit: int) -> list[Unaudited]:
    record_of_seed = await _seed_record(conn)
    seeded = (
        None
        if record_of_seed is None
        else {p["payment_id"]: p for p in record_of_seed.get("payments", [])}
    )
    found: list[Unaudited] = []
    for record in _GATED_RECORDS:
        if len(found) >= limit:
            break
        query = sql.SQL(_RECORDS_SQL).format(table=sql.Identifier(record.table))
        found += await _found_in(
            conn,
            query,
            tenant,
            functools.partial(_record_problem, record, seeded=seeded),
            limit - len(found),
        )
    for table, rows_sql, problem in (
        ("invoices", _INVOICES_SQL, _invoice_problem),
        ("vendors", _VENDORS_SQL, _vendor_problem),
    ):
        listed = None if record_of_seed is None else record_of_seed.get(table)
        if listed is None or len(found) >= limit:
            continue
        found += await _found_in(
            conn, rows_sql, tenant, functools.partial(problem, listed), limit - len(found)
        )
    return found


def _record_problem(
    record: _GatedRecord, row: Mapping[str, Any], *, seeded: dict[str, dict[str, Any]] | None
) -> Unaudited | None:
    found = _naming(record.table, row["thread_id"], record.name(row))
    if (
        record.table == "payments"
        and row["thread_id"] is None
        and row["idempotency_key"] == f"seed:{row['payment_id']}"
    ):
        if seeded is None:
            return None
        listed = seeded.get(row["payment_id"])
        if listed is None:
            return found(
                "outside_gate", "not a payment the latest seed wrote, nor one the gate wrote"
            )
        detail = _difference(seeded_payment(row), listed, "the seed's record")
    elif row["ledger_tool"] != record.tool or row["ledger_thread"] != row["thread_id"]:
        return found("outside_gate", f"no {record.tool} ledger row on its thread has its key")
    else:
        ledger = {
            **row["ledger_result"],
            **{k: row["ledger_args"].get(k) for k in record.from_args},
        }
        detail = _difference(record.said(row), ledger, "its ledger row")
    return None if detail is None else found("differs", detail)


def _difference(actual: Mapping[str, Any], said: Mapping[str, Any], by: str) -> str | None:
    """The first column ``actual`` states otherwise than ``said`` (by ``by``), redacted."""
    for key, value in actual.items():
        if said.get(key) != value:
            shown, stated = redact(_short(value, 40)), redact(_short(said.get(key), 40))
            return f"{key} is {shown}, {by} says {stated}"
    return None


async def audit_tenants(conn: Conn) -> list[str]:
    """The tenants that have audit rows, in order."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT DISTINCT tenant FROM audit_events ORDER BY tenant")
    return [r["tenant"] for r in await cur.fetchall()]


async def _verify_tenant(conn: Conn, tenant: str) -> ChainReport:
    rows = 0
    prev: dict[str, Any] | None = None
    broken: BrokenLink | None = None
    async with (
        conn.transaction(),
        conn.cursor(name=f"audit_verify_{id(conn)}", row_factory=dict_row) as cur,
    ):
        await cur.execute(
            "SELECT id, tenant, seq, thread_id, kind, event_key, payload, prev_hash, hash"
            " FROM audit_events WHERE tenant = %s ORDER BY seq",
            (tenant,),
        )
        async for row in cur:
            rows += 1
            if broken is None:
                broken = await _check_row(conn, row, prev)
            prev = row
    return ChainReport(
        tenant=tenant,
        rows=rows,
        head_seq=prev["seq"] if prev else None,
        head_hash=prev["hash"] if prev else None,
        broken=broken,
    )


async def _check_row(
    conn: Conn, row: dict[str, Any], prev: dict[str, Any] | None
) -> BrokenLink | None:
    def broken(reason: Reason, detail: str) -> BrokenLink:
        return BrokenLink(row["tenant"], row["seq"], row["id"], reason, detail)

    expected_seq = prev["seq"] + 1 if prev else 1
    expected_prev = prev["hash"] if prev else GENESIS_HASH
    if row["seq"] != expected_seq:
        missing = (
            f"{expected_seq}"
            if row["seq"] == expected_seq + 1
            else f"{expected_seq}..{row['seq'] - 1}"
        )
        return broken("gap", f"seq {missing} missing before seq {row['seq']} (rows deleted)")
    if prev is not None and row["id"] < prev["id"]:
        return broken(
            "reordered",
            f"row id {row['id']} was inserted before the previous row (id {prev['id']}, "
            f"seq {prev['seq']})",
        )
    if row["prev_hash"] != expected_prev:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT seq FROM audit_events WHERE tenant = %s AND hash = %s AND seq <> %s",
            (row["tenant"], row["prev_hash"], expected_seq - 1),
        )
        elsewhere = await cur.fetchone()
        if elsewhere is not None:
            return broken(
                "reordered",
                f"links to the row at seq {elsewhere['seq']}, not to its predecessor",
            )
    recomputed = row_hash(
        tenant=row["tenant"],
        seq=row["seq"],
        thread_id=row["thread_id"],
        kind=row["kind"],
        event_key=row["event_key"],
        payload=row["payload"],
        prev_hash=row["prev_hash"],
    )
    if recomputed != row["hash"]:
        return broken("edited", "stored hash differs from the hash of the row's content")
    if row["prev_hash"] != expected_prev:
        return broken(
            "broken_link",
            "prev_hash differs from the previous row's hash"
            if prev
            else "the first row does not link to the genesis hash",
        )
    return None


# --- reading --------------------------------------------------------------------------


async def timeline(
    conn: Conn, thread_id: str, *, tenant: str | None = None
) -> list[dict[str, Any]]:
    """One run's events in chain order, each with a one-line ``summary``."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT id, tenant, seq, thread_id, kind, event_key, payload, prev_hash, hash,"
        " created_at FROM audit_events WHERE thread_id = %s"
        " AND (%s::text IS NULL OR tenant = %s) ORDER BY tenant, seq",
        (thread_id, tenant, tenant),
    )
    events = []
    for row in await cur.fetchall():
        events.append({**row, "summary": summarize(row["kind"], row["payload"])})
    return events


def _short(value: Any, limit: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(kind: str, p: Mapping[str, Any]) -> str:
    """One line about an event, for `payables audit show`."""
    if kind == "request_received":
        return f"{p.get('requester')}: {_short(p.get('request', ''))}"
    if kind == "route":
        text = f"{p.get('route')} (confidence {p.get('confidence')}, router {p.get('model_path')})"
        if p.get("status"):
            text += f" → {p.get('status')}: {_short(p.get('reason', ''), 60)}"
        return text
    if kind == "plan":
        tools = " → ".join(s.get("tool", "?") for s in p.get("steps", [])) or "no steps"
        return (
            f"phase {p.get('phase')} by {p.get('model_path')} "
            f"(prompts {p.get('prompt_version')}): {tools}"
        )
    if kind == "tool_call":
        state = "ok" if p.get("ok") else f"{p.get('error_code')}"
        replayed = " (replayed)" if p.get("replayed") else ""
        return f"{p.get('step_id')} {p.get('tool')} [{p.get('tier')}] {state}{replayed}"
    if kind == "approval_requested":
        actions = ", ".join(f"{a['step_id']} {a['tool']}" for a in p.get("actions", []))
        needs = "; ".join(
            f"{r.get('min_approvers')} approver(s)"
            + (f", role {r['required_role']}" if r.get("required_role") else "")
            for r in p.get("requirements", [])
        )
        return f"{actions} needs {needs or 'approval'}"
    if kind == "decision":
        text = (
            f"{p.get('reviewer_id')} ({p.get('reviewer_role')}) {p.get('decision')} "
            f"{p.get('step_id')} {p.get('tool')}"
        )
        if p.get("edit_diff"):
            text += " changed " + ", ".join(p["edit_diff"])
        if p.get("reason"):
            text += f": {_short(p['reason'], 60)}"
        return text
    if kind == "outcome":
        return f"{p.get('status')}" + (f": {_short(p['reason'])}" if p.get("reason") else "")
    if kind == "answer_refused":
        role = f" ({p['reviewer_role']})" if p.get("reviewer_role") else ""
        return f"{p.get('reviewer_id')}{role} refused: {_short(p.get('reason', ''), 100)}"
    if kind == "world_replaced":
        erased = ", ".join(f"{n} {tool}" for tool, n in sorted(p.get("erased_calls", {}).items()))
        return f"world replaced by {p.get('operator')}, erasing {erased or 'nothing'}"
    if kind == "world_seeded":
        return (
            f"world seeded by {p.get('operator')}: {_short(p.get('world', ''), 60)}, "
            f"{len(p.get('vendors', {}))} vendor(s), {len(p.get('invoices', {}))} invoice(s), "
            f"{len(p.get('payments', []))} payment(s)"
        )
    return _short(dict(p))


def format_time(value: datetime) -> str:
    """A timeline timestamp: UTC, to the millisecond."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
