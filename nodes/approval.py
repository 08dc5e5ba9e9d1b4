"""approval: the only node that calls `interrupt()`.

It gathers the consecutive plan steps, starting at the cursor, that policy says need a
person, shows their evidence, and records each decision in `approval_decisions`, the
table the gate reads before executing. Only idempotent writes happen before the interrupt
(the run index, the audit row of the request, and the payee each payment step's request
shows), and decisions are recorded with ON CONFLICT DO NOTHING so a node that re-runs after
a crash cannot double-count a reviewer.

A payment's approval covers its payee as well as its arguments: the node records the vendor
master account its evidence shows (as a digest, never in the payload) before it interrupts,
keyed by the request, and binds each decision to that record. On resume the node runs again
and re-reads the vendor; the first record stands, so a bank change that committed while the
reviewer looked is caught by the gate, which refuses to pay another account.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt

from guards.redaction import mask_account, redact
from nodes.deps import Node, NodeDeps, current_thread_id
from nodes.safety import step_taint
from runtime.context import Context
from runtime.errors import ResumeError, shown
from state.answer_claims import release_answer_claim
from state.approvals import (
    ANSWERED_BY,
    ANSWERS_REQUEST,
    ActionRequest,
    ApprovalRequest,
    DecisionType,
    ResumeIn,
    ReviewConfig,
    StepRequirement,
    parse_resume,
)
from state.audit import (
    answer_refused_event,
    approval_requested_event,
    decision_event,
    record,
)
from state.db import Database
from state.graph_state import AgentState, Decision, Plan, PlanStep
from state.runs import record_run
from tools.contract import Tier, args_hash, payee_digest
from tools.gate import ToolGate
from tools.matching import compute_three_way_match, load_match_inputs, tolerances_from
from tools.policy import PAYEE_TOOLS


@dataclass(frozen=True)
class ShownPayee:
    """The account a payment step's evidence shows as the payee, as the approval binds it."""

    digest: str
    """`tools.contract.payee_digest` of the account: kept in the database, never shown."""
    masked: str
    """The account as the evidence shows it."""


async def build_evidence(
    database: Database, step: PlanStep, run: Context, request_text: str
) -> tuple[dict[str, Any], ShownPayee | None]:
    """What a reviewer needs to decide on ``step``, read from the database (trusted).

    With it, for a step that pays the vendor master account (`PAYEE_TOOLS`), that account
    from the same read; None for other steps and for an invoice that does not exist.
    """
    payee: ShownPayee | None = None
    evidence: dict[str, Any] = {
        "step_id": step["step_id"],
        "tool": step["tool"],
        "reasoning": step["why"],
    }
    invoice_id = step["args"].get("invoice_id")
    vendor_id = step["args"].get("vendor_id")
    async with database.connection() as conn:
        if isinstance(invoice_id, str):
            inputs = await load_match_inputs(conn, invoice_id)
            if inputs is not None:
                match = compute_three_way_match(inputs, tolerances_from(run))
                cur = await conn.execute(
                    "SELECT name FROM vendors WHERE vendor_id = %s", (inputs.vendor.vendor_id,)
                )
                vendor_row = await cur.fetchone()
                evidence.update(
                    {
                        "invoice": {
                            "invoice_id": invoice_id,
                            "vendor_id": inputs.vendor.vendor_id,
                            "vendor_name": vendor_row["name"] if vendor_row else "",
                            "invoice_number": inputs.invoice.invoice_number,
                            "po_number": inputs.invoice.po_number,
                            "currency": inputs.invoice.currency,
                            "total": str(inputs.invoice.total),
                            "bank_account_on_invoice": mask_account(inputs.invoice.bank_account),
                            "vendor_master_account": mask_account(inputs.vendor.remit_bank_account),
                        },
                        "match_table": [line.model_dump() for line in match.lines],
                        "verdict": match.verdict,
                        "matched_total": match.matched_total,
                        "exceptions": [e.model_dump() for e in match.exceptions],
                        "notices": match.notices,
                        "flags": match.approval_flags,
                    }
                )
                if step["tool"] in PAYEE_TOOLS:
                    account = inputs.vendor.remit_bank_account
                    payee = ShownPayee(payee_digest(account), mask_account(account) or "")
        elif isinstance(vendor_id, str):
            cur = await conn.execute("SELECT * FROM vendors WHERE vendor_id = %s", (vendor_id,))
            vendor = await cur.fetchone()
            if vendor is not None:
                evidence["vendor"] = {
                    "vendor_id": vendor_id,
                    "name": vendor["name"],
                    "current_account": mask_account(vendor["remit_bank_account"]),
                    "contact_email": vendor["contact_email"],
                }
            new_account = step["args"].get("new_account")
            if isinstance(new_account, str):
                evidence["proposed_account"] = mask_account(new_account)
                evidence["request"] = request_text[:2000]
    return evidence, payee


