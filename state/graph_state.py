"""Typed graph state: what a caller sends, what the graph keeps, what a caller gets back.

State holds ids and normalized tool results, never whole conversations, so a checkpoint
grows with the number of steps and not with their square. Values are plain JSON so that
checkpoints deserialize under LangGraph's strict msgpack mode and over the server API.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Annotated, Any, Literal, NotRequired, Self, TypedDict

from langgraph.channels import BinaryOperatorAggregate, DeltaChannel
from langgraph.types import StateSnapshot

from runtime.errors import BadInput
from tools.gate import ToolOutcome


def extend_outcomes(
    left: list[ToolOutcome], writes: Sequence[list[ToolOutcome]]
) -> list[ToolOutcome]:
    """Reducer of `AgentState.outcomes`: append each step's outcomes, in order."""
    return [*left, *(outcome for write in writes for outcome in write)]


def pending_steps(snapshot: StateSnapshot) -> tuple[str, ...]:
    """The steps a thread's latest checkpoint has not moved past; empty once it finished.

    `StateSnapshot.next` leaves out a step that returned but whose own checkpoint was not
    written (the process died in between, which checkpoints written behind the next step
    make likelier): its writes are saved with the earlier checkpoint, and running the
    thread again applies them and goes on. Such a step counts here: the thread has not
    finished, and `payables continue` finishes it.
    """
    return tuple(task.name for task in snapshot.tasks)


def request_already_held(thread_id: str | None, route: str) -> BadInput:
    """The refusal of new input on a thread that holds a routed request.

    A thread is one request's: run there, new input would mix the two requests' plans,
    approvals and run index row, skip the cost cap's admission and, on a thread paused for
    approval, replace the pending approval with a request that cannot run.
    """
    return BadInput(
        f"Thread {thread_id} already holds a request ({route}); a thread is one request's. "
        "Start the new request on a new thread."
    )


def appended(**channels: list[Any]) -> dict[str, list[Any]]:
    """The appended channels (``operator.add`` lists) of an update that add something.

    An empty list changes no state, but LangGraph would still write and version it.
    """
    return {name: items for name, items in channels.items() if items}


def merge_dicts(left: dict[str, str], right: dict[str, str]) -> dict[str, str]:
    """Reducer: later keys win."""
    return {**left, **right}


class Usage(TypedDict, total=False):
    """What a run has consumed so far; every node adds its share (see `add_usage`)."""

    steps: int
    """Graph steps (node executions)."""
    model_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    """Estimated model cost in USD."""
    wall_clock_s: float
    """Seconds spent inside nodes (not waiting for reviewers)."""
    warnings: list[str]
    """Soft budget warnings, once each, in the order they were reached."""


def add_usage(left: Usage, right: Usage) -> Usage:
    """Reducer: counters add up; warnings are kept once each, in order."""
    merged = Usage(
        steps=left.get("steps", 0) + right.get("steps", 0),
        model_calls=left.get("model_calls", 0) + right.get("model_calls", 0),
        input_tokens=left.get("input_tokens", 0) + right.get("input_tokens", 0),
        output_tokens=left.get("output_tokens", 0) + right.get("output_tokens", 0),
    )
    merged["cost_usd"] = left.get("cost_usd", 0.0) + right.get("cost_usd", 0.0)
    merged["wall_clock_s"] = left.get("wall_clock_s", 0.0) + right.get("wall_clock_s", 0.0)
    warnings = list(left.get("warnings", []))
    warnings += [w for w in right.get("warnings", []) if w not in warnings]
    merged["warnings"] = warnings
    return merged


class JsonTextAggregate(BinaryOperatorAggregate[Any]):
    """A reducer channel whose checkpoint is its value as JSON text.

    The Postgres saver keeps a text value inline in the checkpoint's row, and every other
    value as a row of ``checkpoint_blobs`` per version (serialized in a worker thread). For
    a small dict that changes at every step (`AgentState.usage`), that row and that thread
    hand-off cost more than the value: about a millisecond per run. Nodes, reducers, the
    server API and Studio see the value; only the checkpoint holds text, so the value must
    be plain JSON (as all of `AgentState` is). Reading also takes the dict that threads
    checkpointed before this channel hold; code from before it would read text where it
    expects a dict, so it must not serve the same threads (see the README's Deployment
    notes).
    """

    def checkpoint(self) -> Any:
        """The value as compact JSON text (the empty marker while the channel is empty)."""
        if not self.is_available():
            return super().checkpoint()
        return json.dumps(self.get(), separators=(",", ":"))

    def from_checkpoint(self, checkpoint: Any) -> Self:
        """The channel holding ``checkpoint``: JSON text, or a value checkpointed before."""
        if isinstance(checkpoint, str):
            checkpoint = json.loads(checkpoint)
        return super().from_checkpoint(checkpoint)


class PlanStep(TypedDict):
    """One intended tool call."""

    step_id: str
    """Unique within the thread (phase and position, e.g. ``p2s1``); part of the idempotency key."""
    tool: str
    """Tool name from the registry."""
    args: dict[str, Any]
    """Arguments, validated by the gate before the call."""
    why: str
    """The planner's reason, shown to reviewers as evidence."""


