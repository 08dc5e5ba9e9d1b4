"""Per-run budgets, checked before every graph step, and the usage every step adds.

`guard_node` wraps each node of the graph. Before the node runs it:

- admits the run at its first step (the router) only if the tenant's spend today plus the
  run's cost budget fits under the tenant's daily cap (`state.costs`); otherwise the run
  is refused up front, before any model call. Admission is once per thread: a first step
  that runs again (a retry, `payables continue`, a replay) is not counted again;
- stops the run before router, planner, executor or verifier when a budget is used up
  (steps, model calls, tokens, estimated cost, wall clock, the tenant's daily cap): the
  node does not run, and the run goes to respond with status ``escalated`` (``failed``
  when there is no plan yet, so nothing to salvage) and a ``budget_exhausted`` reason;
- gives the node a `runtime.usage.Meter` holding what is left of the run's model-call,
  token and cost budgets (cost also capped by the tenant's allowance left today), which
  `runtime.models` consults before every call, and which counts each call on the thread
  in the database as it starts (`state.costs.start_model_call`): a step killed after its
  calls, whose usage never reached the state, cannot spend the call budget again.

After the node it adds one step, the node's model usage and its time to the run's
``usage`` (after respond, the run's whole usage goes into its result too); records the
step (``step_metrics``, for `payables stats`) and charges its model cost to the tenant's
day, in one statement when it spent any (`state.step_metrics`; a node
that raised, or whose run was cancelled, is recorded too, as failed, and its exception
propagates). What such an attempt spent is not lost with its discarded update: the
thread's next attempt (the graph's retry of the step, or a later run) counts it against
the budgets before it runs and its step adds it to ``usage``, and spend whose charge the
database refused is charged with that step, or with its stop when the guard stops it
(`_FailedAttempts`). It records soft
warnings when a budget reaches `Context.budget_warn_fraction`; and, after the planner,
stops a planner that keeps producing the same plan (``loop_detected``). The tenant's
spend before each node is what the run's leg last saw, at most `SPEND_MAX_AGE_S` old.

Approval and respond are never stopped: stopping approval would drop a reviewer's
decision, and respond writes the partial result. A stop before the executor or the
verifier, when the phase has outcomes, goes through the verifier instead of straight to
respond: the verifier, which only checks the database (no model call), is not stopped
again once ``budget_stop`` is set, checks what the phase did and ends the run. Once the
guard has stopped a run, respond gets no model calls (it writes the rules summary), so a
stopped run spends nothing more. Time spent waiting for a reviewer is not counted: only
time inside nodes is. The tool-call budget and identical-call detection live in the
executor, which checks them before every call.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic
from typing import Any, Literal, get_args, get_origin, get_type_hints

from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime
from langgraph.types import Command
from langsmith.run_helpers import get_current_run_tree

from nodes.deps import Node, current_thread_id
from runtime.context import Context
from runtime.usage import Meter, metering
from state.costs import TenantDay, admit_run, spent_today, start_model_call
from state.db import Database
from state.graph_state import AgentState, Plan, Usage, add_usage, phase_outcomes
from state.runs import reused_after_seed, reused_thread
from state.step_metrics import StepMetric, record_step
from tools.contract import canonical_json

log = logging.getLogger(__name__)

STOPPABLE = frozenset({"router", "planner", "executor", "verifier"})
"""Nodes the guard may decline to run (approval and respond always run)."""

FIRST_NODE = "router"
"""Where a run starts, and so where the tenant's daily cap admits or refuses it."""

LAST_NODE = "respond"
"""Where every run ends (also when the guard stops it)."""

SPEND_MAX_AGE_S = 1.0
"""How old the tenant's spend may be for a step to use it without reading it again."""


