"""An instant scripted planner: long plans of reads, with no model latency at all.

The rules model plans two to four steps per run; to see how checkpoints grow with the
length of a run, the bench needs runs of 5, 20 and 50 steps. `ReadPlanner` answers the
planner's structured-output call at once with the next phase of a plan of ``steps``
``get_invoice`` reads over distinct bench invoices (distinct arguments, so loop detection
stays quiet), at most `STEPS_PER_PHASE` per phase, the last phase final. It reads the
phase number from the planner's own prompt, so it keeps no state between calls and any
number of runs may share it.

`LatentModels` serves the router and respond roles with `LatentModel`, which answers what
the rules model would after a fixed wait, as a hosted model does: runs that spend most of
their time waiting on a model, for the throughput leg that measures how far one process
overlaps them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from bench.world import clone_invoice_id
from runtime.context import Context
from runtime.models import Role
from runtime.rules_model import rules_route

STEPS_PER_PHASE = 10
"""Steps per planning phase (the planner accepts at most 12)."""

_PHASE = re.compile(r"^Phase: (\d+)$", re.MULTILINE)


def phase_of(messages: list[BaseMessage]) -> int:
    """The phase number the planner's prompt asks for (``Phase: N``)."""
    for message in reversed(messages):
        found = _PHASE.search(str(message.content))
        if found:
            return int(found.group(1))
    raise ValueError("the planner's prompt names no phase ('Phase: N')")


def read_plan_reply(steps: int, phase: int) -> AIMessage:
    """The ``ProposedPlan`` tool call for ``phase`` of a ``steps``-step plan of reads."""
    first = (phase - 1) * STEPS_PER_PHASE
    last = min(first + STEPS_PER_PHASE, steps)
    proposed = [
        {
            "tool": "get_invoice",
            "args": {"invoice_id": clone_invoice_id(index)},
            "why": f"Read bench invoice {index + 1} of {steps}.",
        }
        for index in range(first, last)
    ]
    return AIMessage(
        content="",
        tool_calls=[
            {
                "name": "ProposedPlan",
                "args": {"steps": proposed, "final": last >= steps},
                "id": f"call_{uuid.uuid4().hex[:8]}",
            }
        ],
    )


class ReadPlanner(BaseChatModel):
    """Plans ``steps`` reads, `STEPS_PER_PHASE` per phase, answering at once."""

    steps: int

    @property
    def _llm_type(self) -> str:
        return "bench-read-planner"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ReadPlanner:
        """The reply is fixed by the plan length; the tools offered do not change it."""
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = read_plan_reply(self.steps, phase_of(messages))
        return ChatResult(generations=[ChatGeneration(message=reply)])


class ReadPlanModels:
    """A `runtime.models.ModelProvider`: `ReadPlanner` plans, the rules model does the rest."""

    def __init__(self, steps: int) -> None:
        """Plan ``steps`` reads per run."""
        self.planner = ReadPlanner(steps=steps)

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """The instant planner for the planner role; None (rules) for router and respond."""
        if role == "planner":
            return f"bench-read-planner-{self.planner.steps}", self.planner
        return None


LATENT_ROLES: tuple[Role, ...] = ("router", "respond")
"""The roles `LatentModels` serves; the planner stays on the rules model, whose plans
depend on the results so far (a scripted model could only copy them)."""

LATENT_TOKENS = (600, 60)
"""(input, output) tokens each `LatentModel` reply reports, about a router call's size, so
the run meters and charges its model spend as it would with a hosted model."""


def latent_reply(role: Role, messages: list[BaseMessage]) -> AIMessage:
    """What `LatentModel` answers for ``role``: the rules model's decision as a tool call.

    The router's reply is `rules_route` on the request the router shows the model; the
    summary names the status respond reports.
    """
    text = str(messages[-1].content)
    if role == "router":
        name, args = "RouteDecision", rules_route(text).model_dump(mode="json")
    elif role == "respond":
        status = json.loads(text).get("status", "completed")
        name, args = "Summary", {"summary": f"The run ended {status}."}
    else:
        raise ValueError(f"LatentModel serves {', '.join(LATENT_ROLES)}, not {role!r}")
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}"}],
        usage_metadata={
            "input_tokens": LATENT_TOKENS[0],
            "output_tokens": LATENT_TOKENS[1],
            "total_tokens": sum(LATENT_TOKENS),
        },
    )


class LatentModel(BaseChatModel):
    """Answers ``role``'s structured call after ``latency_s``, as a hosted model would."""

    role: Role
    latency_s: float

    @property
    def _llm_type(self) -> str:
        return "bench-latent"

    def bind_tools(self, tools: Any, **kwargs: Any) -> LatentModel:
        """The reply is fixed by the role; the tools offered do not change it."""
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        time.sleep(self.latency_s)
        return ChatResult(generations=[ChatGeneration(message=latent_reply(self.role, messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await asyncio.sleep(self.latency_s)  # the wait the event loop overlaps with other runs
        return ChatResult(generations=[ChatGeneration(message=latent_reply(self.role, messages))])


class LatentModels:
    """A `runtime.models.ModelProvider`: `LatentModel` routes and summarises, rules plan."""

    def __init__(self, latency_s: float) -> None:
        """Each model call takes ``latency_s`` seconds."""
        self.latency_s = latency_s
        self.models = {role: LatentModel(role=role, latency_s=latency_s) for role in LATENT_ROLES}

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """The latent model for router and respond; None (rules) for the planner."""
        model = self.models.get(role)
        return None if model is None else (f"bench-latent-{role}", model)