def decisions_for(tier: str) -> list[DecisionType]:
    """What a reviewer may answer to a step of ``tier``.

    A destructive change (a vendor's bank account) is approved or rejected as the clerk
    asked for it: reviewers see its account masked, and the tool takes only an account in
    the clerk's own words, so an edited one could only be refused.
    """
    if tier == Tier.DESTRUCTIVE.value:
        return ["approve", "reject"]
    return ["approve", "edit", "reject"]


async def pending_approval(
    gate: ToolGate, state: AgentState, run: Context, thread_id: str
) -> tuple[ApprovalRequest, list[PlanStep], list[ShownPayee | None]]:
    """The approval request for the steps at the cursor that still need a person.

    With the steps, the payee each one's evidence shows (None: a step that pays nobody).
    """
    plan = state["plan"]
    requester = state.get("user") or "anonymous"
    steps: list[PlanStep] = []
    requirements: list[StepRequirement] = []
    for step in plan["steps"][state.get("cursor", 0) :]:
        requirement = await gate.requirement_for(
            state["route"], step["tool"], step["args"], run, thread_id
        )
        if isinstance(requirement, dict) or not requirement.required:
            break  # an invalid step is the executor's to report; a free step needs nobody
        checked = gate.validate(state["route"], step["tool"], step["args"])
        assert isinstance(checked, tuple)  # requirement_for validated it already
        spec, validated = checked
        async with gate.database.connection() as conn:
            approvals, rejections = await gate.approvers(
                conn, thread_id, step["step_id"], step["tool"], validated
            )
        reviewers = tuple(a.reviewer for a in approvals)
        if rejections or not requirement.unmet(reviewers, requester):
            # Answered already: approved, or rejected (an answer that committed before this
            # node's checkpoint; the caller ends the run with it rather than ask again).
            break
        steps.append(step)
        requirements.append(
            StepRequirement(
                step_id=step["step_id"],
                tool=step["tool"],
                tier=spec.tier.value,
                min_approvers=requirement.min_approvers,
                required_role=requirement.required_role,
                reasons=redact(list(requirement.reasons)),
                approved_by=[{"id": r.id, "role": r.role} for r in reviewers],
            )
        )
    evidence = []
    payees: list[ShownPayee | None] = []
    for step in steps:
        found, payee = await build_evidence(gate.database, step, run, state["request"])
        payees.append(payee)
        found["taint"] = [f.as_dict() for f in step_taint(state, step)]
        found["guard_flags"] = state.get("flags", [])
        evidence.append(redact(found))
    request = ApprovalRequest(
        action_requests=[
            ActionRequest(
                name=s["tool"],
                args=redact(s["args"]),
                # `why` is a model's words: it may quote an account from third-party text.
                description=redact(f"{s['why']} Needs: " + "; ".join(r["reasons"])),
            )
            for s, r in zip(steps, requirements, strict=True)
        ],
        review_configs=[
            ReviewConfig(action_name=s["tool"], allowed_decisions=decisions_for(r["tier"]))
            for s, r in zip(steps, requirements, strict=True)
        ],
        evidence=evidence,
        steps=requirements,
        requester=requester,
        # The inbox shows it to every reviewer: the clerk's words can hold a full account.
        request=redact(state["request"]),
        error=None,
    )
    return request, steps, payees