class _SpendSeen:
    """The tenant's day as each run leg in this process last saw it.

    Every node's guard needs the tenant's spend today. Within one leg of a thread (from
    its start or resume to its end or next pause) the guard reuses what the leg last
    saw, admitted, read or charged, while it is younger than `SPEND_MAX_AGE_S`, instead of
    a statement per node. The leg's own charges are always in it; other processes' spend
    reaches it within that age (see `state.costs` on what the cap allows in flight). A
    pause, a failure or the end of the run forgets the thread, so a resume, which may
    come days later, reads afresh.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, TenantDay]] = {}

    async def read(self, database: Database, tenant: str, thread_id: str) -> TenantDay:
        seen = self._seen.get(thread_id)
        if (
            seen is not None
            and seen[1].tenant == tenant
            and monotonic() - seen[0] < SPEND_MAX_AGE_S
        ):
            return seen[1]
        today = await spent_today(database, tenant)
        self.note(thread_id, today)
        return today

    def note(self, thread_id: str, today: TenantDay) -> None:
        now = monotonic()
        if len(self._seen) > 4096:  # legs that ended without reaching respond (drained)
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < SPEND_MAX_AGE_S}
        self._seen[thread_id] = (now, today)

    def forget(self, thread_id: str) -> None:
        self._seen.pop(thread_id, None)


_SPEND_SEEN = _SpendSeen()


@dataclass
class _Carry:
    """What node attempts of one thread that raised spent, and where it is not counted yet."""

    usage: Usage
    """Model usage and time of the failed attempts: their state update (and so their share
    of the run's ``usage``) was discarded, the money was not."""
    uncharged: Meter
    """Spend whose step row and tenant charge the database refused (the attempt's
    `_record_after_exception` failed): charged with the thread's next recorded step."""


class _FailedAttempts:
    """Spend of node attempts that raised, per thread, until a step of the thread completes.

    The graph retries a node that raised a transient database error (`TRANSIENT_DB_RETRY`),
    and every attempt starts from the same state. Without this, each attempt would get the
    run's whole remaining model budget again, and the run's ``usage`` would never show the
    calls the failed attempts made. The next attempt of the thread (in this process) counts
    them before it decides and meters, and its step adds them to ``usage``. A process that
    dies forgets them; the tenant's day has them already (unless the database refused that
    too: then they are lost with the process).
    """

    LIMIT = 4096
    """Threads remembered at most (those that failed for good and never ran again)."""

    def __init__(self) -> None:
        self._carries: dict[str, _Carry] = {}

    def get(self, thread_id: str) -> _Carry | None:
        return self._carries.get(thread_id)

    def failed(self, thread_id: str, meter: Meter, elapsed: float, *, charged: bool) -> None:
        """Carry an attempt that raised.

        ``charged``: its step row and charge were written (with whatever was uncharged).
        """
        carry = self._carries.pop(thread_id, None)
        usage = _usage_of(meter, elapsed)
        uncharged = Meter() if charged or carry is None else carry.uncharged
        if not charged:
            uncharged = _sum_meters(uncharged, meter)
        total = add_usage(carry.usage, usage) if carry is not None else usage
        total.pop("warnings", None)
        if len(self._carries) >= self.LIMIT:
            self._carries.pop(next(iter(self._carries)))
        self._carries[thread_id] = _Carry(total, uncharged)

    def settled(self, thread_id: str) -> None:
        """The thread's latest step completed and counted everything carried."""
        self._carries.pop(thread_id, None)


def _usage_of(meter: Meter, elapsed: float) -> Usage:
    """What one node attempt spent, as the run's ``usage`` counts it (no step)."""
    return Usage(
        model_calls=meter.model_calls,
        input_tokens=meter.input_tokens,
        output_tokens=meter.output_tokens,
        cost_usd=meter.cost_usd,
        wall_clock_s=elapsed,
    )


def _sum_meters(left: Meter, right: Meter) -> Meter:
    return Meter(
        model_calls=left.model_calls + right.model_calls,
        input_tokens=left.input_tokens + right.input_tokens,
        output_tokens=left.output_tokens + right.output_tokens,
        cost_usd=left.cost_usd + right.cost_usd,
    )


_FAILED_ATTEMPTS = _FailedAttempts()


@dataclass(frozen=True)
class Budget:
    """One budget: how much of it the run has used and what the limit is."""

    kind: str
    """What is counted, as a clerk reads it (``steps``, ``tokens``, ...)."""
    used: float
    limit: float
    setting: str
    """Where the limit comes from, so a person knows what to raise."""
    unit: Literal["count", "usd", "seconds"] = "count"

    def _fmt(self, value: float) -> str:
        if self.unit == "usd":
            return f"${value:.4f}"
        if self.unit == "seconds":
            return f"{value:.1f}s"
        return str(int(value))

    @property
    def spent(self) -> str:
        """``used/limit`` in the budget's unit, e.g. ``80/80`` or ``$0.0120/$0.0100``."""
        return f"{self._fmt(self.used)}/{self._fmt(self.limit)}"

    @property
    def exhausted(self) -> bool:
        """Nothing is left.

        A zero limit with nothing used is not exhausted: a run with a zero cost budget
        still runs, on the rules model (the meter refuses paid calls).
        """
        return self.used > 0 and self.used >= self.limit

    def reached(self, fraction: float) -> bool:
        """At least ``fraction`` of the budget is used."""
        return self.used > 0 and self.used >= fraction * self.limit

    def warning(self) -> str:
        """The soft warning text; it starts with `warning_prefix` (one warning per kind)."""
        share = self.used / self.limit if self.limit else 1.0
        return f"{self.warning_prefix}{share:.0%} used ({self.spent}; {self.setting})"

    @property
    def warning_prefix(self) -> str:
        """How every warning about this budget starts."""
        return f"{self.kind} budget: "


def run_budgets(
    usage: Usage, tool_calls: int, ctx: Context, tenant: TenantDay | None
) -> list[Budget]:
    """Every budget of the run with what ``usage`` (and the tenant's day) has used of it."""
    budgets = [
        Budget("steps", usage.get("steps", 0), ctx.max_steps, "PAYABLES_MAX_STEPS"),
        Budget("tool calls", tool_calls, ctx.max_tool_calls, "PAYABLES_MAX_TOOL_CALLS"),
        Budget(
            "model calls",
            usage.get("model_calls", 0),
            ctx.max_model_calls,
            "PAYABLES_MAX_MODEL_CALLS",
        ),
        Budget(
            "tokens",
            usage.get("input_tokens", 0) + usage.get("output_tokens", 0),
            ctx.max_tokens,
            "PAYABLES_MAX_TOKENS",
        ),
        Budget(
            "cost",
            usage.get("cost_usd", 0.0),
            ctx.max_cost_usd,
            "PAYABLES_MAX_COST_USD",
            "usd",
        ),
        Budget(
            "wall clock",
            usage.get("wall_clock_s", 0.0),
            ctx.max_wall_clock_s,
            "PAYABLES_MAX_WALL_CLOCK_S",
            "seconds",
        ),
    ]
    if tenant is not None:
        budgets.append(
            Budget(
                f"tenant {tenant.tenant} daily cost ({tenant.day.isoformat()} UTC)",
                tenant.cost_usd,
                ctx.tenant_daily_cost_cap_usd,
                "PAYABLES_TENANT_DAILY_COST_CAP_USD",
                "usd",
            )
        )
    return budgets


def exhausted_reason(node: str, budgets: list[Budget]) -> str | None:
    """Why the run may not run ``node`` (every used-up budget), or None.

    The tool-call budget is left to the executor, which checks it before every call with
    the step at hand.
    """
    gone = [b for b in budgets if b.exhausted and b.kind != "tool calls"]
    if not gone:
        return None
    spent = "; ".join(f"{b.kind} {b.spent}" for b in gone)
    settings = ", ".join(b.setting for b in gone)
    return (
        f"Stopped before the {node} step (budget_exhausted: {spent}). What was done so far "
        f"is in the result; a person should look at it (limits: {settings})."
    )


def new_warnings(budgets: list[Budget], fraction: float, already: list[str]) -> list[str]:
    """Warnings for budgets that reached ``fraction`` and have not been warned about."""
    return [
        b.warning()
        for b in budgets
        if b.reached(fraction) and not any(w.startswith(b.warning_prefix) for w in already)
    ]


def plan_fingerprint(plan: Plan) -> str:
    """Identity of a plan's content: its tools and canonical args, in order."""
    content = canonical_json([[step["tool"], step["args"]] for step in plan["steps"]])
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def plan_cycle_reason(plan: Plan, earlier: list[str], max_identical: int) -> str | None:
    """Why ``plan`` ends the run as a loop (it repeats an earlier plan too often), or None."""
    if not plan["steps"]:
        return None  # an empty plan ends the run anyway
    repeats = earlier.count(plan_fingerprint(plan))
    if repeats <= max_identical:
        return None
    tools = ", ".join(step["tool"] for step in plan["steps"])
    return (
        f"Stopped after planning phase {plan['phase']} (loop_detected: the planner produced "
        f"the same plan [{tools}] for the {repeats + 1}th time; at most "
        f"{max_identical} repeat(s) allowed). A person should look at it."
    )


def tenant_refusal(today: TenantDay, ctx: Context) -> str:
    """What a clerk is told when the tenant's daily cap cannot cover this run's budget."""
    return (
        f"Refused before starting (tenant_cost_cap): tenant {today.tenant!r} has spent "
        f"${today.cost_usd:.4f} of its ${ctx.tenant_daily_cost_cap_usd:.2f} daily model "
        f"budget on {today.day.isoformat()} (UTC), and this run may cost up to "
        f"${ctx.max_cost_usd:.2f}. Try again after 00:00 UTC, give the run a smaller budget "
        "(PAYABLES_MAX_COST_USD), or ask an administrator to raise the cap "
        "(PAYABLES_TENANT_DAILY_COST_CAP_USD)."
    )


def meter_for(usage: Usage, ctx: Context, tenant: TenantDay, *, stopped: bool) -> Meter:
    """A meter holding what is left of the run's model budgets (none once ``stopped``)."""
    cost_left = min(
        ctx.max_cost_usd - usage.get("cost_usd", 0.0),
        tenant.left_usd(ctx.tenant_daily_cost_cap_usd),
    )
    tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
    return Meter(
        calls_left=0 if stopped else max(0, ctx.max_model_calls - usage.get("model_calls", 0)),
        tokens_left=max(0, ctx.max_tokens - tokens),
        cost_left_usd=max(0.0, cost_left),
    )


def _update_of(result: Any) -> dict[str, Any]:
    if isinstance(result, Command):
        return result.update if isinstance(result.update, dict) else {}
    if isinstance(result, dict):
        return result
    if result is None:
        return {}
    raise TypeError(f"node returned {type(result).__name__}; expected a Command or a dict")


def _with_update(result: Any, extra: dict[str, Any], goto: str | None = None) -> Any:
    """``result`` (a Command or a state update) with ``extra`` merged into its update."""
    update = {**_update_of(result), **extra}
    if isinstance(result, Command):
        return Command(
            graph=result.graph,
            update=update,
            resume=result.resume,
            goto=goto if goto is not None else result.goto,
        )
    if goto is not None:
        return Command(goto=goto, update=update)
    return update


VERIFIED_ON_STOP = frozenset({"executor", "verifier"})
"""Nodes reached with the phase's outcomes not yet verified: a stop there verifies them."""


def _stop(
    state: AgentState, reason: str, *, status: str | None = None, node: str = FIRST_NODE
) -> Command[Any]:
    """End the run without running ``node``, saying why.

    Stopped before the executor or the verifier, with outcomes in the phase, the run goes
    through the verifier, which checks them and ends it (see `guard_node`); otherwise to
    respond.
    """
    status = status or ("escalated" if state.get("plan") else "failed")
    verify = node in VERIFIED_ON_STOP and bool(phase_outcomes(state))
    return Command(
        goto="verifier" if verify else "respond",
        update={
            "status": status,
            "reason": reason,
            "budget_stop": reason,
            "notes": [f"budget guard: {reason}"],
        },
    )


def _trace_metadata(state: AgentState, ctx: Context) -> dict[str, Any]:
    metadata: dict[str, Any] = {"tenant": ctx.tenant, "prompt_version": ctx.prompt_version}
    if state.get("route"):
        metadata["route"] = state["route"]
    return metadata


def _mark_trace(tags: list[str], metadata: dict[str, Any]) -> None:
    """Tag the node's LangSmith run (when tracing is on) so warnings and stops show there."""
    run = get_current_run_tree()
    if run is not None:
        run.add_tags(tags)
        run.add_metadata(metadata)


def _with_respond_destination(guarded: Any, name: str, node: Node) -> None:
    """Add respond to the node's declared destinations, where the guard may send the run.

    LangGraph draws a node's edges from its ``Command[Literal[...]]`` return hint.
    """
    if name not in STOPPABLE:
        return
    try:
        hints = get_type_hints(node)
    except (NameError, TypeError):
        return
    returned = hints.get("return")
    if get_origin(returned) is not Command or not get_args(returned):
        return
    targets = get_args(returned)[0]
    if get_origin(targets) is not Literal or "respond" in get_args(targets):
        return
    destinations = (*get_args(targets), "respond")
    guarded.__annotations__ = {**hints, "return": Command[Literal[destinations]]}  # type: ignore[valid-type]


def guard_node(
    name: str,
    node: Node,
    *,
    database: Database | Callable[[], Database],
) -> Node:
    """``node`` behind the run's budgets, with its usage metered and added to ``usage``.

    ``database`` (or a factory, resolved at the first step, so building the graph opens
    nothing) holds the tenants' daily costs. Time inside the node is measured with
    `time.monotonic`.
    """

    @functools.wraps(node)  # keeps the Command[Literal[...]] hints Studio draws edges from
    async def guarded(state: AgentState, *, runtime: Runtime[Context]) -> Any:
        ctx = runtime.context
        db = database if isinstance(database, Database) else database()
        outcomes = state.get("outcomes", [])
        thread_id = current_thread_id()
        # Earlier attempts of a step that raised spent too, though their update is gone.
        carry = _FAILED_ATTEMPTS.get(thread_id)
        usage: Usage = state.get("usage", {})
        if carry is not None:
            usage = add_usage(usage, carry.usage)
        # Every node's trace says the run's tenant, prompt version and (once routed) route,
        # so a resume's trace, where a reviewer's decision is, is found by them too, and so
        # is a run on the LangGraph server, whose root the CLI's metadata never reaches.
        if (run := get_current_run_tree()) is not None:
            run.add_metadata(_trace_metadata(state, ctx))
        if name == FIRST_NODE and not state.get("route"):
            admission = await admit_run(
                db,
                ctx.tenant,
                thread_id=thread_id,
                max_cost_usd=ctx.max_cost_usd,
                cap_usd=ctx.tenant_daily_cost_cap_usd,
            )
            if admission.pruned_at is not None:
                # Refused before anything of it is written (see `nodes.router`).
                raise reused_thread(thread_id, admission.pruned_at)
            if admission.used_before_seed:
                raise reused_after_seed(thread_id)
            today = admission.today
            if not admission.admitted:
                reason = tenant_refusal(today, ctx)
                log.warning("run refused: %s", reason)
                _mark_trace(["tenant_cost_cap"], {"budget_stop": reason})
                return _stop(state, reason, status="refused")
            _SPEND_SEEN.note(thread_id, today)
        else:
            today = await _SPEND_SEEN.read(db, ctx.tenant, thread_id)
        # A stopped run's verifier only checks what the phase did and ends the run.
        ending = name == "verifier" and bool(state.get("budget_stop"))
        if name in STOPPABLE and not ending:
            exhausted = exhausted_reason(name, run_budgets(usage, len(outcomes), ctx, today))
            if exhausted is not None:
                log.warning("run stopped: %s", exhausted)
                _mark_trace(["budget_exhausted"], {"budget_stop": exhausted})
                stopped = _stop(state, exhausted, node=name)
                if carry is not None:  # what the failed attempts spent goes on record now
                    await _charge_before_stopping(db, ctx.tenant, thread_id, name, carry)
                    _FAILED_ATTEMPTS.settled(thread_id)
                    return _with_update(stopped, {"usage": carry.usage})
                return stopped

        meter = meter_for(usage, ctx, today, stopped=bool(state.get("budget_stop")))
        meter.start_call = functools.partial(start_model_call, db, thread_id, ctx.max_model_calls)
        started_at = datetime.now(UTC)
        started = monotonic()

        def step(elapsed: float, *, ok: bool) -> StepMetric:
            # With the spend of earlier attempts whose own row the database refused.
            billed = _sum_meters(carry.uncharged, meter) if carry is not None else meter
            return _step_metric(thread_id, ctx.tenant, name, started_at, elapsed, billed, ok=ok)

        try:
            with metering(meter):
                result = await node(state, runtime=runtime)
        except GraphBubbleUp:
            # The node paused the run for a reviewer (or handed control up): not a failure.
            _SPEND_SEEN.forget(thread_id)
            recorded = await _record_after_exception(db, step(monotonic() - started, ok=True))
            if recorded and carry is not None:
                carry.uncharged = Meter()  # charged with this step's row
            raise
        except (Exception, asyncio.CancelledError):
            # The models were called (and paid for) even if the node failed afterwards, or
            # its run was cancelled (a server run's client cancelled it, or sent another
            # input in its place): the tenant is charged now, the run's usage at the
            # thread's next completed step. Shielded: a second cancel does not stop the
            # charge.
            elapsed = monotonic() - started
            _SPEND_SEEN.forget(thread_id)
            charged = await asyncio.shield(_record_after_exception(db, step(elapsed, ok=False)))
            _FAILED_ATTEMPTS.failed(thread_id, meter, elapsed, charged=charged)
            raise
        elapsed = monotonic() - started
        # The step's row for `payables stats`, and its spend charged to the tenant if any.
        try:
            spent = await record_step(db, step(elapsed, ok=True))
        except Exception:
            # The graph retries the step: its spend is carried as an attempt's that raised.
            _SPEND_SEEN.forget(thread_id)
            _FAILED_ATTEMPTS.failed(thread_id, meter, elapsed, charged=False)
            raise
        if spent is not None:
            today = spent
            _SPEND_SEEN.note(thread_id, today)
        if name == LAST_NODE:
            _SPEND_SEEN.forget(thread_id)
        step_usage = Usage(steps=1, **_usage_of(meter, elapsed))
        if carry is not None:
            step_usage = add_usage(carry.usage, step_usage)
            step_usage.pop("warnings", None)
            _FAILED_ATTEMPTS.settled(thread_id)
        update = _update_of(result)
        total = add_usage(state.get("usage", {}), step_usage)
        tool_calls = len(outcomes) + len(update.get("outcomes", []))
        warnings = new_warnings(
            run_budgets(total, tool_calls, ctx, today),
            ctx.budget_warn_fraction,
            usage.get("warnings", []),
        )
        if warnings:
            step_usage["warnings"] = warnings
            for warning in warnings:
                log.warning("budget warning (%s): %s", name, warning)
            _mark_trace(["budget_warning"], {"budget_warnings": warnings})
        extra: dict[str, Any] = {"usage": step_usage}
        if name == LAST_NODE and isinstance(update.get("result"), dict):
            # The result reports the run's whole usage: the last step's own model call
            # and time are only known here, after the node.
            final = add_usage(state.get("usage", {}), step_usage)
            extra["result"] = {**update["result"], "usage": final}

        plan = update.get("plan")
        if name == "planner" and plan is not None:
            earlier = state.get("plan_fingerprints", [])
            extra["plan_fingerprints"] = [plan_fingerprint(plan)]
            cycle = plan_cycle_reason(plan, earlier, ctx.max_identical_plans)
            if cycle is not None:
                log.warning("run stopped: %s", cycle)
                _mark_trace(["loop_detected"], {"budget_stop": cycle})
                notes = [*update.get("notes", []), f"budget guard: {cycle}"]
                stop = {"status": "escalated", "reason": cycle, "budget_stop": cycle}
                return _with_update(result, {**extra, **stop, "notes": notes}, goto="respond")
        return _with_update(result, extra)

    _with_respond_destination(guarded, name, node)
    return guarded


async def _charge_before_stopping(
    database: Database, tenant: str, thread_id: str, node: str, carry: _Carry
) -> None:
    """Charge spend of failed attempts whose own row the database refused, as a stop ends them.

    The step that follows them is where that spend is charged; when the guard stops that
    step instead, the stop's row carries it (the node did not run: no time, ``ok``). A
    failure to write it raises, so the graph retries the step and the charge with it.
    """
    stop = _step_metric(thread_id, tenant, node, datetime.now(UTC), 0.0, carry.uncharged, ok=True)
    if not stop.spent:
        return
    await record_step(database, stop)
    _SPEND_SEEN.forget(thread_id)


def _step_metric(
    thread_id: str,
    tenant: str,
    node: str,
    started_at: datetime,
    elapsed: float,
    billed: Meter,
    *,
    ok: bool,
) -> StepMetric:
    """The ``step_metrics`` row of a step that took ``elapsed`` seconds and spent ``billed``."""
    return StepMetric(
        thread_id=thread_id,
        tenant=tenant,
        node=node,
        started_at=started_at,
        duration_ms=elapsed * 1000,
        model_calls=billed.model_calls,
        tokens=billed.input_tokens + billed.output_tokens,
        cost_usd=billed.cost_usd,
        ok=ok,
    )


async def _record_after_exception(database: Database, step: StepMetric) -> bool:
    """Record a node that raised, and charge its model spend; False if that failed.

    A failure to record it is logged, not raised, so the node's own exception propagates.
    """
    try:
        await record_step(database, step)
    except Exception:
        log.exception(
            "could not record the %s step of thread %s ($%.6f of model spend, %d calls,"
            " tenant %s) after it raised",
            step.node,
            step.thread_id,
            step.cost_usd,
            step.model_calls,
            step.tenant,
        )
        return False
    return True
