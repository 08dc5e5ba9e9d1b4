"""An instant scripted planner: long plans of reads, with no model latency at all.

The rules model plans two to four steps per run; to see how checkpoints grow with the
length of a run, the bench needs runs of 5, 20 and 50 steps. `ReadPlanner` answers the
planner's structured-output call at once with the next phase of a plan of ``steps``
``get_invoice`` reads over distinct bench invoices (distinct arguments, so loop detection
stays quiet), at most `STEPS_PER_PHASE` per phase, the last phase final. It reads the
phase number from the planner's own prompt, so it keeps no state between calls and any
number of runs may share it.

`LatentModels` serves the router and respond roles with real `ChatOpenAI` clients whose
requests an in-process endpoint (`LatentOpenAI`) answers after a fixed wait, as a hosted
model does, with what the rules model would decide: runs that spend most of their time
waiting on a model (how far one process overlaps them), and, with no wait, what a model
call costs the agent's CPU, client included.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import httpx2
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from bench.world import clone_invoice_id
from runtime.context import Context
from runtime.models import Role
from runtime.rules_model import rules_route

STEPS_PER_PHASE = 10
"""Steps per planning phase (the planner accepts at most 12)."""

_PHASE = re.compile(r"^Phase: (\d+)$", re.MULTILINE)
_STATUS = re.compile(r'"status": "(\w+)"')


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
"""(input, output) tokens each reply of `LatentOpenAI` reports, about a router call's size,
so the run meters and charges its model spend as it would with a hosted model."""

_LATENT_TOOLS = ("RouteDecision", "Summary")
"""The tools (schemas) the router's and respond's structured calls force."""


def latent_arguments(tool: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The arguments `LatentOpenAI` answers for ``tool``: what the rules model would decide.

    ``RouteDecision`` is `rules_route` on the request the router shows the model (its last
    message); ``Summary`` names the status respond reports.
    """
    text = str(messages[-1].get("content") or "")
    if tool == "RouteDecision":
        return rules_route(text).model_dump(mode="json")
    if tool == "Summary":  # respond sends its result as JSON, cut at 20,000 characters
        status = _STATUS.search(text)
        return {"summary": f"The run ended {status.group(1) if status else 'completed'}."}
    raise ValueError(f"LatentOpenAI answers {', '.join(_LATENT_TOOLS)}, not {tool!r}")


def tool_call_completion(
    model: str, tool: str, arguments: str, usage: tuple[int, int] = LATENT_TOKENS
) -> dict[str, Any]:
    """An OpenAI chat completion carrying one call of ``tool`` with ``arguments``.

    ``arguments`` is JSON text, as the API sends it (so it may be malformed); ``usage`` is
    (prompt, completion) tokens.
    """
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{uuid.uuid4().hex[:8]}",
                            "type": "function",
                            "function": {"name": tool, "arguments": arguments},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }


def latent_completion(request: dict[str, Any]) -> dict[str, Any]:
    """The chat completion `LatentOpenAI` returns for the body of a structured call."""
    choice = request.get("tool_choice")
    if not isinstance(choice, dict):
        raise ValueError(f"LatentOpenAI needs a forced tool choice, got {choice!r}")
    tool = choice["function"]["name"]
    arguments = latent_arguments(tool, request["messages"])
    return tool_call_completion(request["model"], tool, json.dumps(arguments))


class InProcessChatOpenAI(ChatOpenAI):
    """`ChatOpenAI` whose HTTP requests an in-process handler answers (httpx's MockTransport).

    Its async calls (plain and streamed) are ChatOpenAI's own, taken when this module is
    imported, so a guard that later replaces ChatOpenAI's calls to keep tests off the
    network (tests/conftest.py) leaves this client, which cannot reach the network, working.
    """

    _agenerate = ChatOpenAI._agenerate
    _astream = ChatOpenAI._astream


class LatentOpenAI:
    """An OpenAI-compatible chat completions endpoint inside the process, and its clients.

    Each request is answered after ``latency_s``, as a hosted model answers, with the tool
    call the request forces (`latent_completion`) and its token usage. The clients are
    real `ChatOpenAI`s (`InProcessChatOpenAI`): the client's request building, tool binding
    and reply parsing run as against the API; only the network is replaced.
    """

    def __init__(self, latency_s: float) -> None:
        """Answer every request after ``latency_s`` seconds."""
        self.latency_s = latency_s
        self.requests = 0

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        """Answer one chat completion request."""
        self.requests += 1
        await asyncio.sleep(self.latency_s)  # the wait the event loop overlaps with other runs
        return httpx2.Response(200, json=latent_completion(json.loads(request.content)))

    def client(self, name: str) -> ChatOpenAI:
        """A `ChatOpenAI` for model ``name`` whose requests `handle` answers."""
        return InProcessChatOpenAI(
            model=name,
            api_key=SecretStr("bench-not-a-key"),
            base_url="http://latent-openai.invalid/v1",
            temperature=0,
            max_retries=0,
            http_async_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle)),
        )


class LatentModels:
    """A `runtime.models.ModelProvider`: `LatentOpenAI` routes and summarises, rules plan."""

    def __init__(self, latency_s: float) -> None:
        """Each model call takes ``latency_s`` seconds."""
        self.server = LatentOpenAI(latency_s)
        names = {role: f"bench-latent-{role}" for role in LATENT_ROLES}
        self.models = {role: (name, self.server.client(name)) for role, name in names.items()}

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """(name, client) for router and respond; None (rules) for the planner."""
        return self.models.get(role)