async def record_shown_payees(
    database: Database,
    thread_id: str,
    request_key: str,
    steps: list[PlanStep],
    payees: list[ShownPayee | None],
) -> None:
    """Record the payees a request shows, before it is shown; a re-run keeps the first.

    ``request_key`` names the request (its audit event's key), which a re-run of the node,
    on resume, computes again: what it re-reads then is not what the reviewer saw.
    """
    rows = [
        (request_key, step["step_id"], thread_id, payee.digest, payee.masked)
        for step, payee in zip(steps, payees, strict=True)
        if payee is not None
    ]
    if not rows:
        return
    async with database.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO approval_payees (request_key, step_id, thread_id, payee_digest,"
            " payee_masked) VALUES (%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
            rows,
        )


def make_approval(deps: NodeDeps) -> Node:
    """Build the approval node."""

    async def approval(
        state: AgentState, *, runtime: Runtime[Context]
    ) -> Command[Literal["executor", "verifier"]]:
        """Ask a person about the pending steps and record what they decide."""
        gate = deps.gate
        thread_id = current_thread_id()
        request, steps, payees = await pending_approval(gate, state, runtime.context, thread_id)
        if not steps:
            # Nothing needs a person after all: approved in a race, say, or this node is
            # re-running after its own answer committed and before its checkpoint. The
            # answer's decisions join the run's record, and a reject in it ends the run.
            cursor = state.get("cursor", 0)
            ahead = state["plan"]["steps"][cursor:]
            recorded = await recorded_decisions(
                deps.database, thread_id, ahead, known=state.get("decisions", [])
            )
            caught_up: dict[str, Any] = {"decisions": recorded} if recorded else {}
            rejected = [d for d in recorded if d["decision"] == "reject"]
            if rejected:
                first = rejected[0]
                reason = rejection_reason(
                    first["reviewer_id"], first["reviewer_role"], first["reason"]
                )
                caught_up.update(ended_by_rejection(state, reason))
                return Command(goto="verifier", update=caught_up)  # it checks, then ends
            return Command(goto="executor", update=caught_up)
        await record_run(
            deps.database,
            thread_id=thread_id,
            request=state["request"],
            requester=request["requester"],
            tenant=runtime.context.tenant,
            route=state["route"],
            status="interrupted",
            summary=f"awaiting approval: {', '.join(s['tool'] for s in steps)}",
        )
        # Audit chain: the request for approval, once per round (a re-run finds its key).
        asked = approval_requested_event(thread_id, request=request, steps=steps)
        assert asked.key is not None  # a request's event is always keyed
        # Before the request's audit row: a request on record without its payees was then
        # shown by a release that did not bind them.
        await record_shown_payees(deps.database, thread_id, asked.key, steps, payees)
        await record(deps.database, runtime.context.tenant, thread_id, asked)

        payload = request
        verified = verified_reviewer(get_config().get("configurable", {}))
        for refused in itertools.count(1):
            # Every answer this task was given, refused ones first, comes back here whenever
            # it runs again, whoever's run that is: each is judged as the one who gave it.
            value = interrupt(payload)
            judge = verified
            try:
                value, judge = answered_by(value, verified)
                value = answering(value, asked.key)
                if judge is not None:
                    value = with_verified_reviewer(value, judge, request)
                resume = parse_resume(value, request)
                edited = validated_edits(gate, state["route"], request, resume)
                break
            except ResumeError as exc:
                # Refused, so the request waits again, open to any reviewer's answer. The
                # attempt is on record: a requester approving their own request is what a
                # segregation-of-duties review looks for.
                async with deps.database.connection() as conn, conn.transaction():
                    await release_answer_claim(
                        conn, tenant=runtime.context.tenant, request_key=asked.key
                    )
                    refusal = answer_refused_event(
                        thread_id,
                        request_key=asked.key,
                        reviewer=judge or answering_reviewer(value),
                        reason=str(exc),
                        attempt=str(refused),
                    )
                    await record(conn, runtime.context.tenant, thread_id, refusal)
                payload = ApprovalRequest(**{**request, "error": str(exc)})

        decisions: list[Decision] = []
        new_steps = list(state["plan"]["steps"])
        cursor = state.get("cursor", 0)
        # One answer commits whole: a retry after a failure part-way (a dropped connection)
        # must not find some of its decisions recorded and the rest, a reject say, lost.
        async with deps.database.connection() as conn, conn.transaction():
            # With the answer, the run index stops saying the thread waits: should the run
            # stop before its next checkpoint, `threads` says running, as `show` does.
            await conn.execute(
                "UPDATE runs SET status = 'running', summary = %s, reason = '', updated_at = now()"
                " WHERE thread_id = %s",
                (f"approval answered by {resume.reviewer.id}", thread_id),
            )
            await release_answer_claim(conn, tenant=runtime.context.tenant, request_key=asked.key)
            # The payees as this request first showed them, not as this re-run read them.
            cur = await conn.execute(
                "SELECT step_id, payee_digest, payee_masked FROM approval_payees"
                " WHERE request_key = %s",
                (asked.key,),
            )
            shown_payees = {row["step_id"]: row for row in await cur.fetchall()}
            for offset, (step, decision) in enumerate(zip(steps, resume.decisions, strict=True)):
                args = edited.get(offset)
                if args is None:
                    checked = gate.validate(state["route"], step["tool"], step["args"])
                    assert isinstance(checked, tuple)
                    args = checked[1]
                reason = decision.message or ""
                payee = shown_payees.get(step["step_id"], {})
                await conn.execute(
                    "INSERT INTO approval_decisions (thread_id, step_id, tool, args_hash,"
                    " reviewer_id, reviewer_role, decision, reason, edited_args, payee_digest,"
                    " payee_masked) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (thread_id, step_id, args_hash, reviewer_id) DO NOTHING",
                    (
                        thread_id,
                        step["step_id"],
                        step["tool"],
                        args_hash(step["tool"], args),
                        resume.reviewer.id,
                        resume.reviewer.role,
                        decision.type,
                        reason,
                        json.dumps(args) if decision.type == "edit" else None,
                        payee.get("payee_digest"),
                        payee.get("payee_masked"),
                    ),
                )
                decisions.append(
                    Decision(
                        step_id=step["step_id"],
                        tool=step["tool"],
                        decision=decision.type,
                        reviewer_id=resume.reviewer.id,
                        reviewer_role=resume.reviewer.role,
                        reason=reason,
                        args=args,
                    )
                )
                # Audit chain: the decision, with the edited keys (old vs new) for an edit.
                shown = gate.validate(state["route"], step["tool"], step["args"])
                original = shown[1] if isinstance(shown, tuple) else step["args"]
                decided = decision_event(thread_id, decisions[-1], original_args=original)
                await record(conn, runtime.context.tenant, thread_id, decided)
                if decision.type == "edit":
                    new_steps[cursor + offset] = PlanStep(**{**step, "args": args})

        update: dict[str, Any] = {"decisions": decisions}
        if new_steps != state["plan"]["steps"]:
            update["plan"] = Plan(**{**state["plan"], "steps": new_steps})
        rejected = [d for d in decisions if d["decision"] == "reject"]
        if rejected:
            first = rejected[0]
            reason = rejection_reason(first["reviewer_id"], first["reviewer_role"], first["reason"])
            update.update(ended_by_rejection(state, reason))
            # The verifier checks what this phase did before the reject (a payment approved
            # earlier, say), then ends the run: a reject is never re-planned.
            return Command(goto="verifier", update=update)
        return Command(goto="executor", update=update)

    return approval


