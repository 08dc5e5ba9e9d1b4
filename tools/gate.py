"""The one gate every tool call passes: nothing reaches a handler any other way.

In order: the tool exists, the route's scope allows it, the arguments validate against
the contract, the tool's circuit breaker lets the call through, the idempotency key is
claimed (for a write, which also locks the invoice it names and holds its vendor, then
reads them), the tier policy holds (approvals for irreversible and destructive calls are
read from the database and checked against `tools.policy`, on that read; a payment's
approvals must cover the vendor master account it is about to pay), and the handler
runs under a timeout inside one transaction with its ledger row (a read, which writes
nothing but its audit row, needs none). Expected failures come back as structured,
actionable errors; bugs propagate.

Under failure, each attempt that writes is one transaction, so a failed attempt leaves
nothing behind:

- A backend failure (the attempt timed out, a `psycopg.OperationalError`, a `ToolFailure`
  marked retryable, or a fault injected with ``PAYABLES_FAULTS=tool:NAME:error|timeout:P``)
  is retried with exponential backoff and jitter (`Context.tool_max_retries`,
  `retry_initial_s`, `retry_max_s`), for read tools and for writes under an idempotency key
  (see `retries_allowed`): a retried write whose first attempt did commit is replayed from
  the ledger, never repeated. When retries run out the call ends with a retryable error
  (``timeout``, ``backend_error`` or the handler's code).
- Each backend failure counts on the tool's breaker (`runtime.breakers`, ``tool:NAME``);
  any other ending of an attempt (a result, a replay, a refusal such as
  ``approval_required`` or a non-retryable `ToolFailure`) shows the backend answering and
  closes it. While the breaker is open, calls are refused at once with ``circuit_open``.
- Every attempt is audited. A failed attempt's row is written with the call's final
  outcome, in order and in the transaction of that outcome when it has one, so the chain
  holds no row for a side effect that was rolled back and keeps every attempt made.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict

import psycopg
from psycopg import pq
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from guards.redaction import mask_account, redact
from guards.untrusted import mask_untrusted
from runtime import failpoints
from runtime.breakers import BREAKERS, BreakerAdmission, BreakerBoard, BreakerState, CircuitBreaker
from runtime.context import Context, policy_of, with_policy
from runtime.faults import ENV_VAR as FAULTS_ENV_VAR
from runtime.faults import FAULTS, FaultInjector
from runtime.tracing import child_run
from state.audit import record, tool_call_event
from state.db import Database, check_held_thread_lock
from tools.contract import (
    Approval,
    CallContext,
    Reviewer,
    Tier,
    ToolFailure,
    ToolSpec,
    args_hash,
    canonical_json,
    idempotency_key,
    payee_digest,
)
from tools.matching import MatchInputs, compute_three_way_match, load_match_inputs, tolerances_from
from tools.policy import (
    PAYEE_TOOLS,
    ApprovalRequirement,
    approval_requirement,
    approvals_not_covering,
    stricter,
)
from tools.registry import DEFAULT_REGISTRY, ToolRegistry


class ToolError(TypedDict):
    """Why a call did not happen, and what to do instead."""

    code: str
    message: str
    hint: str
    retryable: bool


class ToolOutcome(TypedDict):
    """The normalized result of one gated call, as kept in graph state."""

    step_id: str
    tool: str
    tier: str
    ok: bool
    args: dict[str, Any]
    result: dict[str, Any] | None
    error: ToolError | None
    idempotency_key: str | None
    replayed: bool


def _outcome(
    step_id: str,
    tool: str,
    tier: str,
    args: dict[str, Any],
    *,
    result: dict[str, Any] | None = None,
    error: ToolError | None = None,
    key: str | None = None,
    replayed: bool = False,
) -> ToolOutcome:
    return ToolOutcome(
        step_id=step_id,
        tool=tool,
        tier=tier,
        ok=error is None,
        args=args,
        result=result,
        error=error,
        idempotency_key=key,
        replayed=replayed,
    )


def refusal(
    step_id: str,
    tool: str,
    tier: str,
    args: dict[str, Any],
    code: str,
    message: str,
    hint: str = "",
    retryable: bool = False,
) -> ToolOutcome:
    """The outcome of a call that was refused before (or instead of) running."""
    error = ToolError(code=code, message=message, hint=hint, retryable=retryable)
    return _outcome(step_id, tool, tier, args, error=error)


def describe_validation_error(exc: ValidationError) -> str:
    """Every field problem on one line, e.g. ``amount: Input should be greater than 0``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


