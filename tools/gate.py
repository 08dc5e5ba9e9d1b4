"""The one gate every tool call passes: nothing reaches a handler any other way.

In order: the tool exists, the route's scope allows it, the arguments validate against
the contract, the tier policy holds (approvals for irreversible and destructive calls are
read from the database and checked against `tools.policy`), the idempotency key is
claimed, and the handler runs under a timeout inside one transaction with its ledger row.
Expected failures come back as structured, actionable errors; bugs propagate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypedDict

import psycopg
from pydantic import ValidationError

from runtime import failpoints
from runtime.context import Context
from state.audit import record, tool_call_event
from state.db import Database
from tools.contract import (
    CallContext,
    Reviewer,
    Tier,
    ToolFailure,
    ToolSpec,
    args_hash,
    canonical_json,
    idempotency_key,
)
from tools.matching import MatchResult, compute_three_way_match, load_match_inputs, tolerances_from
from tools.policy import ApprovalRequirement, approval_requirement
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


class ToolGate:
    """Runs tool calls under the contract's policy."""

    def __init__(
        self,
        database: Database | Callable[[], Database],
        registry: ToolRegistry = DEFAULT_REGISTRY,
    ) -> None:
        """Use ``database`` (or a factory, resolved on first use) and ``registry``."""
        self._database = database
        self.registry = registry

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

    async def requirement(
        self,
        conn: psycopg.AsyncConnection[dict[str, Any]],
        spec: ToolSpec[Any, Any],
        args: dict[str, Any],
        run: Context,
    ) -> ApprovalRequirement:
        """The approval requirement for a validated call, from database facts."""
        match: MatchResult | None = None
        invoice_id = args.get("invoice_id")
        if isinstance(invoice_id, str) and spec.tier is not Tier.READ:
            inputs = await load_match_inputs(conn, invoice_id)
            if inputs is not None:
                match = compute_three_way_match(inputs, tolerances_from(run))
        return approval_requirement(spec.name, spec.tier, args, run, match)

    async def requirement_for(
        self, route: str, tool: str, args: dict[str, Any], run: Context
    ) -> ApprovalRequirement | ToolError:
        """What approval a proposed call needs (used by the approval node to ask for it)."""
        checked = self.validate(route, tool, args)
        if not isinstance(checked, tuple):
            return checked
        spec, validated = checked
        async with self.database.connection() as conn:
            return await self.requirement(conn, spec, validated, run)

    @staticmethod
    async def approvers(
        conn: psycopg.AsyncConnection[dict[str, Any]],
        thread_id: str,
        step_id: str,
        tool: str,
        validated_args: dict[str, Any],
    ) -> tuple[tuple[Reviewer, ...], list[str]]:
        """Reviewers who approved exactly these args, and any rejection reasons."""
        cur = await conn.execute(
            "SELECT reviewer_id, reviewer_role, decision, reason, args_hash"
            " FROM approval_decisions WHERE thread_id = %s AND step_id = %s AND tool = %s"
            " ORDER BY decision_id",
            (thread_id, step_id, tool),
        )
        wanted = args_hash(tool, validated_args)
        approvers: list[Reviewer] = []
        rejections: list[str] = []
        for row in await cur.fetchall():
            if row["decision"] == "reject":
                rejections.append(f"{row['reviewer_id']}: {row['reason']}")
            elif row["args_hash"] == wanted:
                approvers.append(Reviewer(row["reviewer_id"], row["reviewer_role"]))
        return tuple(approvers), rejections

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
        """Run one call through every check; see the module docstring for the order."""
        raw_args = args if isinstance(args, dict) else {"_raw": args}
        checked = self.validate(route, tool, args)

        async def audit(
            outcome: ToolOutcome, conn: psycopg.AsyncConnection[Any] | None = None
        ) -> ToolOutcome:
            # Audit chain: a tool_call row for every outcome, written in the call's own
            # transaction when there is one (so a side effect never commits without it).
            event = tool_call_event(
                thread_id=thread_id,
                raw_args=raw_args,
                validated_args=checked[1] if isinstance(checked, tuple) else None,
                outcome=outcome,
            )
            await record(conn if conn is not None else self.database, run.tenant, thread_id, event)
            return outcome

        if not isinstance(checked, tuple):
            spec_tier = spec.tier.value if (spec := self.registry.get(tool)) else "unknown"
            refused = _outcome(step_id, tool, spec_tier, raw_args, error=checked)
            return await audit(refused)
        spec, validated = checked
        tier = spec.tier
        key = (
            idempotency_key(thread_id, step_id, tool, validated)
            if tier.needs_idempotency_key
            else None
        )
        timeout = spec.timeout_s or run.tool_timeout_s
        try:
            async with asyncio.timeout(timeout), self.database.connection() as conn:
                async with conn.transaction():
                    if key is not None:
                        # Racing callers with the same key queue here until the first commits.
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,)
                        )
                        cur = await conn.execute(
                            "SELECT result FROM tool_calls WHERE idempotency_key = %s", (key,)
                        )
                        done = await cur.fetchone()
                        if done is not None:
                            replay = _outcome(
                                step_id,
                                tool,
                                tier.value,
                                validated,
                                result=done["result"],
                                key=key,
                                replayed=True,
                            )
                            return await audit(replay, conn)
                    approvers: tuple[Reviewer, ...] = ()
                    if tier is not Tier.READ:
                        requirement = await self.requirement(conn, spec, validated, run)
                        if requirement.required:
                            approvers, rejections = await self.approvers(
                                conn, thread_id, step_id, tool, validated
                            )
                            if rejections:
                                refused = refusal(
                                    step_id,
                                    tool,
                                    tier.value,
                                    validated,
                                    "rejected",
                                    "A reviewer rejected this call: " + "; ".join(rejections) + ".",
                                )
                                return await audit(refused, conn)
                            unmet = requirement.unmet(approvers, requester)
                            if unmet:
                                refused = refusal(
                                    step_id,
                                    tool,
                                    tier.value,
                                    validated,
                                    "approval_required",
                                    f"{tool} needs approval: {'; '.join(unmet)}.",
                                    hint="Only the approval step can grant this; "
                                    "reasons: " + "; ".join(requirement.reasons),
                                )
                                return await audit(refused, conn)
                    ctx = CallContext(
                        conn=conn,
                        thread_id=thread_id,
                        step_id=step_id,
                        requester=requester,
                        run=run,
                        idempotency_key=key,
                        approvers=approvers,
                    )
                    try:
                        async with conn.transaction():
                            result = await spec.handler(
                                ctx, spec.args_model.model_validate(validated)
                            )
                    except ToolFailure as failure:
                        refused = refusal(
                            step_id,
                            tool,
                            tier.value,
                            validated,
                            failure.code,
                            failure.message,
                            failure.hint,
                            failure.retryable,
                        )
                        return await audit(refused, conn)
                    payload = spec.result_model.model_validate(result).model_dump(mode="json")
                    if key is not None:
                        await conn.execute(
                            "INSERT INTO tool_calls (idempotency_key, thread_id, step_id, tool,"
                            " args, tier, result) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                            (
                                key,
                                thread_id,
                                step_id,
                                tool,
                                canonical_json(validated),
                                tier.value,
                                canonical_json(payload),
                            ),
                        )
                    ran = _outcome(step_id, tool, tier.value, validated, result=payload, key=key)
                    await audit(ran, conn)  # last in the transaction: holds the chain lock
        except TimeoutError:
            timed_out = refusal(
                step_id,
                tool,
                tier.value,
                validated,
                "timeout",
                f"{tool} did not finish within {timeout:g}s; nothing was changed.",
                hint="Retry later.",
                retryable=True,
            )
            return await audit(timed_out)
        if tier is not Tier.READ:
            failpoints.hit(f"after_commit:{tool}")
        return ran
