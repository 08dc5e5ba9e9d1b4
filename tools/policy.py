"""When a call needs human approval, and whose. One function decides, two places ask.

The approval node asks to know what to request; the gate asks again, from the database,
before it executes, so a plan, a state edit or a model cannot talk its way past it.

An approval covers a call's exact arguments and, for a tool that pays a vendor master
account (`PAYEE_TOOLS`), the account its reviewer was shown (`approvals_not_covering`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from runtime.context import Context
from tools.contract import Approval, Reviewer, Tier
from tools.matching import MatchResult

CONTROLLER = "controller"
REVIEWER_ROLES = frozenset({"clerk", "approver", CONTROLLER})

PAYEE_TOOLS = frozenset({"schedule_payment"})
"""Tools that pay the vendor master account of the invoice they name. The account is not
an argument, so the approval of such a call also covers the account its reviewers were
shown, and the gate refuses the call once the vendor master holds another."""


@dataclass(frozen=True)
class ApprovalRequirement:
    """What must be true of the approvals before a call may run."""

    required: bool
    reasons: tuple[str, ...] = ()
    min_approvers: int = 0
    required_role: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def unmet(self, approvers: tuple[Reviewer, ...], requester: str) -> list[str]:
        """What the given approvers still lack; an empty list means satisfied."""
        if not self.required:
            return []
        problems = []
        eligible = {r.id for r in approvers if r.id != requester}
        if len(eligible) < self.min_approvers:
            problems.append(
                f"needs {self.min_approvers} distinct approver(s) other than the requester "
                f"{requester!r}, has {len(eligible)}"
            )
        if self.required_role and not any(
            r.role == self.required_role and r.id != requester for r in approvers
        ):
            problems.append(f"needs an approver with role {self.required_role!r}")
        return problems


PINNED_POLICY_NOTE = " (under the policy in force when the request was made)"


def stricter(now: ApprovalRequirement, then: ApprovalRequirement) -> ApprovalRequirement:
    """What satisfies both requirements, ``now`` and ``then``.

    ``now`` is under this leg's settings, ``then`` under those the thread recorded at its
    first step (`runtime.context.POLICY_FIELDS`). A reason only ``then`` gives says so: the
    reviewer sees why a payment under today's threshold still needs a controller.
    """
    if not then.required:
        return now
    roles = (now.required_role, then.required_role)
    role = CONTROLLER if CONTROLLER in roles else now.required_role or then.required_role
    return ApprovalRequirement(
        required=True,
        reasons=now.reasons
        + tuple(r + PINNED_POLICY_NOTE for r in then.reasons if r not in now.reasons),
        min_approvers=max(now.min_approvers, then.min_approvers),
        required_role=role,
        facts={**then.facts, **now.facts},
    )


def approval_requirement(
    tool: str,
    tier: Tier,
    args: dict[str, Any],
    run: Context,
    match: MatchResult | None = None,
) -> ApprovalRequirement:
    """Decide whether ``tool(args)`` needs approval, how many approvers and which role.

    ``match`` is the three-way match of the invoice the call touches, computed from the
    database by the caller; the requirement never depends on what a model claims.
    """
    reasons: list[str] = []
    min_approvers = 0
    role: str | None = None
    facts: dict[str, Any] = {}

    if tier.needs_approval:
        reasons.append(f"{tool} is {tier.value}: a person approves it first")
        min_approvers = 1
    if tier is Tier.DESTRUCTIVE:
        reasons.append("destructive changes need dual control")
        min_approvers, role = 2, CONTROLLER

    if match is not None:
        overrides = [e for e in match.exceptions if not e.blocking]
        if overrides and tool in {"stage_invoice", "schedule_payment"}:
            reasons.extend(f"policy override: {e.detail}" for e in overrides)
            min_approvers = max(min_approvers, 1)
            role = CONTROLLER
        facts["match_verdict"] = match.verdict

    if tool == "schedule_payment":
        # Thresholds apply to the invoice, not the payment: paying part of an invoice (and
        # the rest later) must not slip under them.
        amount = Decimal(str(args.get("amount", "0")))
        currency = str(args.get("currency", run.approval_currency))
        if match is not None:
            amount = max(amount, Decimal(match.invoice_total))
            currency = match.currency
        facts["amount"] = str(amount)
        facts["currency"] = currency
        # The thresholds are in one currency; comparing another's face value would let
        # 9,000 GBP through under a 10,000 USD limit.
        converted = run.in_approval_currency(amount, currency)
        if converted is None:
            reasons.append(
                f"no rate from {currency} to {run.approval_currency} is configured "
                "(PAYABLES_FX_RATES), so the thresholds cannot be applied: dual control"
            )
            min_approvers, role = 2, CONTROLLER
        else:
            shown = f"{amount} {currency}"
            if currency != run.approval_currency:
                facts["amount_in_approval_currency"] = str(converted.quantize(Decimal("0.01")))
                shown += f" ({facts['amount_in_approval_currency']} {run.approval_currency})"
            if converted > run.approval_limit:
                reasons.append(
                    f"amount {shown} is over the approval threshold "
                    f"{run.approval_limit} {run.approval_currency}"
                )
                role = CONTROLLER
            if converted > run.dual_threshold:
                reasons.append(
                    f"amount {shown} is over the dual-control threshold "
                    f"{run.dual_threshold} {run.approval_currency}"
                )
                min_approvers, role = 2, CONTROLLER

    return ApprovalRequirement(
        required=min_approvers > 0,
        reasons=tuple(reasons),
        min_approvers=min_approvers,
        required_role=role,
        facts=facts,
    )


def approvals_not_covering(payee: str, approvals: tuple[Approval, ...]) -> tuple[Approval, ...]:
    """The approvals that do not cover paying ``payee`` (a `tools.contract.payee_digest`).

    An approval covers the payee its reviewer was shown; one recorded without a payee (by a
    release before approvals covered it) covers none, since nobody can tell which it was.
    """
    return tuple(a for a in approvals if a.payee_digest != payee)