log = logging.getLogger(__name__)

CIRCUIT_OPEN = "circuit_open"
"""Error code of a call refused because its tool's circuit breaker is open."""

BACKEND_ERROR = "backend_error"
"""Error code of a call whose backend kept failing (after any retries)."""

PAYEE_CHANGED = "payee_changed"
"""Error code of a payment refused because the vendor master account is no longer the one
its approval covers (a bank change committed after the reviewers saw it)."""

PAYEE_UNCONFIRMED = "payee_unconfirmed"
"""Error code of a payment refused because an approval of it does not say which account it
covered (it was recorded before approvals covered the payee)."""

PAYEE_REFUSALS = frozenset({PAYEE_CHANGED, PAYEE_UNCONFIRMED})
"""Refusals that only a new approval can lift: the run ends escalated, not re-planned."""


_RELAXED_TIERS = frozenset({Tier.READ.value, Tier.REVERSIBLE.value})
"""Tiers whose call transactions commit without waiting for the disk (see audit)."""


def retries_allowed(tier: Tier) -> bool:
    """Whether calls of this tier may be retried after a backend failure.

    Reads may; writes only under an idempotency key, which turns a retry of an attempt
    that did commit into a replay. Today every write tier is keyed
    (`Tier.needs_idempotency_key`), so a write without a key would only come from a new tier.
    """
    return tier is Tier.READ or tier.needs_idempotency_key


