"""Scripted chat models that behave like a real client: tool calls, errors, timeouts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from runtime.context import Context
from runtime.models import Role


def tool_reply(name: str, args: dict[str, Any]) -> AIMessage:
    """An AIMessage carrying one tool call, as a function-calling model returns."""
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}"}]
    )


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


class ScriptedChatModel(FakeMessagesListChatModel):
    """Returns (or raises) scripted responses in order and records what it was sent.

    Unlike its base class it never cycles: running past the script is a test failure.
    """

    script: list[Any] = Field(default_factory=list)
    received: list[list[BaseMessage]] = Field(default_factory=list)

    def __init__(self, script: Sequence[BaseMessage | BaseException], **kwargs: Any) -> None:
        """Script the replies; an exception in the script is raised at that call."""
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
        self.received.append(list(messages))
        if not self.script:
            raise AssertionError("ScriptedChatModel ran out of scripted replies")
        reply = self.script.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return ChatResult(generations=[ChatGeneration(message=reply)])


class ScriptedModels:
    """A `ModelProvider` serving scripted models per role (roles left out use rules)."""

    def __init__(self, **models: ScriptedChatModel) -> None:
        """Map role names (router, planner, respond) to scripted models."""
        self.models = models

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """The scripted model for ``role``, or None for the rules model."""
        model = self.models.get(role)
        return (f"scripted-{role}", model) if model is not None else None