def ended_by_rejection(state: AgentState, reason: str) -> dict[str, str]:
    """The run's status and reason when a reviewer's reject ends it.

    A reject ends the run completed, unless it had already gone read-only (a tool outage
    left work undone): then a person must still finish that, so it stays escalated and
    keeps saying why, with the reject after it.
    """
    if state.get("status") == "escalated" and state.get("reason"):
        return {"status": "escalated", "reason": f"{state['reason']} {reason}"}
    return {"status": "completed", "reason": reason}


def rejection_reason(reviewer_id: str, reviewer_role: str, reason: str) -> str:
    """The run's reason when a reviewer rejects a step."""
    return f"Rejected by {reviewer_id} ({reviewer_role}): {reason}"


async def decision_rows(
    database: Database, thread_id: str, step_ids: list[str]
) -> list[dict[str, Any]]:
    """The decisions recorded for ``step_ids`` of the thread, oldest first."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT step_id, tool, reviewer_id, reviewer_role, decision, reason, edited_args"
            " FROM approval_decisions WHERE thread_id = %s AND step_id = ANY(%s)"
            " ORDER BY decision_id",
            (thread_id, step_ids),
        )
        return await cur.fetchall()


async def recorded_decisions(
    database: Database, thread_id: str, steps: list[PlanStep], *, known: list[Decision]
) -> list[Decision]:
    """Decisions recorded for ``steps`` that the run's state does not hold yet, in order."""
    seen = {(d["step_id"], d["reviewer_id"], d["decision"]) for d in known}
    args = {s["step_id"]: s["args"] for s in steps}
    rows = await decision_rows(database, thread_id, list(args))
    return [
        Decision(
            step_id=row["step_id"],
            tool=row["tool"],
            decision=row["decision"],
            reviewer_id=row["reviewer_id"],
            reviewer_role=row["reviewer_role"],
            reason=row["reason"],
            args=row["edited_args"] or args[row["step_id"]],
        )
        for row in rows
        if (row["step_id"], row["reviewer_id"], row["decision"]) not in seen
    ]


