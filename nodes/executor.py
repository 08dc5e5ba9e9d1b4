"""executor: run the plan one step per super-step, every call through the gate.

Each step is its own super-step, so a checkpoint follows every side effect. Steps that
need approval are handed to the approval node; the gate re-checks the approval itself.

Read-only degradation: when a write fails because its tool is unavailable (its circuit
breaker is open, or it kept timing out or failing in its backend through the gate's
retries), the run does not try to write through it. A payment that cannot be made is
replaced by two stand-in steps, ``<step>-ro1`` flag_exception (``payment_unavailable``:
people must schedule it later) and ``<step>-ro2`` stage_invoice (so it stays ready to pay),
which go through the gate like any step; no approval is asked for the payment. Any other
unavailable write ends the phase (later steps may depend on it). Either way the run is
marked ``escalated``, with what was not done in its reason and in ``degraded`` (which
respond copies to ``result.degraded``).
Because the gate refuses an open breaker's tool before it looks at approvals, a payment
whose tool is known to be down never reaches a reviewer.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from nodes.deps import Node, NodeDeps, current_thread_id
from nodes.safety import outcome_flags, step_taint, taint_block_reason
from runtime.context import Context
from state.audit import guard_flag_event, record
from state.graph_state import AgentState, Plan, PlanStep, phase_outcomes
from tools.contract import Tier, canonical_json
from tools.gate import (
    BACKEND_ERROR,
    CIRCUIT_OPEN,
    PAYEE_REFUSALS,
    ToolError,
    ToolOutcome,
    refusal,
    unavailable,
)
from tools.registry import ToolRegistry

PAYMENT_UNAVAILABLE = "payment_unavailable"
"""Exception code of an invoice flagged because its payment could not be made."""

_STAND_IN = re.compile(r"(?P<base>.+)-ro(?P<n>[0-9]+)")
_STAND_IN_TOOLS = ("flag_exception", "stage_invoice")


def stand_in_for(step_id: str) -> str | None:
    """The step id a read-only stand-in step replaces, or None for a planned step."""
    found = _STAND_IN.fullmatch(step_id)
    return found["base"] if found else None


def why_unavailable(error: ToolError) -> str:
    """A few words on why a tool is unavailable, for sentences a clerk reads."""
    return {
        CIRCUIT_OPEN: "circuit open",
        "timeout": "timed out",
        BACKEND_ERROR: "backend error",
    }.get(error["code"], error["code"])


def payment_stand_ins(step: PlanStep, error: ToolError) -> list[PlanStep]:
    """Steps that do instead of a payment that cannot be made: flag it, keep it staged.

    Flag first: flag_exception marks the invoice flagged, and stage_invoice then puts it
    back to staged, which is what the verifier checks of a staged invoice and what the
    payment needs when it is scheduled later.
    """
    invoice_id = step["args"]["invoice_id"]
    tool, why = step["tool"], why_unavailable(error)
    return [
        PlanStep(
            step_id=f"{step['step_id']}-ro1",
            tool="flag_exception",
            args={
                "invoice_id": invoice_id,
                "codes": [PAYMENT_UNAVAILABLE],
                "detail": f"Not paid: {tool} was unavailable ({why}). Schedule the payment "
                f"of {invoice_id} when the payment system is back; it is kept staged for it.",
            },
            why=f"{tool} is unavailable ({why}): route {invoice_id} to people instead of paying.",
        ),
        PlanStep(
            step_id=f"{step['step_id']}-ro2",
            tool="stage_invoice",
            args={
                "invoice_id": invoice_id,
                "note": f"Kept staged for payment later: {tool} was unavailable ({why}).",
            },
            why=f"Keep {invoice_id} staged so its payment can be scheduled later.",
        ),
    ]


def can_stand_in(state: AgentState, step: PlanStep, registry: ToolRegistry) -> bool:
    """Whether a failed payment step can be replaced by stand-ins on this run.

    Only once per invoice (a re-planned payment of an invoice already flagged for this
    reason is not flagged again), and only where the stand-in tools are in scope.
    """
    invoice_id = step["args"].get("invoice_id")
    if step["tool"] != "schedule_payment" or not isinstance(invoice_id, str):
        return False
    for name in _STAND_IN_TOOLS:
        spec = registry.get(name)
        if spec is None or state["route"] not in spec.scopes:
            return False
    planned = [*state["plan"]["steps"], *state.get("outcomes", [])]
    return not any(
        stand_in_for(s["step_id"]) is not None and s["args"].get("invoice_id") == invoice_id
        for s in planned
    )


def read_only_reason(sentences: list[str]) -> str:
    """The run's reason when it went read-only: what was not done, and what to do."""
    said = list(dict.fromkeys(s.removeprefix("read-only: ") for s in sentences))
    text = "; ".join(said)
    return f"Went read-only: {text}. A person must finish this once the tool is available again."


