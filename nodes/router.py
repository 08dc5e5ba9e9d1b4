"""router: classify the request, extract ids, fix the route (and so the tool scope)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from guards.input_checks import check_attachments, check_request, split_pasted
from nodes.deps import Node, NodeDeps, current_thread_id
from nodes.safety import request_flags, request_for_model
from runtime.context import Context, policy_of
from runtime.models import ask_model
from runtime.prompts import ROUTER_SYSTEM
from runtime.rules_model import (
    RouteDecision,
    extract_entities,
    refuses_payment,
    rules_route,
    vendor_change_problem,
)
from runtime.tracing import annotate_run
from state.audit import guard_flag_event, record, request_received_event, route_event
from state.graph_state import AgentState, Entities, appended, request_already_held
from state.routes import TOOL_ROUTES, Route
from state.runs import record_run

log = logging.getLogger(__name__)

MIN_CONFIDENCE = 0.5


def _grounded(decision: RouteDecision, request: str) -> Entities:
    """Keep only entities that literally appear in the request (a model may not invent ids).

    A model may not ask to pay either when the request says not to.
    """
    found = extract_entities(request)
    return Entities(
        invoice_ids=[i for i in decision.invoice_ids if i.upper() in found["invoice_ids"]]
        or found["invoice_ids"],
        po_numbers=[p for p in decision.po_numbers if p.upper() in found["po_numbers"]]
        or found["po_numbers"],
        vendor_ids=[v for v in decision.vendor_ids if v.upper() in found["vendor_ids"]]
        or found["vendor_ids"],
        bank_accounts=found["bank_accounts"],
        # A model may read a wish to pay the rules miss, but not one the clerk declined.
        wants_payment=(decision.wants_payment or found["wants_payment"])
        and not refuses_payment(request),
    )


def make_router(deps: NodeDeps) -> Node:
    """Build the router node."""

    async def router(
        state: AgentState, *, runtime: Runtime[Context]
    ) -> Command[Literal["planner", "respond"]]:
        """Route the request; ambiguous or oversized requests go straight to respond."""
        ctx = runtime.context
        request = state.get("request", "")
        thread_id = current_thread_id()
        requester = state.get("user") or "anonymous"
        # A thread id is one request's. A pruned thread's run index row, approvals and audit
        # rows outlive its checkpoints, so a new request there (a server client may choose
        # the id; `Agent.start` refuses it earlier) would be judged against the old one's:
        # the budget guard's admission, in the statement that admits this run, refuses it
        # before anything of it is written (`state.costs.admit_run`).
        if state.get("route"):
            # The router runs once per thread; a routed state means new input reached a
            # thread that already holds a request (a server client sending a second one).
            # Run there, it would skip the cost cap's admission and mix the two requests'
            # plans, approvals and run index row.
            raise request_already_held(thread_id, state["route"])
        # A server client's input reaches this node as sent: anything but text, and
        # attachments other than a short list of {name, text}, are refused here, before
        # any check, prompt or record reads them.
        verdict = check_request(request)
        if verdict.ok:
            verdict = check_attachments(state.get("attachments"))
        attachments = (state.get("attachments") or []) if verdict.ok else []
        # What later nodes read instead of input they cannot use (respond records the
        # request in the run index).
        sanitized: dict[str, Any] = {}
        if not isinstance(state.get("request"), str):  # not text, or none at all
            request = sanitized["request"] = ""
        if not verdict.ok and "attachments" in state:
            sanitized["attachments"] = []
        # Audit chain: the request as received (masked), then the route below.
        received = request_received_event(
            thread_id, request=request, requester=requester, attachments=attachments
        )
        await record(deps.database, ctx.tenant, thread_id, received)
        if not verdict.ok:
            await record_run(
                deps.database,
                thread_id=thread_id,
                request=request[:2000],
                requester=requester,
                tenant=ctx.tenant,
                route=Route.OUT_OF_SCOPE,
                status="refused",
            )
            refused = route_event(
                thread_id,
                route=Route.OUT_OF_SCOPE.value,
                confidence=1.0,
                reason=verdict.reason,
                model_path="rules",
                status="refused",
            )
            await record(deps.database, ctx.tenant, thread_id, refused)  # audit chain
            return Command(
                goto="respond",
                update={
                    "route": Route.OUT_OF_SCOPE.value,
                    "route_confidence": 1.0,
                    "status": "refused",
                    "reason": verdict.reason,
                    "model_path": {"router": "rules"},
                    **sanitized,
                },
            )

        # Text pasted into the request (a forwarded email) is a third party's, not the clerk's:
        # routing and entities come from the clerk's own words only.
        own_words, _ = split_pasted(request)
        answer = await ask_model(
            deps.models,
            "router",
            ctx,
            RouteDecision,
            [SystemMessage(ROUTER_SYSTEM), HumanMessage(request_for_model(state))],
            repairs=ctx.max_plan_repairs,
        )
        notes = [answer.note] if answer.note else []
        decision = (
            answer.parsed if isinstance(answer.parsed, RouteDecision) else rules_route(own_words)
        )
        path = answer.path

        entities = _grounded(decision, own_words)
        route = decision.route
        reason = decision.rationale or (
            "The request needs a person: it could not be routed to an action. Say what to do "
            "and name the invoice (INV-…) or vendor (V-…), or ask a reviewer."
            if route == Route.ESCALATE
            else ""
        )
        if route in TOOL_ROUTES and decision.confidence < MIN_CONFIDENCE:
            route, reason = (
                Route.ESCALATE,
                (
                    f"Not confident enough to act (confidence {decision.confidence:.2f}): "
                    f"{decision.rationale}"
                ),
            )
        if route == Route.INVOICE_PROCESSING and not entities["invoice_ids"]:
            route, reason = Route.ESCALATE, "Which invoice? Name it by id, e.g. INV-1001."
        if route == Route.PAYMENT_STATUS and not (
            entities["invoice_ids"] or entities["vendor_ids"]
        ):
            route, reason = Route.ESCALATE, "Name the invoice (INV-…) or vendor (V-…) to look up."
        unclear_change = vendor_change_problem(entities)
        if route == Route.VENDOR_CHANGE and unclear_change is not None:
            route, reason = Route.ESCALATE, unclear_change

        await record_run(
            deps.database,
            thread_id=thread_id,
            request=request,
            requester=requester,
            tenant=ctx.tenant,
            route=route.value,
            status="running",
            policy=policy_of(ctx),
        )
        flags = request_flags(request, state.get("attachments", []))
        for flag in flags:  # audit chain: every guard flag, where reviewers can find it later
            await record(deps.database, ctx.tenant, thread_id, guard_flag_event(thread_id, flag))
        update: dict[str, Any] = {
            "route": route.value,
            "route_confidence": decision.confidence,
            "entities": entities,
            "model_path": {"router": path},
        }
        update.update(
            appended(
                notes=notes, degraded=[answer.degraded] if answer.degraded else [], flags=flags
            )
        )
        routed = route_event(
            thread_id,
            route=route.value,
            confidence=decision.confidence,
            reason=reason,
            model_path=path,
            entities=entities,
            status=None
            if route in TOOL_ROUTES
            else ("refused" if route == Route.OUT_OF_SCOPE else "escalated"),
        )
        await record(deps.database, ctx.tenant, thread_id, routed)  # audit chain
        annotate_run(route=route.value, model_path=path)
        if route in TOOL_ROUTES:
            return Command(goto="planner", update=update)
        update["status"] = "refused" if route == Route.OUT_OF_SCOPE else "escalated"
        update["reason"] = (
            "I only handle accounts payable: invoices, payments, vendor bank details and AP "
            "policy questions."
            if route == Route.OUT_OF_SCOPE
            else reason
        )
        return Command(goto="respond", update=update)

    return router