class Plan(TypedDict):
    """The steps of one planning phase."""

    phase: int
    """1 for the first plan, +1 for every re-plan."""
    steps: list[PlanStep]
    """Steps, executed in order."""
    final: bool
    """True when these steps complete the request; otherwise the planner runs again."""
    source: Literal["rules", "model"]
    """Which planner produced the steps."""


class Decision(TypedDict):
    """One reviewer's decision on one step."""

    step_id: str
    tool: str
    decision: Literal["approve", "edit", "reject"]
    reviewer_id: str
    reviewer_role: str
    reason: str
    args: dict[str, Any]
    """The args decided on (the edited args for an edit)."""


class Entities(TypedDict):
    """Ids and values the router found in the request."""

    invoice_ids: list[str]
    po_numbers: list[str]
    vendor_ids: list[str]
    bank_accounts: list[str]
    wants_payment: bool


class Attachment(TypedDict):
    """A document the clerk forwards with a request (a vendor email, a letter): untrusted."""

    name: str
    """What it is, e.g. ``vendor-email.txt``."""
    text: str
    """Its text, written by a third party."""


class InputState(TypedDict):
    """What a caller sends to start a run."""

    request: str
    """The clerk's request in plain words (the clerk's own instructions)."""
    user: NotRequired[str]
    """Who asked; never allowed to approve their own request."""
    attachments: NotRequired[list[Attachment]]
    """Third-party documents forwarded with the request; data, never instructions (absent:
    none)."""


class OutputState(TypedDict, total=False):
    """What a caller gets back."""

    route: str
    """The route the router chose."""
    status: str
    """completed | interrupted | refused | escalated | failed (interrupted is derived)."""
    reason: str
    """Why the run ended as it did, in words a clerk understands."""
    result: dict[str, Any]
    """Structured outcome (per invoice, per answer)."""
    summary: str
    """Short human summary."""
    model_path: dict[str, str]
    """Which model served each role (``rules`` or ``model:<name>``, with fallbacks noted)."""
    flags: list[dict[str, Any]]
    """Guard flags raised during the run (suspected injection, PII), with evidence."""
    usage: Usage
    """Steps, model calls, tokens, estimated cost and time the run used, with warnings."""


class AgentState(InputState, total=False):
    """Everything the graph keeps between nodes (a superset of `OutputState`)."""

    route: str
    """The route the router chose."""
    status: str
    """Final status, set by respond."""
    reason: str
    """Why the run ended as it did."""
    result: dict[str, Any]
    """Structured outcome, set by respond."""
    summary: str
    """Short human summary, set by respond."""

    route_confidence: float
    """Router confidence in [0, 1]."""
    entities: Entities
    """What the router extracted."""
    plan: Plan
    """The current phase's plan."""
    cursor: int
    """Index of the next step of `plan` to execute (absent: 0, the first)."""
    outcomes: Annotated[list[ToolOutcome], DeltaChannel(extend_outcomes)]
    """Every gated call's normalized outcome, in order.

    A delta channel: a checkpoint stores only the outcomes its own step added, and reading
    a checkpoint replays the thread's earlier writes, so checkpoint bytes per step stay
    constant however long the run (a plain list channel stores the whole list again at
    every step: quadratic in the run's length)."""
    decisions: Annotated[list[Decision], operator.add]
    """Every reviewer decision, in order."""
    replans: int
    """Re-plans caused by failures (bounded by Context.max_replans; absent: none yet)."""
    flags: Annotated[list[dict[str, Any]], operator.add]
    """Guard flags: suspected injection or PII, each with source, score and evidence."""
    notes: Annotated[list[str], operator.add]
    """Things a reviewer or engineer should know (plan repairs, model fallbacks)."""
    model_path: Annotated[dict[str, str], merge_dicts]
    """Which model served each role."""
    usage: Annotated[Usage, JsonTextAggregate(Usage, add_usage)]
    """Budgets consumed so far (added to by the budget guard around every node).

    Checkpointed as JSON text (`JsonTextAggregate`): it changes at every step."""
    degraded: Annotated[list[str], operator.add]
    """How the run fell back (rules model for an unavailable model, read-only for a tool
    whose breaker is open); copied into the result so the clerk knows."""
    plan_fingerprints: Annotated[list[str], operator.add]
    """One fingerprint (tools + canonical args) per phase's plan, in order: the budget
    guard stops a planner that keeps producing the same plan (loop detection)."""
    budget_stop: str
    """Why the budget guard stopped the run (a budget, a plan cycle, the tenant's daily
    cap); once set, respond writes the rules summary without calling a model."""


def phase_step_prefix(state: AgentState) -> str | None:
    """How the step ids of the current plan's phase begin (None before the first plan)."""
    plan = state.get("plan")
    return None if plan is None else f"p{plan['phase']}s"


def phase_outcomes(state: AgentState) -> list[ToolOutcome]:
    """The outcomes of the current plan's phase (none before the first plan)."""
    prefix = phase_step_prefix(state)
    if prefix is None:
        return []
    return [o for o in state.get("outcomes", []) if o["step_id"].startswith(prefix)]
