"""What every tool declares: arguments, result, side-effect tier, scopes, idempotency.

A tool is data (`ToolSpec`) plus an async handler. The handler never runs on its own:
`tools.gate.ToolGate` validates, scopes, approves, keys and times every call.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import psycopg
from pydantic import BaseModel, ConfigDict, field_validator

from runtime.context import Context
from runtime.errors import PayablesError
from tools.matching import MatchInputs


class Tier(StrEnum):
    """How much damage a call can do, which decides the policy the gate applies."""

    READ = "read"
    REVERSIBLE = "reversible"
    IRREVERSIBLE = "irreversible"
    DESTRUCTIVE = "destructive"

    @property
    def needs_approval(self) -> bool:
        """Irreversible and destructive calls always wait for a human decision."""
        return self in (Tier.IRREVERSIBLE, Tier.DESTRUCTIVE)

    @property
    def needs_idempotency_key(self) -> bool:
        """Every call that writes is keyed, so a re-run cannot write twice."""
        return self is not Tier.READ


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value or any(unicodedata.category(c) == "Cs" for c in value)
    if isinstance(value, list | tuple | set | frozenset):
        return any(_unstorable(v) for v in value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    return False


class ToolArgs(BaseModel):
    """Base for argument models: unknown fields are errors, not silently dropped.

    Text Postgres cannot store (NUL, or lone surrogates from bytes that were not UTF-8)
    is refused here, as a field error, before a handler could fail halfway through.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if _unstorable(value):
            raise ValueError("contains a NUL character or text that is not valid UTF-8")
        return value


class ToolResult(BaseModel):
    """Base for result models."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolFailure(PayablesError):
    """A handler's expected, actionable failure (unknown id, business rule).

    The gate turns it into a structured error result for the planner; anything else a
    handler raises is a bug and propagates.
    """

    def __init__(self, code: str, message: str, *, hint: str = "", retryable: bool = False):
        """Record a machine-readable code, a message for people and what to do next."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.retryable = retryable


@dataclass(frozen=True)
class Reviewer:
    """A person who decided on an approval request."""

    id: str
    role: str


@dataclass(frozen=True)
class Approval:
    """One recorded approval of a call's exact arguments (an approve, or an edit to them)."""

    reviewer: Reviewer
    payee_digest: str | None = None
    """`payee_digest` of the account the reviewer's request showed as the payee, for a tool
    that pays one (`tools.policy.PAYEE_TOOLS`); None for other tools, and for a decision
    recorded before approvals covered the payee."""
    payee_masked: str | None = None
    """That account, masked (for messages)."""


@dataclass(frozen=True)
class CallContext:
    """What a handler may use: the gate's connection (inside its transaction) and ids."""

    conn: psycopg.AsyncConnection[dict[str, Any]]
    thread_id: str
    step_id: str
    requester: str
    run: Context
    idempotency_key: str | None = None
    approvers: tuple[Reviewer, ...] = ()
    invoice: MatchInputs | None = None
    """For a write whose arguments name an ``invoice_id``: that invoice's match inputs, read
    after the gate locked its row in this transaction (None when no such invoice exists).
    Handlers that change an invoice decide on this read rather than reading it again."""
    request: str = ""
    """For a write: the thread's request as the run index recorded it (the router wrote it
    from the requester's input), read with the gate's claim. Not graph state, so a forged
    state or plan cannot put words in the clerk's mouth. Empty for a read, and for a thread
    the run index does not know."""


ArgsT = TypeVar("ArgsT", bound=ToolArgs)
ResultT = TypeVar("ResultT", bound=ToolResult)
Handler = Callable[[CallContext, ArgsT], Awaitable[ResultT]]


@dataclass(frozen=True)
class ToolSpec(Generic[ArgsT, ResultT]):
    """A tool's contract. ``description`` and field descriptions are the model's prompt."""

    name: str
    description: str
    args_model: type[ArgsT]
    result_model: type[ResultT]
    tier: Tier
    scopes: frozenset[str]
    handler: Handler[ArgsT, ResultT] = field(repr=False)
    timeout_s: float | None = None

    def parameters_schema(self) -> dict[str, Any]:
        """JSON Schema of the arguments, as sent to a model that plans tool calls."""
        return self.args_model.model_json_schema()

    def as_openai_tool(self) -> dict[str, Any]:
        """The OpenAI function-tool shape of this contract."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters_schema(),
            },
        }


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, non-JSON values as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def args_hash(tool: str, args: dict[str, Any]) -> str:
    """Identity of a call's content (tool + canonical args), used to bind approvals."""
    return hashlib.sha256(canonical_json({"tool": tool, "args": args}).encode()).hexdigest()


def payee_digest(account: str) -> str:
    """Identity of a payee account, used to bind a payment's approval to the account shown.

    A plain sha256 of an account whose last four characters are public can be brute-forced
    back to the account, so the digest stays where the account itself is stored (the
    approval tables); it never goes into an interrupt payload, an audit row or a log.
    """
    return hashlib.sha256(canonical_json({"payee": account}).encode()).hexdigest()


def idempotency_key(thread_id: str, step_id: str, tool: str, args: dict[str, Any]) -> str:
    """Key of one intended side effect: same thread, step, tool and args -> same key."""
    material = canonical_json({"thread": thread_id, "step": step_id, "tool": tool, "args": args})
    return "idem-" + hashlib.sha256(material.encode()).hexdigest()
