"""Scripted chat models that behave like a real client: tool calls, errors, timeouts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from runtime.context import Context
from runtime.models import Role


def tool_reply(
    name: str, args: dict[str, Any], *, usage: tuple[int, int] | None = None
) -> AIMessage:
    """An AIMessage carrying one tool call, as a function-calling model returns.

    ``usage`` is (input tokens, output tokens), reported as the client's usage metadata.
    """
    message = AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}"}]
    )
    if usage is not None:
        message.usage_metadata = {
            "input_tokens": usage[0],
            "output_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        }
    return message


def plan_reply(final: bool, *steps: tuple[str, dict[str, Any]]) -> AIMessage:
    """A planner's `ProposedPlan` reply with these (tool, args) steps."""
    return tool_reply(
        "ProposedPlan",
        {
            "final": final,
            "steps": [{"tool": tool, "args": args, "why": f"{tool} step"} for tool, args in steps],
        },
    )


def invalid_tool_reply(name: str, raw_arguments: str) -> AIMessage:
    """A tool call whose arguments are not valid JSON (as the OpenAI client reports it)."""
    return AIMessage(
        content="",
        invalid_tool_calls=[
            {
                "name": name,
                "args": raw_arguments,
                "id": f"call_{uuid.uuid4().hex[:8]}",
                "error": "Function arguments are not valid JSON",
                "type": "invalid_tool_call",
            }
        ],
    )


OPENAI_URL = "https://api.openai.com/v1/chat/completions"


def _request() -> httpx2.Request:
    return httpx2.Request("POST", OPENAI_URL)


def rate_limit_error(message: str = "Rate limit reached for requests") -> openai.RateLimitError:
    """A 429 as the openai client raises it."""
    return openai.RateLimitError(
        message, response=httpx2.Response(429, request=_request()), body=None
    )


def server_error(message: str = "The server had an error", status: int = 500) -> Exception:
    """A 5xx as the openai client raises it."""
    return openai.InternalServerError(
        message, response=httpx2.Response(status, request=_request()), body=None
    )


def bad_request_error(message: str = "Invalid 'messages'") -> openai.BadRequestError:
    """A 400 (validation) as the openai client raises it."""
    return openai.BadRequestError(
        message, response=httpx2.Response(400, request=_request()), body=None
    )


def timeout_error() -> openai.APITimeoutError:
    """The client's own request timeout."""
    return openai.APITimeoutError(request=_request())


def connection_error() -> openai.APIConnectionError:
    """A dropped or refused connection, as the openai client reports it."""
    return openai.APIConnectionError(request=_request())


@dataclass(frozen=True)
class Slow:
    """A scripted reply (or error) that arrives only after ``seconds``.

    ``started`` is set when the stall begins, for tests that act on a call in flight.
    """

    seconds: float
    then: BaseMessage | BaseException
    started: asyncio.Event | None = None


class ScriptedChatModel(FakeMessagesListChatModel):
    """Returns (or raises) scripted responses in order and records what it was sent.

    Unlike its base class it never cycles: running past the script is a test failure.
    """

    script: list[Any] = Field(default_factory=list)
    received: list[list[BaseMessage]] = Field(default_factory=list)

    def __init__(self, script: Sequence[BaseMessage | BaseException | Slow], **kwargs: Any) -> None:
        """Script the replies; an exception in the script is raised at that call.

        A `Slow` entry stalls first: asynchronously under ``ainvoke``, so a caller's timeout
        can cancel it as it cancels a real HTTP request.
        """
        super().__init__(
            responses=[AIMessage("unused")], script=list(script), received=[], **kwargs
        )

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        """Tools are accepted and ignored: the script decides the reply."""
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._next(messages)
        if isinstance(reply, Slow):
            time.sleep(reply.seconds)
            reply = reply.then
        return self._result(reply)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._next(messages)
        if isinstance(reply, Slow):
            if reply.started is not None:
                reply.started.set()
            await asyncio.sleep(reply.seconds)
            reply = reply.then
        return self._result(reply)

    def _next(self, messages: list[BaseMessage]) -> Any:
        self.received.append(list(messages))
        if not self.script:
            raise AssertionError("ScriptedChatModel ran out of scripted replies")
        return self.script.pop(0)

    @staticmethod
    def _result(reply: BaseMessage | BaseException) -> ChatResult:
        if isinstance(reply, BaseException):
            raise reply
        return ChatResult(generations=[ChatGeneration(message=reply)])


class ScriptedModels:
    """A `ModelProvider` serving scripted models per role (roles left out use rules).

    ``fallbacks`` are the models it offers by name for `Context.model_fallbacks`.
    """

    def __init__(
        self,
        *,
        fallbacks: Mapping[str, ScriptedChatModel] | None = None,
        **models: ScriptedChatModel,
    ) -> None:
        """Map role names (router, planner, respond) to scripted models."""
        self.models = models
        self.fallbacks = dict(fallbacks or {})

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """The scripted model for ``role``, or None for the rules model."""
        model = self.models.get(role)
        return (f"scripted-{role}", model) if model is not None else None

    def named(self, name: str, context: Context) -> BaseChatModel | None:
        """The scripted fallback model called ``name``, or None if there is none."""
        return self.fallbacks.get(name)