# A server token's role as the approval records it (server/auth.py APPROVAL_ROLES): the
# legacy "approver" is the "reviewer"; an admin operates the service and signs as an
# approver, never as the controller dual control needs.
TOKEN_ROLES = {"reviewer": "approver", "controller": "controller", "admin": "approver"}


def answering(value: Any, request_key: str) -> Any:
    """The resume ``value`` without its binding; `ResumeError` if bound to another request.

    A server run waits in a queue: a resume accepted for one request can arrive after
    another run on the thread changed it (an edit, a first signature of two). Applied to the
    request as it is now, "approve" would sign arguments its reviewer never saw.
    """
    if not isinstance(value, Mapping) or ANSWERS_REQUEST not in value:
        return value
    if value[ANSWERS_REQUEST] != request_key:
        raise ResumeError(
            "This answer was sent for an earlier version of this approval request, which "
            "changed before the answer arrived (it was edited, or another reviewer signed "
            "it); it was not recorded. Read the request as it is now and answer again."
        )
    return {key: item for key, item in value.items() if key != ANSWERS_REQUEST}


def answered_by(value: Any, verified: dict[str, str] | None) -> tuple[Any, dict[str, str] | None]:
    """The resume ``value`` without `ANSWERED_BY`, and the reviewer to judge it as.

    That is the reviewer the server verified when it accepted the answer, or None for a
    CLI answer (its body names its reviewer). An answer from before the field existed is
    judged as ``verified``, the caller of the run at hand, as it was then.
    """
    if not isinstance(value, Mapping) or ANSWERED_BY not in value:
        return value, verified
    given = value[ANSWERED_BY]
    rest = {key: item for key, item in value.items() if key != ANSWERED_BY}
    if given is None:
        return rest, None
    if (
        not isinstance(given, Mapping)
        or not isinstance(given.get("id"), str)
        or not isinstance(given.get("role"), str)
    ):
        raise ResumeError(f"Malformed resume: {ANSWERED_BY} names no reviewer ({shown(given)}).")
    return rest, {"id": given["id"], "role": given["role"]}


def answering_reviewer(value: Any) -> Mapping[str, Any]:
    """Whom an answer names as its reviewer (the CLI's ``--reviewer``), or ``{}``."""
    answers = value.values() if isinstance(value, Mapping) else ()
    for answer in (value, *answers):
        reviewer = answer.get("reviewer") if isinstance(answer, Mapping) else None
        if isinstance(reviewer, Mapping):
            return reviewer
    return {}


def verified_reviewer(configurable: Mapping[str, Any]) -> dict[str, str] | None:
    """The reviewer a LangGraph server verified for this run, or None outside a server.

    The server puts the authenticated user (server/auth.py) into the run's configurable as
    ``langgraph_auth_user``; the CLI has none and its ``--reviewer`` stays in the resume.
    Raises `ResumeError` for a server user whose role cannot decide approvals.
    """
    user = configurable.get("langgraph_auth_user")
    if user is None:
        return None
    fields = user.dict() if hasattr(user, "dict") and callable(user.dict) else user
    if not isinstance(fields, Mapping):
        raise ResumeError(f"The server's user object is unreadable ({type(user).__name__}).")
    role = TOKEN_ROLES.get(str(fields.get("role")))
    identity = fields.get("identity")
    if role is None or not isinstance(identity, str):
        return {"id": str(identity), "role": ""}  # refused when a decision arrives
    return {"id": identity, "role": role}


