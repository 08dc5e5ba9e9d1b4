"""Chat models per role, and the one way nodes call them for structured output.

A role whose model is ``rules`` (the default with no `OPENAI_API_KEY`) gets None and the
node uses `runtime.rules_model`. Otherwise `ChatOpenAI` serves the role; any
OpenAI-compatible endpoint works through `OPENAI_BASE_URL`. Clients are created on first
use, never at import.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from pydantic import BaseModel

from runtime.context import RULES_MODEL, Context
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

Role = Literal["router", "planner", "respond"]
SchemaT = TypeVar("SchemaT", bound=BaseModel)


class ModelProvider(Protocol):
    """Gives the chat model for a role, or None for the rules model."""

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """Return ``(model name, model)`` for ``role``, or None to use the rules model."""
        ...


def model_name_for(role: Role, context: Context) -> str:
    """The configured model name for a role."""
    name: str = getattr(context, f"{role}_model")
    return name


class OpenAIModelProvider:
    """`ChatOpenAI` per role, cached by model name."""

    def __init__(self, *, timeout_s: float = 60.0, max_retries: int = 2) -> None:
        """Configure client timeouts and the SDK's own retry count."""
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._cache: dict[str, BaseChatModel] = {}

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """`ChatOpenAI` for the role's model name; None when the name is ``rules``."""
        name = model_name_for(role, context)
        if not name or name == RULES_MODEL:
            return None
        if name not in self._cache:
            if not os.environ.get("OPENAI_API_KEY"):
                raise ConfigError(
                    f"The {role} model is {name!r} but OPENAI_API_KEY is not set. Set the key "
                    f"(and OPENAI_BASE_URL for a local server), or set PAYABLES_{role.upper()}"
                    "_MODEL=rules to run offline."
                )
            from langchain_openai import ChatOpenAI

            self._cache[name] = ChatOpenAI(
                model=name,
                temperature=0,
                timeout=self.timeout_s,
                max_retries=self.max_retries,
                base_url=os.environ.get("OPENAI_BASE_URL") or None,
            )
        return name, self._cache[name]


@dataclass(frozen=True)
class StructuredReply:
    """What a structured call produced: a parsed object, or why not."""

    parsed: BaseModel | None
    error: str | None
    raw: BaseMessage | None


async def call_structured(
    model: BaseChatModel, schema: type[SchemaT], messages: list[Any]
) -> StructuredReply:
    """Ask ``model`` for ``schema`` via tool calling; parse failures come back as ``error``.

    Provider errors (network, rate limit, 5xx) propagate to the caller, which decides
    whether to fall back to the rules model and records that it did.
    """
    runnable = model.with_structured_output(schema, method="function_calling", include_raw=True)
    reply: dict[str, Any] = await runnable.ainvoke(messages)  # type: ignore[assignment]
    raw = reply.get("raw")
    if reply.get("parsing_error") is not None:
        return StructuredReply(
            None, f"output did not match the schema: {reply['parsing_error']}", raw
        )
    parsed = reply.get("parsed")
    if parsed is None:
        return StructuredReply(None, "the model returned no structured output", raw)
    if not isinstance(parsed, schema):
        try:
            parsed = schema.model_validate(parsed)
        except ValueError as exc:
            return StructuredReply(None, f"output did not match the schema: {exc}", raw)
    return StructuredReply(parsed, None, raw)


@dataclass(frozen=True)
class ModelAnswer:
    """A role's structured answer, or why the rules model serves instead.

    ``path`` is what the run records in ``model_path`` (``rules``, ``model:<name>`` or
    ``rules (fallback: ...)``); ``note`` says what went wrong, for the run's notes.
    """

    parsed: BaseModel | None
    path: str
    note: str | None = None
    raw: BaseMessage | None = None
    provider_failed: bool = False


async def ask_model(
    provider: ModelProvider,
    role: Role,
    context: Context,
    schema: type[SchemaT],
    messages: list[Any],
) -> ModelAnswer:
    """Ask the role's model for ``schema``; provider failures degrade to rules, and say so."""
    chosen = provider.chat(role, context)
    if chosen is None:
        return ModelAnswer(None, RULES_MODEL)
    name, model = chosen
    try:
        reply = await call_structured(model, schema, messages)
    except Exception as exc:  # any provider failure: the rules model is the floor
        log.warning("%s model %s failed: %r", role, name, exc)
        return ModelAnswer(
            None,
            f"rules (fallback: model {name} failed: {type(exc).__name__})",
            f"{role} model {name} failed ({type(exc).__name__}: {exc})",
            provider_failed=True,
        )
    if reply.parsed is not None:
        return ModelAnswer(reply.parsed, f"model:{name}", raw=reply.raw)
    return ModelAnswer(
        None,
        f"rules (fallback: model {name} output invalid)",
        f"{role} model {name}: {reply.error}",
        raw=reply.raw,
    )
