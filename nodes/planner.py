"""planner: produce the next phase's typed plan; a model's plan is untrusted until checked."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from langgraph.types import Command
from pydantic import BaseModel, Field

from guards.input_checks import split_pasted
from nodes.deps import Node, NodeDeps, current_thread_id
from nodes.safety import planner_view, wrapped_attachments
from runtime.context import Context
from runtime.models import ask_model, repair_messages
from runtime.prompts import PLANNER_REPAIR, PLANNER_SYSTEM
from runtime.rules_model import rules_plan
from runtime.tracing import annotate_run
from state.audit import plan_event, record
from state.graph_state import AgentState, Entities, Plan, PlanStep
from tools.gate import ToolGate

log = logging.getLogger(__name__)

MAX_STEPS_PER_PHASE = 12


class ProposedStep(BaseModel):
    """One step as a model proposes it."""

    tool: str = Field(description="Tool name from the list.")
    args: dict[str, Any] = Field(description="Arguments matching the tool's JSON Schema.")
    why: str = Field(description="One sentence: why this step.")


class ProposedPlan(BaseModel):
    """A model's plan for the next phase."""

    steps: list[ProposedStep] = Field(description="Ordered steps.")
    final: bool = Field(description="True if these steps complete the request.")


def validate_plan(gate: ToolGate, route: str, proposal: ProposedPlan) -> list[str]:
    """Every reason the proposal cannot run on ``route``; empty means valid."""
    errors: list[str] = []
    if len(proposal.steps) > MAX_STEPS_PER_PHASE:
        errors.append(f"{len(proposal.steps)} steps; at most {MAX_STEPS_PER_PHASE} per phase")
    if not proposal.steps and not proposal.final:
        errors.append("an empty plan must be final")
    for index, step in enumerate(proposal.steps, start=1):
        checked = gate.validate(route, step.tool, step.args)
        if not isinstance(checked, tuple):
            errors.append(f"step {index} ({step.tool}): {checked['message']}")
    return errors


RESULTS_BUDGET = 20000
"""Characters of earlier results the planner is shown (the newest whole result always)."""


def _results_digest(state: AgentState) -> str:
    """Earlier results with every piece of third-party text wrapped as untrusted.

    Past `RESULTS_BUDGET` the oldest results are left out whole, and the digest says how
    many: cutting the JSON at a length would hide the newest results, which the next phase
    builds on, and could end inside an untrusted wrapper.
    """
    view = planner_view(state)
    shown: list[str] = []
    size = 0
    for entry in reversed(view):
        text = json.dumps(entry, default=str)
        if shown and size + len(text) > RESULTS_BUDGET:
            break
        shown.append(text)
        size += len(text) + 2
    digest = "[" + ", ".join(reversed(shown)) + "]"
    omitted = len(view) - len(shown)
    if omitted:
        digest = f"({omitted} earlier result(s) left out for length; the newest follow)\n{digest}"
    return digest


def make_planner(deps: NodeDeps) -> Node:
    """Build the planner node."""

    async def planner(
        state: AgentState, *, runtime: Runtime[Context]
    ) -> Command[Literal["executor"]]:
        """Plan the next phase with the model if configured, else (or on failure) by rules."""
        ctx = runtime.context
        route = state["route"]
        entities: Entities = state["entities"]
        outcomes = state.get("outcomes", [])
        phase = state.get("plan", {"phase": 0})["phase"] + 1
        notes: list[str] = []
        degraded: list[str] = []
        steps: list[PlanStep] | None = None
        final = True
        source: Literal["rules", "model"] = "rules"
        path = "rules"

        if deps.models.chat("planner", ctx) is not None:
            tools = [t.as_openai_tool()["function"] for t in deps.gate.registry.for_route(route)]
            # Only the clerk's own words go in <request>: text pasted between fences is a
            # third party's and reaches the model wrapped as untrusted, with the attachments.
            own_words, _ = split_pasted(state["request"])
            messages: list[Any] = [
                SystemMessage(PLANNER_SYSTEM.format(route=route, tools=json.dumps(tools))),
                HumanMessage(
                    f"Request:\n<request>\n{own_words}\n</request>\n"
                    f"Entities: {json.dumps(entities)}\nPhase: {phase}\n"
                    f"Results so far:\n{_results_digest(state)}\n"
                    + "Attachments:\n"
                    + "\n".join(wrapped_attachments(state))
                ),
            ]
            attempts = ctx.max_plan_repairs + 1
            for attempt in range(1, attempts + 1):
                answer = await ask_model(deps.models, "planner", ctx, ProposedPlan, messages)
                if answer.degraded:
                    degraded.append(answer.degraded)
                if answer.provider_failed:
                    notes.append(f"{answer.note}; rules plan used")
                    path = answer.path
                    break
                proposal = answer.parsed if isinstance(answer.parsed, ProposedPlan) else None
                errors = (
                    validate_plan(deps.gate, route, proposal)
                    if proposal is not None
                    else [answer.note or "no plan returned"]
                )
                if proposal is not None and not errors:
                    steps = [
                        PlanStep(step_id=f"p{phase}s{i}", tool=s.tool, args=s.args, why=s.why)
                        for i, s in enumerate(proposal.steps, start=1)
                    ]
                    final, source = proposal.final, "model"
                    path = answer.path + (f" (repaired {attempt - 1}x)" if attempt > 1 else "")
                    break
                notes.append(f"planner plan attempt {attempt} invalid: " + "; ".join(errors))
                repair = PLANNER_REPAIR.format(errors="; ".join(errors))
                messages.extend(repair_messages(answer.raw, repair))
            else:
                path = f"rules (fallback: model plan invalid after {attempts} attempts)"

        if steps is None:
            steps, final = rules_plan(route, entities, outcomes, phase, state["request"])
        plan = Plan(phase=phase, steps=steps, final=final, source=source)
        # Audit chain: the plan, with the model path and prompt version that produced it.
        thread_id = current_thread_id()
        planned = plan_event(
            thread_id,
            plan=plan,
            model_path=path,
            model=ctx.planner_model,
            prompt_version=ctx.prompt_version,
            notes=notes,
        )
        await record(deps.database, ctx.tenant, thread_id, planned)
        annotate_run(route=route, model_path=path, phase=phase, plan_source=source)
        update: dict[str, Any] = {"plan": plan}
        # A write that changes nothing (an empty list, the cursor already at 0, the path the
        # last phase had) still costs a checkpoint row and a new channel version.
        if state.get("cursor", 0):
            update["cursor"] = 0
        if state.get("model_path", {}).get("planner") != path:
            update["model_path"] = {"planner": path}
        if notes:
            update["notes"] = notes
        if degraded:
            update["degraded"] = degraded
        return Command(goto="executor", update=update)

    return planner