def with_verified_reviewer(value: Any, verified: dict[str, str], request: ApprovalRequest) -> Any:
    """The resume ``value`` with its reviewer replaced by the server-verified one.

    Whoever the body names, the decision is recorded under the token's identity: the body
    is the caller's claim, the token is proof. Above the dual-control threshold the last
    missing signature must come from the required role (a controller).
    """
    if not verified["role"]:
        raise ResumeError(
            f"{shown(verified['id'])} has no reviewer role on this server; a reviewer or "
            "controller must decide."
        )
    if not isinstance(value, Mapping):
        return value  # parse_resume says what shape is expected
    for step in request["steps"]:
        needed = step["required_role"]
        if not needed or verified["role"] == needed:
            continue
        signed = [a for a in step["approved_by"] if a["id"] != request["requester"]]
        if any(a["role"] == needed for a in signed):
            continue
        if len({a["id"] for a in signed}) + 1 >= step["min_approvers"]:
            raise ResumeError(
                f"{step['tool']} needs a {needed}'s signature and only one more approver is "
                f"required; {shown(verified['id'])} ({verified['role']}) cannot give it."
            )
    return {**value, "reviewer": verified}


# An edit may change how much and when, never what the approval is about: evidence was
# shown for these, and a different invoice or vendor needs its own request.
IDENTITY_ARGS = ("invoice_id", "vendor_id")


def validated_edits(
    gate: ToolGate, route: str, request: ApprovalRequest, resume: ResumeIn
) -> dict[int, dict[str, Any]]:
    """Edited args by action index, validated by the gate's contract checks.

    Raises `ResumeError` when an edit fails its tool's schema or changes an identity field.
    """
    edited: dict[int, dict[str, Any]] = {}
    for index, (action, decision) in enumerate(
        zip(request["action_requests"], resume.decisions, strict=True)
    ):
        if decision.type != "edit" or decision.edited_action is None:
            continue
        checked = gate.validate(route, action["name"], decision.edited_action.args)
        if not isinstance(checked, tuple):
            raise ResumeError(
                f"Edited {action['name']} arguments rejected: {checked['message']} "
                f"{checked['hint']}"
            )
        for key in IDENTITY_ARGS:
            if key in action["args"] and checked[1].get(key) != action["args"][key]:
                raise ResumeError(
                    f"An edit may not change {key} (from {action['args'][key]!r} to "
                    f"{checked[1].get(key)!r}); reject this request and start a new one."
                )
        _within_the_invoice(action["name"], checked[1], request["evidence"][index])
        edited[index] = checked[1]
    return edited


def _within_the_invoice(tool: str, args: Mapping[str, Any], evidence: Mapping[str, Any]) -> None:
    """Refuse an edited payment the gate would refuse: dated, priced or totalled wrong.

    A date before today, another currency than the invoice's, or more than its total. The
    invoice the reviewer was shown (``evidence``) says the last two; the payment tool checks
    them again against the database when it runs. Refused here, the reviewer hears it at
    once, and no decision is recorded nor approval raised for a payment that cannot be made.
    """
    pay_on = args.get("pay_on")
    if isinstance(pay_on, str) and _before_today(pay_on):
        raise ResumeError(
            f"An edited {tool} cannot be paid on {pay_on}, before today ({date.today()}); "
            "give a date from today on, or leave pay_on as it was."
        )
    invoice = evidence.get("invoice")
    if not isinstance(invoice, Mapping) or "amount" not in args or "currency" not in args:
        return
    if invoice.get("currency") and args["currency"] != invoice["currency"]:
        raise ResumeError(
            f"An edited {tool} must be in the invoice's currency {invoice.get('currency')}, "
            f"not {args['currency']}; edit the amount only, or reject the payment."
        )
    total = invoice.get("total")
    if total is not None and Decimal(str(args["amount"])) > Decimal(str(total)):
        raise ResumeError(
            f"An edited {tool} of {args['amount']} {args['currency']} exceeds the total of "
            f"{invoice.get('invoice_id', 'the invoice')}, {total}; pay at most the total."
        )


def _before_today(day: str) -> bool:
    """Whether ``day`` (ISO) is before today; a malformed one is left to the tool's schema."""
    try:
        return date.fromisoformat(day) < date.today()
    except ValueError:
        return False