def _subject(args: dict[str, Any]) -> str:
    for key in ("invoice_id", "vendor_id"):
        if isinstance(args.get(key), str):
            return str(args[key])
    return "this step"


def _original(state: AgentState, step_id: str) -> ToolOutcome | None:
    """The latest outcome of ``step_id``."""
    return next((o for o in reversed(state.get("outcomes", [])) if o["step_id"] == step_id), None)


def budget_stop(state: AgentState, tool: str, args: dict[str, Any], run: Context) -> str | None:
    """Why the run must stop before this step (budget or loop), or None to go on.

    Checked before every call, so a runaway plan stops one call early rather than late.
    """
    outcomes = state.get("outcomes", [])
    if len(outcomes) >= run.max_tool_calls:
        return (
            f"Stopped: the run used its budget of {run.max_tool_calls} tool calls "
            "(budget_exhausted). A person should look at it."
        )
    same = canonical_json(args)
    repeats = sum(1 for o in outcomes if o["tool"] == tool and canonical_json(o["args"]) == same)
    if repeats >= run.max_identical_calls:
        return (
            f"Stopped: {tool} was about to run a {repeats + 1}th time with the same "
            "arguments (loop_detected). A person should look at it."
        )
    return None


def make_executor(deps: NodeDeps) -> Node:
    """Build the executor node."""

    async def executor(
        state: AgentState, *, runtime: Runtime[Context]
    ) -> Command[Literal["executor", "approval", "verifier", "respond"]]:
        """Execute the step at the cursor, or hand it to approval, or finish the phase."""
        plan = state["plan"]
        cursor = state.get("cursor", 0)
        if cursor >= len(plan["steps"]):
            return Command(goto="verifier")
        step = plan["steps"][cursor]
        # Outcomes hold validated (normalized) args; compare like with like.
        checked = deps.gate.validate(state["route"], step["tool"], step["args"])
        normalized = checked[1] if isinstance(checked, tuple) else step["args"]
        stop = budget_stop(state, step["tool"], normalized, runtime.context)
        if stop is not None:
            # `budget_stop` set, as the budget guard's own stops set it: respond then writes
            # its summary by rules, so a stopped run spends nothing more on models. What the
            # phase did so far is verified first (the verifier then ends the run).
            return Command(
                goto="verifier" if phase_outcomes(state) else "respond",
                update={"status": "escalated", "reason": stop, "budget_stop": stop},
            )
        thread_id = current_thread_id()
        spec = deps.gate.registry.get(step["tool"])
        if spec is not None and spec.tier.needs_approval:
            # Policy blocks some values outright when only third-party text supplied them;
            # no approval can make such a call acceptable.
            findings = step_taint(state, step)
            blocked = taint_block_reason(step, findings)
            if blocked is not None:
                block_flag = {
                    "kind": "policy_block",
                    "source": step["step_id"],
                    "tool": step["tool"],
                    "reason": blocked,
                    "taint": [f.as_dict() for f in findings],
                }
                await record(
                    deps.database,
                    runtime.context.tenant,
                    thread_id,
                    guard_flag_event(thread_id, block_flag),
                )
                refused = refusal(
                    step["step_id"],
                    step["tool"],
                    spec.tier.value,
                    step["args"],
                    "blocked_by_policy",
                    blocked,
                )
                return Command(
                    goto="verifier", update={"outcomes": [refused], "cursor": cursor + 1}
                )
        outcome = await deps.gate.call(
            thread_id=thread_id,
            step_id=step["step_id"],
            route=state["route"],
            requester=state.get("user") or "anonymous",
            tool=step["tool"],
            args=step["args"],
            run=runtime.context,
        )
        error = outcome["error"]
        if error is not None and error["code"] == "approval_required":
            return Command(goto="approval")
        flags = outcome_flags(outcome)
        for flag in flags:  # audit chain: third-party text that tried to instruct the agent
            await record(
                deps.database, runtime.context.tenant, thread_id, guard_flag_event(thread_id, flag)
            )
        update: dict[str, Any] = {"outcomes": [outcome], "cursor": cursor + 1}
        if flags:  # an empty list would still write the channel: a row per step, no change
            update["flags"] = flags
        base = stand_in_for(step["step_id"])
        if base is not None:
            update.update(stand_in_done(state, step, base, outcome))
        elif (
            not outcome["ok"]
            and spec is not None
            and spec.tier is not Tier.READ
            and unavailable(error)
        ):
            read_only = go_read_only(
                state, PlanStep(**{**step, "args": normalized}), outcome, deps.gate.registry
            )
            update.update(read_only)
            if "plan" in read_only:  # the stand-ins run next in this phase
                return Command(goto="executor", update=update)
        if error is not None and error["code"] in PAYEE_REFUSALS:
            # Only people can lift it (a new approval, after checking the bank change): a
            # re-plan would ask for the same payment again, so the run ends here.
            update.update(payee_refusal_ending(state, error))
        if not outcome["ok"]:
            # A failed step ends the phase: later steps may depend on it. The verifier
            # decides between re-planning and escalation.
            return Command(goto="verifier", update=update)
        # After the phase's last step, straight to the verifier: an executor step with
        # nothing left to run would only route there, at the price of a checkpoint.
        following: Literal["executor", "verifier"] = (
            "executor" if cursor + 1 < len(plan["steps"]) else "verifier"
        )
        return Command(goto=following, update=update)

    return executor