def is_backend_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the tool's backend is unwell rather than that the call is wrong.

    Timeouts, `psycopg.OperationalError` (lost connections, restarts, an exhausted pool,
    serialization failures, deadlocks, and the faults `PAYABLES_FAULTS` injects) and a
    `ToolFailure` its handler marked retryable. These are retried and counted on the
    breaker; anything else is either a structured refusal or a bug.
    """
    if isinstance(exc, ToolFailure):
        return exc.retryable
    return isinstance(exc, TimeoutError | psycopg.OperationalError)


def unavailable(error: ToolError | None) -> bool:
    """Whether a call failed because its tool is unavailable, not because of what it asked.

    True for a refusal by an open breaker and for retryable errors (a timeout or backend
    failure that outlived its retries); such a write can be tried again later.
    """
    return error is not None and (error["code"] == CIRCUIT_OPEN or error["retryable"])


def backoff(run: Context) -> wait_exponential_jitter:
    """Delay before retry n: ``retry_initial_s * 2**(n-1)`` plus up to ``retry_initial_s``.

    Capped at ``retry_max_s``. The jitter keeps processes that failed together from
    retrying together; ``retry_initial_s=0`` retries at once.
    """
    return wait_exponential_jitter(
        multiplier=run.retry_initial_s, max=run.retry_max_s, jitter=run.retry_initial_s
    )


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit] if text else 'no detail'}"


class _Attempt(NamedTuple):
    outcome: ToolOutcome
    backend_failed: bool
    """The attempt met a backend failure: retried while attempts remain."""


@dataclass
class _GatedCall:
    """One call through the gate, across its attempts."""

    gate: ToolGate
    run: Context
    thread_id: str
    step_id: str
    requester: str
    raw_args: dict[str, Any]
    validated: dict[str, Any] | None
    attempts: int = 1
    made: int = 0
    failed: list[ToolOutcome] = field(default_factory=list)
    """Failed attempts not yet audited; they are written with the final outcome."""

    async def audit(
        self, outcome: ToolOutcome, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> ToolOutcome:
        """Audit the failed attempts so far, then ``outcome``, in ``conn``'s transaction.

        Without ``conn`` the rows get a transaction of their own. A tool_call row is
        written for every outcome, inside the call's transaction when there is one, so a
        side effect never commits without it.
        """
        events = [*self.failed, outcome]
        if conn is not None:
            # The call's own transaction: it waits for the disk when it moved money or a
            # bank account, and commits relaxed otherwise (see state.audit.RELAXED_COMMIT).
            # A read has none; its rows then go in together, as one.
            relaxed = outcome["tier"] in _RELAXED_TIERS
            alone = len(events) > 1 and conn.info.transaction_status != pq.TransactionStatus.INTRANS
            async with conn.transaction() if alone else nullcontext():
                for event in events:
                    await self._record(conn, event, relaxed=relaxed)
            return outcome
        async with self.gate.database.connection() as own, own.transaction():
            for event in events:  # nothing but these rows: no side effect to wait for
                await self._record(own, event, relaxed=True)
        return outcome

    async def _record(
        self, conn: psycopg.AsyncConnection[Any], outcome: ToolOutcome, *, relaxed: bool
    ) -> None:
        event = tool_call_event(
            thread_id=self.thread_id,
            raw_args=self.raw_args,
            validated_args=self.validated,
            outcome=outcome,
        )
        await record(conn, self.run.tenant, self.thread_id, event, relaxed=relaxed)

    async def attempt(self, spec: ToolSpec[Any, Any], validated: dict[str, Any]) -> _Attempt:
        """One attempt: refused by an open breaker, or one transaction under the timeout.

        Each attempt first checks the run's thread lock (`state.db.ThreadLock`; no round
        trip): when Postgres went away it has usually taken the lock with it, and a run that
        lost its lock stops (`ThreadLockLost`) rather than wait out its tool's timeout and
        retries for a connection.
        """
        check_held_thread_lock(self.thread_id)
        self.made += 1
        fault = self.gate.faults.draw("tool", spec.name)
        breaker = self.gate.breaker(spec.name, self.run)
        admission = breaker.admit()
        trial = admission is BreakerAdmission.TRIAL
        if admission is BreakerAdmission.REFUSED:
            refused = self.circuit_open(spec, validated, breaker)
            await self.audit(refused)
            self.failed.clear()
            return _Attempt(refused, backend_failed=False)
        timeout = spec.timeout_s or self.run.tool_timeout_s
        try:
            outcome = await self.once(spec, validated, timeout, fault)
        except BaseException as exc:
            if not is_backend_failure(exc):
                if trial:  # give the half-open trial back: this attempt reached no verdict
                    breaker.release_trial()
                raise
            breaker.record_failure()
            failure = self.failure(spec, validated, exc, timeout)
            log.warning(
                "%s attempt %d of %d failed: %s",
                spec.name,
                self.made,
                self.attempts,
                failure["error"]["message"] if failure["error"] else "",
            )
            self.failed.append(failure)
            return _Attempt(failure, backend_failed=True)
        breaker.record_success()
        self.failed.clear()
        return _Attempt(outcome, backend_failed=False)

    def circuit_open(
        self, spec: ToolSpec[Any, Any], validated: dict[str, Any], breaker: CircuitBreaker
    ) -> ToolOutcome:
        """The refusal of a call whose breaker is open."""
        if breaker.state is BreakerState.HALF_OPEN:
            when = "a trial call is in flight; try again shortly"
        else:
            when = f"it gets one trial call in about {math.ceil(breaker.retry_after_s())}s"
        return refusal(
            self.step_id,
            spec.name,
            spec.tier.value,
            validated,
            CIRCUIT_OPEN,
            f"{spec.name} was not called: its circuit breaker is open after "
            f"{breaker.failures} consecutive backend failures; nothing was changed.",
            hint=f"The backend of {spec.name} looks down: {when}, and until it succeeds "
            "every call is refused at once.",
            retryable=False,
        )

    def failure(
        self,
        spec: ToolSpec[Any, Any],
        validated: dict[str, Any],
        exc: BaseException,
        timeout: float,
    ) -> ToolOutcome:
        """The outcome of an attempt that met a backend failure (it was rolled back)."""
        attempt = f"attempt {self.made} of {self.attempts}"
        tier = spec.tier.value
        if isinstance(exc, ToolFailure):
            message = f"{exc.message} ({attempt})"
            return refusal(
                self.step_id, spec.name, tier, validated, exc.code, message, exc.hint, True
            )
        if spec.tier is Tier.READ:
            effect = "nothing was changed"
        else:
            # A connection lost while committing can hide a commit; the key covers that case.
            effect = "it was rolled back, or if it did commit, a retry replays it"
        if isinstance(exc, TimeoutError):
            message = f"{spec.name} did not finish within {timeout:g}s ({attempt}); {effect}."
            return refusal(
                self.step_id, spec.name, tier, validated, "timeout", message, "Retry later.", True
            )
        message = f"{spec.name} failed in its backend ({attempt}): {_first_line(exc)}; {effect}."
        hint = "Retry later; if it keeps failing, its backend is down."
        return refusal(self.step_id, spec.name, tier, validated, BACKEND_ERROR, message, hint, True)

    async def once(
        self,
        spec: ToolSpec[Any, Any],
        validated: dict[str, Any],
        deadline_s: float,
        fault: str | None,
    ) -> ToolOutcome:
        """Run the call in one transaction; raise on a backend failure (it rolls back)."""
        tool, tier = spec.name, spec.tier
        key = (
            idempotency_key(self.thread_id, self.step_id, tool, validated)
            if tier.needs_idempotency_key
            else None
        )
        async with asyncio.timeout(deadline_s), self.gate.database.connection() as conn:
            try:
                # A read writes nothing but its audit row, one statement: it needs no
                # transaction (under READ COMMITTED its statements would not share a
                # snapshot in one anyway).
                async with nullcontext() if tier is Tier.READ else conn.transaction():
                    return await self._in_transaction(conn, spec, validated, key, fault)
            except _Refused as refused:
                # It left the call's transaction by raising, which rolled back whatever the
                # handler wrote; a refusal changes nothing, so its row needs no transaction.
                return await self.audit(refused.outcome, conn)

    async def _in_transaction(
        self,
        conn: psycopg.AsyncConnection[dict[str, Any]],
        spec: ToolSpec[Any, Any],
        validated: dict[str, Any],
        key: str | None,
        fault: str | None,
    ) -> ToolOutcome:
        """Claim, check approvals, run the handler and record it; a refusal raises `_Refused`."""
        tool, tier = spec.name, spec.tier
        if fault == "error":
            raise psycopg.OperationalError(
                f"backend error injected into {tool} by {FAULTS_ENV_VAR}"
            )
        if fault == "timeout":
            # Overrun the deadline: asyncio.timeout cancels this like a hung backend.
            await asyncio.sleep(math.inf)
        invoice: MatchInputs | None = None
        approvers: tuple[Reviewer, ...] = ()
        request = ""
        if key is not None:  # every write is keyed (`Tier.needs_idempotency_key`)
            invoice_id = _named_invoice(validated)
            # Racing callers with the same key queue here until the first commits; a new
            # call then locks the invoice it names, and holds its vendor row so that a bank
            # change cannot commit between the read below and a payment's insert
            # (migrations 0009, 0010 and 0016).
            # With the claim, in its round trip: the policy the thread recorded at its start,
            # and the request the clerk wrote (`CallContext.request`).
            cur = await conn.execute(
                "SELECT tool_call_claim(%s, %s) AS result,"
                " (SELECT policy FROM runs WHERE thread_id = %s) AS policy,"
                " (SELECT request FROM runs WHERE thread_id = %s) AS request",
                (key, invoice_id, self.thread_id, self.thread_id),
            )
            done = await cur.fetchone()
            if done is not None and done["result"] is not None:
                replay = _outcome(
                    self.step_id,
                    tool,
                    tier.value,
                    validated,
                    result=done["result"],
                    key=key,
                    replayed=True,
                )
                return await self.audit(replay, conn)
            if invoice_id is not None:  # after the lock: no write to the invoice slips in
                invoice = await load_match_inputs(conn, invoice_id)
            pinned = done["policy"] if done is not None else None
            request = (done["request"] if done is not None else None) or ""
            requirement = self.gate.requirement_given(spec, validated, self.run, invoice, pinned)
            if requirement.required:
                approvals, rejections = await self.gate.approvers(
                    conn, self.thread_id, self.step_id, tool, validated
                )
                approvers = tuple(a.reviewer for a in approvals)
                if rejections:
                    raise self.refused(
                        spec,
                        validated,
                        "rejected",
                        "A reviewer rejected this call: " + "; ".join(rejections) + ".",
                    )
                if tool in PAYEE_TOOLS and invoice is not None:
                    # Read under the invoice's lock and the vendor's (0016): no bank change
                    # commits between this check and the payment's insert. Before the
                    # count of approvers, so a second reviewer is not asked for a payment
                    # that a first one approved to another account.
                    self.check_payee(spec, validated, approvals, invoice)
                unmet = requirement.unmet(approvers, self.requester)
                if unmet:
                    raise self.refused(
                        spec,
                        validated,
                        "approval_required",
                        f"{tool} needs approval: {'; '.join(unmet)}.",
                        hint="Only the approval step can grant this; "
                        "reasons: " + "; ".join(requirement.reasons),
                    )
        ctx = CallContext(
            conn=conn,
            thread_id=self.thread_id,
            step_id=self.step_id,
            requester=self.requester,
            run=self.run,
            idempotency_key=key,
            approvers=approvers,
            invoice=invoice,
            request=request,
        )
        try:
            result = await spec.handler(ctx, spec.args_model.model_validate(validated))
        except ToolFailure as failure:
            if failure.retryable:
                raise  # a backend failure: the whole attempt rolls back
            raise self.refused(
                spec, validated, failure.code, failure.message, hint=failure.hint
            ) from failure
        payload = mask_untrusted(
            tool, spec.result_model.model_validate(result).model_dump(mode="json")
        )
        if key is not None:
            await conn.execute(
                "INSERT INTO tool_calls (idempotency_key, thread_id, step_id, tool,"
                " args, tier, result) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (
                    key,
                    self.thread_id,
                    self.step_id,
                    tool,
                    canonical_json(validated),
                    tier.value,
                    canonical_json(payload),
                ),
            )
        ran = _outcome(self.step_id, tool, tier.value, validated, result=payload, key=key)
        return await self.audit(ran, conn)  # last in the transaction: holds the chain lock

    def check_payee(
        self,
        spec: ToolSpec[Any, Any],
        validated: dict[str, Any],
        approvals: tuple[Approval, ...],
        invoice: MatchInputs,
    ) -> None:
        """Raise a refusal unless every approval covers the vendor master account as read."""
        account = invoice.vendor.remit_bank_account
        stale = approvals_not_covering(payee_digest(account), approvals)
        if not stale:
            return
        vendor_id, invoice_id = invoice.vendor.vendor_id, invoice.invoice.invoice_id
        now = mask_account(account)
        hint = (
            f"Make sure {vendor_id}'s bank change is genuine, then ask for approval again: a "
            f"new request to pay {invoice_id} shows its reviewers the current account."
        )
        changed = [a for a in stale if a.payee_digest is not None]
        if changed:
            approved = "; ".join(
                f"{a.reviewer.id} approved paying {a.payee_masked}" for a in changed
            )
            raise self.refused(
                spec,
                validated,
                PAYEE_CHANGED,
                f"The bank account of vendor {vendor_id} changed after this payment of "
                f"{invoice_id} was approved ({approved}; the vendor master account is now "
                f"{now}), so it was not paid and nothing was changed.",
                hint=hint,
            )
        who = ", ".join(a.reviewer.id for a in stale)
        raise self.refused(
            spec,
            validated,
            PAYEE_UNCONFIRMED,
            f"The approval of this payment of {invoice_id} by {who} was recorded without the "
            f"account it covers (before approvals covered the payee), so it cannot show that "
            f"vendor {vendor_id}'s account {now} was approved; it was not paid and nothing "
            "was changed.",
            hint=hint,
        )

    def refused(
        self,
        spec: ToolSpec[Any, Any],
        validated: dict[str, Any],
        code: str,
        message: str,
        *,
        hint: str = "",
    ) -> _Refused:
        """A refusal (not retryable) to raise out of the call's transaction."""
        return _Refused(
            refusal(self.step_id, spec.name, spec.tier.value, validated, code, message, hint)
        )


