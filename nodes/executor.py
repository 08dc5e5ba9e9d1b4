"""executor: run the plan one step per super-step, every call through the gate.

Each step is its own super-step, so a checkpoint follows every side effect. Steps that
need approval are handed to the approval node; the gate re-checks the approval itself.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command

from nodes.deps import Node, NodeDeps, current_thread_id
from nodes.safety import outcome_flags, step_taint, taint_block_reason
from runtime.context import Context
from state.audit import guard_flag_event, record
from state.graph_state import AgentState
from tools.contract import canonical_json
from tools.gate import refusal


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
            return Command(goto="respond", update={"status": "escalated", "reason": stop})
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
        update = {"outcomes": [outcome], "cursor": cursor + 1, "flags": flags}
        if not outcome["ok"]:
            # A failed step ends the phase: later steps may depend on it. The verifier
            # decides between re-planning and escalation.
            return Command(goto="verifier", update=update)
        return Command(goto="executor", update=update)

    return executor