def payee_refusal_ending(state: AgentState, error: ToolError) -> dict[str, str]:
    """The run's status and reason when the gate refused a payment for its payee.

    Escalated, saying what happened and what to do; a reason the run already had (it went
    read-only) comes first.
    """
    reason = f"{error['message']} {error['hint']}".strip()
    if state.get("status") == "escalated" and state.get("reason"):
        reason = f"{state['reason']} {reason}"
    return {"status": "escalated", "reason": reason}


def go_read_only(
    state: AgentState, step: PlanStep, outcome: ToolOutcome, registry: ToolRegistry
) -> dict[str, Any]:
    """The update after a write failed because its tool is unavailable.

    A payment gets its stand-ins inserted after it (the plan changes); no reviewer is
    asked for it. Any other write is not done, and the phase ends as for any failure.
    """
    error = outcome["error"]
    assert error is not None
    why = why_unavailable(error)
    plan = state["plan"]
    cursor = state.get("cursor", 0)
    if can_stand_in(state, step, registry):
        steps = plan["steps"]
        stand_ins = payment_stand_ins(step, error)
        return {
            "plan": Plan(
                **{**plan, "steps": [*steps[: cursor + 1], *stand_ins, *steps[cursor + 1 :]]}
            ),
            "status": "escalated",
            "reason": f"{step['args']['invoice_id']} was not paid: {step['tool']} is "
            f"unavailable ({why}); the run went read-only.",
        }
    sentence = (
        f"read-only: {step['tool']} unavailable ({why}), so it was not done for "
        f"{_subject(step['args'])}"
    )
    earlier = [d for d in state.get("degraded", []) if d.startswith("read-only:")]
    return {
        "degraded": [sentence],
        "status": "escalated",
        "reason": read_only_reason([*earlier, sentence]),
    }


def stand_in_done(
    state: AgentState, step: PlanStep, base: str, outcome: ToolOutcome
) -> dict[str, Any]:
    """What the run says after a stand-in step: once the last one succeeds, or one fails."""
    steps = state["plan"]["steps"]
    cursor = state.get("cursor", 0)
    last = not (cursor + 1 < len(steps) and stand_in_for(steps[cursor + 1]["step_id"]) == base)
    if outcome["ok"] and not last:
        return {}
    original = _original(state, base)
    tool = original["tool"] if original else "the payment tool"
    error = original["error"] if original else None
    why = why_unavailable(error) if error else "unavailable"
    invoice_id = _subject(step["args"])
    if outcome["ok"]:
        sentence = (
            f"read-only: {tool} unavailable ({why}), so {invoice_id} was staged and "
            "flagged, not paid"
        )
    else:
        code = outcome["error"]["code"] if outcome["error"] else "failed"
        sentence = (
            f"read-only: {tool} unavailable ({why}), so {invoice_id} was not paid, and "
            f"its stand-in {step['tool']} failed too ({code})"
        )
    earlier = [d for d in state.get("degraded", []) if d.startswith("read-only:")]
    return {
        "degraded": [sentence],
        "status": "escalated",
        "reason": read_only_reason([*earlier, sentence]),
    }