class _Refused(Exception):
    """A call refused inside its transaction, raised so that the transaction rolls back."""

    def __init__(self, outcome: ToolOutcome) -> None:
        super().__init__(outcome["error"]["code"] if outcome["error"] else "refused")
        self.outcome = outcome


def _named_invoice(args: dict[str, Any]) -> str | None:
    invoice_id = args.get("invoice_id")
    return invoice_id if isinstance(invoice_id, str) else None


class ToolGate:
    """Runs tool calls under the contract's policy."""

    def __init__(
        self,
        database: Database | Callable[[], Database],
        registry: ToolRegistry = DEFAULT_REGISTRY,
        *,
        breakers: BreakerBoard = BREAKERS,
        faults: FaultInjector = FAULTS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Use ``database`` (or a factory, resolved on first use) and ``registry``.

        ``breakers`` holds the tools' circuit breakers (the process-wide board by
        default), ``faults`` injects configured faults, and ``sleep`` waits between
        retries; tests pass a board with a fake clock or a recording sleep.
        """
        self._database = database
        self.registry = registry
        self.breakers = breakers
        self.faults = faults
        self.sleep = sleep

    @property
    def database(self) -> Database:
        """The database, resolving a factory on first use (no connections at import)."""
        if not isinstance(self._database, Database):
            self._database = self._database()
        return self._database

    def validate(
        self, route: str, tool: str, args: Any
    ) -> tuple[ToolSpec[Any, Any], dict[str, Any]] | ToolError:
        """Existence, scope and schema checks, without touching the database."""
        spec = self.registry.get(tool)
        allowed = [t.name for t in self.registry.for_route(route)]
        if spec is None:
            return ToolError(
                code="unknown_tool",
                message=f"There is no tool named {tool!r}.",
                hint=f"Tools for route {route}: {', '.join(allowed) or 'none'}.",
                retryable=False,
            )
        if route not in spec.scopes:
            return ToolError(
                code="out_of_scope",
                message=f"{tool} is not allowed on route {route}.",
                hint=f"Tools for route {route}: {', '.join(allowed) or 'none'}.",
                retryable=False,
            )
        if not isinstance(args, dict):
            return ToolError(
                code="invalid_arguments",
                message=f"{tool} arguments must be a JSON object, got {type(args).__name__}.",
                hint="Pass named arguments.",
                retryable=False,
            )
        try:
            validated = spec.args_model.model_validate(args)
        except ValidationError as exc:
            return ToolError(
                code="invalid_arguments",
                message=f"{tool} arguments are invalid: {describe_validation_error(exc)}.",
                hint="Fix the named fields; unknown fields are not accepted.",
                retryable=False,
            )
        return spec, validated.model_dump(mode="json")

    @staticmethod
    def requirement_given(
        spec: ToolSpec[Any, Any],
        args: dict[str, Any],
        run: Context,
        invoice: MatchInputs | None,
        pinned: Mapping[str, Any] | None = None,
    ) -> ApprovalRequirement:
        """The approval requirement for a validated call, given the invoice it names as read.

        ``pinned`` is the policy its thread recorded at its first step (`runs.policy`): the
        requirement is the stricter of that one and ``run``'s.
        """

        def under(settings: Context) -> ApprovalRequirement:
            tolerances = tolerances_from(settings)
            match = compute_three_way_match(invoice, tolerances) if invoice else None
            return approval_requirement(spec.name, spec.tier, args, settings, match)

        now = under(run)
        if not pinned or pinned == policy_of(run):
            return now
        return stricter(now, under(with_policy(run, pinned)))

    async def requirement(
        self,
        conn: psycopg.AsyncConnection[dict[str, Any]],
        spec: ToolSpec[Any, Any],
        args: dict[str, Any],
        run: Context,
        thread_id: str,
    ) -> ApprovalRequirement:
        """The approval requirement for a validated call on ``thread_id``, from database facts."""
        invoice_id = _named_invoice(args) if spec.tier is not Tier.READ else None
        invoice = await load_match_inputs(conn, invoice_id) if invoice_id else None
        cur = await conn.execute("SELECT policy FROM runs WHERE thread_id = %s", (thread_id,))
        row = await cur.fetchone()
        return self.requirement_given(spec, args, run, invoice, row["policy"] if row else None)

    async def requirement_for(
        self, route: str, tool: str, args: dict[str, Any], run: Context, thread_id: str
    ) -> ApprovalRequirement | ToolError:
        """What approval a proposed call needs (used by the approval node to ask for it)."""
        checked = self.validate(route, tool, args)
        if not isinstance(checked, tuple):
            return checked
        spec, validated = checked
        async with self.database.connection() as conn:
            return await self.requirement(conn, spec, validated, run, thread_id)

    @staticmethod
    async def approvers(
        conn: psycopg.AsyncConnection[dict[str, Any]],
        thread_id: str,
        step_id: str,
        tool: str,
        validated_args: dict[str, Any],
    ) -> tuple[tuple[Approval, ...], list[str]]:
        """Approvals of exactly these args (with the payee each covers), and any rejections."""
        cur = await conn.execute(
            "SELECT reviewer_id, reviewer_role, decision, reason, args_hash, payee_digest,"
            " payee_masked FROM approval_decisions"
            " WHERE thread_id = %s AND step_id = %s AND tool = %s ORDER BY decision_id",
            (thread_id, step_id, tool),
        )
        wanted = args_hash(tool, validated_args)
        approvals: list[Approval] = []
        rejections: list[str] = []
        for row in await cur.fetchall():
            if row["decision"] == "reject":
                rejections.append(f"{row['reviewer_id']}: {row['reason']}")
            elif row["args_hash"] == wanted:
                reviewer = Reviewer(row["reviewer_id"], row["reviewer_role"])
                approvals.append(Approval(reviewer, row["payee_digest"], row["payee_masked"]))
        return tuple(approvals), rejections

    def breaker(self, tool: str, run: Context) -> CircuitBreaker:
        """The circuit breaker of ``tool``, with the run's threshold and cooldown."""
        return self.breakers.get(
            f"tool:{tool}",
            failure_threshold=run.breaker_failure_threshold,
            cooldown_s=run.breaker_cooldown_s,
        )

    async def call(
        self,
        *,
        thread_id: str,
        step_id: str,
        route: str,
        requester: str,
        tool: str,
        args: Any,
        run: Context,
    ) -> ToolOutcome:
        """Run one call through every check; see the module docstring for the order.

        Each call is its own LangSmith run (type ``tool``) under the node that made it, with
        redacted arguments and the outcome, when tracing is on.
        """
        with child_run(
            f"tool:{tool}",
            run_type="tool",
            inputs=lambda: {"args": redact(args) if isinstance(args, dict) else str(type(args))},
            tags=["tool", tool],
            metadata={"thread_id": thread_id, "step_id": step_id, "route": route},
        ) as traced_outputs:
            outcome = await self._call(
                thread_id=thread_id,
                step_id=step_id,
                route=route,
                requester=requester,
                tool=tool,
                args=args,
                run=run,
            )
            if traced_outputs is not None:
                error = outcome["error"]
                traced_outputs.update(
                    ok=outcome["ok"],
                    tier=outcome["tier"],
                    replayed=outcome["replayed"],
                    error=error["code"] if error else None,
                    result=redact(outcome["result"]) if outcome["result"] else None,
                )
            return outcome

    async def _call(
        self,
        *,
        thread_id: str,
        step_id: str,
        route: str,
        requester: str,
        tool: str,
        args: Any,
        run: Context,
    ) -> ToolOutcome:
        raw_args = args if isinstance(args, dict) else {"_raw": args}
        checked = self.validate(route, tool, args)
        gated = _GatedCall(
            gate=self,
            run=run,
            thread_id=thread_id,
            step_id=step_id,
            requester=requester,
            raw_args=raw_args,
            validated=checked[1] if isinstance(checked, tuple) else None,
        )
        if not isinstance(checked, tuple):
            spec_tier = spec.tier.value if (spec := self.registry.get(tool)) else "unknown"
            return await gated.audit(_outcome(step_id, tool, spec_tier, raw_args, error=checked))
        spec, validated = checked
        gated.attempts = 1 + run.tool_max_retries if retries_allowed(spec.tier) else 1

        def last_attempt(state: RetryCallState) -> _Attempt:
            assert state.outcome is not None
            last: _Attempt = state.outcome.result()
            return last

        retrying = AsyncRetrying(
            stop=stop_after_attempt(gated.attempts),
            wait=backoff(run),
            retry=retry_if_result(lambda attempt: bool(attempt.backend_failed)),
            retry_error_callback=last_attempt,
            sleep=self.sleep,
        )
        last: _Attempt = await retrying(gated.attempt, spec, validated)
        if last.backend_failed:
            # Retries ran out: the failed attempts (the last one is the outcome) go on record.
            final = gated.failed.pop()
            await gated.audit(final)
            return final
        outcome = last.outcome
        if outcome["ok"] and not outcome["replayed"] and spec.tier is not Tier.READ:
            failpoints.hit(f"after_commit:{tool}")
        return outcome
