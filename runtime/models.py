"""Chat models per role, and the one way nodes call them for structured output.

A role whose model is ``rules`` (the default with no `OPENAI_API_KEY`) gets None and the
node uses `runtime.rules_model`. Otherwise `ChatOpenAI` serves the role; any
OpenAI-compatible endpoint works through `OPENAI_BASE_URL`. Clients are created on first
use, never at import.

`ask_model` is what makes a model call survivable:

- every attempt is charged to the node's `runtime.usage.Meter` (tokens from the reply's
  usage metadata, cost from `Context.model_prices`) and asks it first whether the run's
  budget allows one more call; when it does not, no call is made and the rules model serves;
- transient failures (rate limit, timeout, 5xx, 408/409, connection) are retried with
  exponential backoff and jitter (LangChain's `RunnableRetry`); client errors (400, 401,
  403, 404, 422) are never retried;
- each attempt runs under `Context.model_timeout_s`;
- each model has a circuit breaker (`runtime.breakers.BREAKERS`, ``model:<name>``): transient
  failures and unexpected exceptions count against it, an open breaker is skipped without a
  call;
- when a model stays unavailable, or fails with a client error, the next model in
  `Context.model_fallbacks` is tried (a client error is not retried on the same model, but
  another model may accept the request: a larger context window, other features, other
  access), and the rules model is the floor; the answer says so in ``degraded``;
- malformed output (invalid JSON, wrong schema, unknown tool, missing arguments, more than
  one tool call) goes back to the same model with the validation error, for at most
  ``repairs`` more attempts; then the rules model serves;
- `PAYABLES_FAULTS` (`runtime.faults`) injects failures into attempts: the same exception
  classes the `openai` client raises, or unusable output.

Retries sit around the single model call and not around the node (LangGraph's
``RetryPolicy``) because a node also writes audit events and may make several model calls;
rerunning all of it to retry one call would repeat those writes and spend the budget twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableSequence
from langchain_core.runnables.retry import RunnableRetry
from pydantic import BaseModel
from tenacity import wait_exponential_jitter

from runtime.breakers import BREAKERS, BreakerAdmission, CircuitBreaker
from runtime.context import RULES_MODEL, Context
from runtime.errors import ConfigError
from runtime.faults import FAULTS
from runtime.usage import current_meter

log = logging.getLogger(__name__)

Role = Literal["router", "planner", "respond"]
SchemaT = TypeVar("SchemaT", bound=BaseModel)

ERROR_TEXT_LIMIT = 300
"""Longest provider or validation message kept in a note, path or repair request."""

OUTPUT_REPAIR = """\
Your reply could not be used: {errors}
Call the {tool} tool exactly once, with arguments that match its JSON Schema."""
"""What a model is told when its structured output was unusable (router and respond)."""


class ModelProvider(Protocol):
    """Gives the chat model for a role, or None for the rules model."""

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """Return ``(model name, model)`` for ``role``, or None to use the rules model."""
        ...


@runtime_checkable
class FallbackModelProvider(ModelProvider, Protocol):
    """A provider that can also serve models by name, for `Context.model_fallbacks`."""

    def named(self, name: str, context: Context) -> BaseChatModel | None:
        """The model called ``name``, or None if this provider does not offer it."""
        ...


def model_name_for(role: Role, context: Context) -> str:
    """The configured model name for a role."""
    name: str = getattr(context, f"{role}_model")
    return name


class OpenAIModelProvider:
    """`ChatOpenAI` per role, cached by model name and timeout.

    Replies are never streamed, so each carries the token usage the budgets charge.
    """

    def __init__(self, *, timeout_s: float | None = None, max_retries: int = 0) -> None:
        """Client settings; by default the run's `model_timeout_s` and no SDK retries.

        `ask_model` retries with backoff itself and counts each attempt against the budget
        and the breaker; retries inside the SDK would multiply the attempts unseen.
        """
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._cache: dict[tuple[str, float], BaseChatModel] = {}

    def chat(self, role: Role, context: Context) -> tuple[str, BaseChatModel] | None:
        """`ChatOpenAI` for the role's model name; None when the name is ``rules``."""
        name = model_name_for(role, context)
        if not name or name == RULES_MODEL:
            return None
        if not os.environ.get("OPENAI_API_KEY"):
            raise ConfigError(
                f"The {role} model is {name!r} but OPENAI_API_KEY is not set. Set the key "
                f"(and OPENAI_BASE_URL for a local server), or set PAYABLES_{role.upper()}"
                "_MODEL=rules to run offline."
            )
        return name, self._client(name, context)

    def named(self, name: str, context: Context) -> BaseChatModel | None:
        """`ChatOpenAI` for a fallback model; None without `OPENAI_API_KEY`."""
        if not name or name == RULES_MODEL or not os.environ.get("OPENAI_API_KEY"):
            return None
        return self._client(name, context)

    def _client(self, name: str, context: Context) -> BaseChatModel:
        timeout = self.timeout_s if self.timeout_s is not None else context.model_timeout_s
        key = (name, timeout)
        if key not in self._cache:
            from langchain_openai import ChatOpenAI

            self._cache[key] = ChatOpenAI(
                model=name,
                temperature=0,
                timeout=timeout,
                max_retries=self.max_retries,
                base_url=os.environ.get("OPENAI_BASE_URL") or None,
                # Never stream. A graph streamed with stream_mode="messages" (the LangGraph
                # server, Studio) makes a chat model stream its reply, and a streamed reply
                # carries token usage only if asked for, which ChatOpenAI does for OpenAI
                # itself but not behind OPENAI_BASE_URL: the budgets would see 0 tokens.
                # A structured reply is one tool call; streaming it shows nobody anything.
                disable_streaming=True,
            )
        return self._cache[key]


@dataclass(frozen=True)
class StructuredReply:
    """What a structured call produced: a parsed object, or why not."""

    parsed: BaseModel | None
    error: str | None
    raw: BaseMessage | None


def _no_structure_error(schema: type[BaseModel], raw: BaseMessage | None) -> str:
    """Why a reply carried no usable tool call, in words a model can act on."""
    invalid = raw.invalid_tool_calls if isinstance(raw, AIMessage) else []
    if invalid:
        call = invalid[0]
        return (
            f"output did not match the schema: the arguments of tool call {call.get('name')!r} "
            f"are not valid JSON ({call.get('error') or 'unparseable'})"
        )
    return f"the model returned no structured output; call the {schema.__name__} tool"


def _extra_calls_error(schema: type[BaseModel], raw: BaseMessage | None) -> str | None:
    """Why a reply with more than one tool call is no answer (None for one call or none).

    The structured parser would take the first call and drop the rest; but two calls are
    two answers (that may disagree, or one of which is broken), and which one the model
    meant is not ours to guess.
    """
    if not isinstance(raw, AIMessage):
        return None
    calls = len(raw.tool_calls) + len(raw.invalid_tool_calls)
    if calls <= 1:
        return None
    return f"the reply made {calls} tool calls; call the {schema.__name__} tool exactly once"


_STRUCTURED_CACHE_SIZE = 64
_Structured = tuple[BaseChatModel, Runnable[Any, Any]]
_structured: OrderedDict[tuple[int, type[BaseModel]], _Structured] = OrderedDict()


def structured_runnable(model: BaseChatModel, schema: type[BaseModel]) -> Runnable[Any, Any]:
    """``model.with_structured_output(schema, method="function_calling")``, built once.

    Building it converts the schema to a tool definition: about 2.4 ms of CPU for
    `ChatOpenAI` on the bench machine, at every call otherwise. Runnables are immutable,
    so concurrent calls share one. The most recently used `_STRUCTURED_CACHE_SIZE` are kept
    (the provider caches its clients, so there are a handful), each with its model, so an
    id that Python reuses for a new model never finds another model's runnable.
    """
    key = (id(model), schema)
    cached = _structured.get(key)
    if cached is not None and cached[0] is model:
        with contextlib.suppress(KeyError):  # another thread's loop may have evicted it
            _structured.move_to_end(key)
        return cached[1]
    runnable = model.with_structured_output(schema, method="function_calling")
    _structured[key] = (model, runnable)
    if len(_structured) > _STRUCTURED_CACHE_SIZE:
        with contextlib.suppress(KeyError):
            _structured.popitem(last=False)
    return runnable


async def call_structured(
    model: BaseChatModel, schema: type[SchemaT], messages: list[Any]
) -> StructuredReply:
    """Ask ``model`` for ``schema`` via tool calling; parse failures come back as ``error``.

    The model's own ``with_structured_output`` binds the schema (the provider's tool choice,
    strictness and trace metadata), and the call needs the raw reply too, for its tokens.
    ``include_raw=True`` would give both, through a parallel map, an assign and a fallback
    around the call: about 2.5 ms of CPU per call on the bench machine, where the
    `ChatOpenAI` client's own work is about 4 ms. So the bound model and its parser, the two
    steps ``with_structured_output`` returns, are called one after the other; a model whose
    structured runnable has another shape goes the ``include_raw=True`` way. Either way a
    parser's exception is reported as the reply's ``error``, as ``include_raw=True`` does,
    and so is a reply with more than one tool call (the parser would keep the first).

    Provider errors (network, rate limit, 5xx) propagate to the caller (`ask_model`), which
    retries, fails over, or falls back to the rules model and records that it did.
    """
    structured = structured_runnable(model, schema)
    if isinstance(structured, RunnableSequence) and len(structured.steps) == 2:
        bound, parser = structured.steps
        raw = await bound.ainvoke(messages)
        extra_calls = _extra_calls_error(schema, raw)
        if extra_calls is not None:
            return StructuredReply(None, extra_calls, raw)
        try:
            # In process: an output parser's ainvoke would hand the parse to a thread.
            parsed = parser.invoke(raw)
        except Exception as exc:
            return StructuredReply(None, f"output did not match the schema: {exc}", raw)
    else:
        with_raw = model.with_structured_output(schema, method="function_calling", include_raw=True)
        reply: dict[str, Any] = await with_raw.ainvoke(messages)  # type: ignore[assignment]
        raw = reply.get("raw")
        extra_calls = _extra_calls_error(schema, raw)
        if extra_calls is not None:
            return StructuredReply(None, extra_calls, raw)
        if reply.get("parsing_error") is not None:
            return StructuredReply(
                None, f"output did not match the schema: {reply['parsing_error']}", raw
            )
        parsed = reply.get("parsed")
    if parsed is None:
        return StructuredReply(None, _no_structure_error(schema, raw), raw)
    if not isinstance(parsed, schema):
        try:
            parsed = schema.model_validate(parsed)
        except ValueError as exc:
            return StructuredReply(None, f"output did not match the schema: {exc}", raw)
    return StructuredReply(parsed, None, raw)


def repair_messages(raw: BaseMessage | None, repair: str) -> list[BaseMessage]:
    """The rejected reply and the rejection, in a form every chat API accepts.

    An assistant message with tool calls must be answered by one tool message per call id;
    that includes calls whose arguments were not valid JSON, which the OpenAI client sends
    back as tool calls too.
    """
    if not isinstance(raw, AIMessage):
        return [HumanMessage(repair)]
    ids = [c.get("id") for c in raw.tool_calls] + [c.get("id") for c in raw.invalid_tool_calls]
    answered = [ToolMessage(content=repair, tool_call_id=str(i)) for i in ids if i]
    return [raw, *answered] if answered else [raw, HumanMessage(repair)]


# --- failure classes ---------------------------------------------------------------------

RETRYABLE_STATUS = frozenset({408, 409, 429})
"""4xx statuses that are transient (the OpenAI SDK retries these too), besides every 5xx."""


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a transient provider failure worth another attempt.

    Rate limits, timeouts (ours or the client's), 5xx and connection errors are; 4xx
    validation, authentication, permission and not-found errors are not.
    """
    if isinstance(exc, openai.APIConnectionError | TimeoutError | ConnectionError):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return False


def is_client_error(exc: BaseException) -> bool:
    """A 4xx the provider answered deliberately: the model is up, the request is refused."""
    return isinstance(exc, openai.APIStatusError) and not is_retryable(exc)


FAULT_URL = "https://payables-fault-injection.invalid/v1/chat/completions"


def injected_error(kind: str, model: str) -> Exception:
    """The exception the `openai` client raises for fault ``kind``, marked as injected."""
    import httpx2  # what the openai client builds its exceptions from

    request = httpx2.Request("POST", FAULT_URL)
    text = f"injected by PAYABLES_FAULTS ({kind}) for model {model}"
    if kind == "timeout":
        return openai.APITimeoutError(request=request)
    if kind == "connection":
        return openai.APIConnectionError(message=f"Connection error: {text}", request=request)
    statuses: dict[str, tuple[int, type[openai.APIStatusError]]] = {
        "rate_limit": (429, openai.RateLimitError),
        "server_error": (500, openai.InternalServerError),
        "bad_request": (400, openai.BadRequestError),
    }
    if kind not in statuses:
        raise ValueError(f"no exception for model fault {kind!r}")
    status, cls = statuses[kind]
    response = httpx2.Response(status, request=request)
    return cls(f"Error code: {status} - {text}", response=response, body=None)


def malformed_reply(schema: type[BaseModel], model: str) -> StructuredReply:
    """An unusable reply, as a model returns when its tool-call arguments are broken JSON."""
    raw = AIMessage(
        content="",
        invalid_tool_calls=[
            {
                "name": schema.__name__,
                "args": '{"truncated": ',
                "id": "call_fault_injected",
                "error": f"injected by PAYABLES_FAULTS (malformed) for model {model}",
                "type": "invalid_tool_call",
            }
        ],
    )
    return StructuredReply(None, _no_structure_error(schema, raw), raw)


# --- usage accounting ----------------------------------------------------------------------


def price_per_1k(model: str, prices: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """USD per 1k tokens (input, output); an unlisted model is charged the highest prices.

    Overestimating an unknown model keeps the cost budget a ceiling rather than a guess.
    """
    if model in prices:
        return prices[model]
    if not prices:
        return (0.0, 0.0)
    return (max(p[0] for p in prices.values()), max(p[1] for p in prices.values()))


def tokens_of(raw: BaseMessage | None) -> tuple[int, int]:
    """(input, output) tokens from a reply's usage metadata; (0, 0) when it has none."""
    usage = raw.usage_metadata if isinstance(raw, AIMessage) else None
    if not usage:
        return (0, 0)
    return (int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))


def charge(model: str, context: Context, raw: BaseMessage | None) -> None:
    """Charge one model call attempt to the current meter."""
    input_tokens, output_tokens = tokens_of(raw)
    price_in, price_out = price_per_1k(model, context.model_prices)
    cost = input_tokens / 1000 * price_in + output_tokens / 1000 * price_out
    current_meter().charge(model, input_tokens, output_tokens, cost)


# --- retries ---------------------------------------------------------------------------------


# The pydantic mypy plugin's synthesized __init__ clashes with RunnableBinding's `kwargs` field.
class JitteredRetry(RunnableRetry[Any, Any]):  # type: ignore[no-redef]
    """`RunnableRetry` with the backoff built from tenacity's current parameter names.

    ``with_retry(exponential_jitter_params={"initial": ...})`` hands ``initial`` to tenacity,
    which deprecates it (a DeprecationWarning on every call), and the params type drops
    ``multiplier``. This builds the same wait: ``initial * 2**n + uniform(0, initial)``,
    capped at ``max_backoff_s``; jitter proportional to the first delay, so a zero delay
    (tests) really waits zero.
    """

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    @property
    def _kwargs_retrying(self) -> dict[str, Any]:
        retrying = super()._kwargs_retrying
        retrying["wait"] = wait_exponential_jitter(
            multiplier=self.initial_backoff_s,
            max=self.max_backoff_s,
            jitter=self.initial_backoff_s,
        )
        return retrying


def with_backoff(runnable: Runnable[Any, Any], context: Context) -> Runnable[Any, Any]:
    """``runnable`` retried on transient provider errors, per the run's settings."""
    return JitteredRetry(
        bound=runnable,
        kwargs={},
        config={},
        retry_exception_types=is_retryable,
        wait_exponential_jitter=False,  # the wait comes from JitteredRetry
        max_attempt_number=context.model_max_retries + 1,
        initial_backoff_s=context.retry_initial_s,
        max_backoff_s=context.retry_max_s,
    )


class _Refused(Exception):
    """An attempt was not made: the budget or the breaker said no."""

    def __init__(self, reason: str, *, budget: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.budget = budget


@dataclass
class _Candidate:
    """One model in the chain, and what happened when it was tried."""

    name: str
    model: BaseChatModel | None
    errors: list[BaseException] = field(default_factory=list)
    refused: str | None = None

    def reason(self) -> str:
        """Short: why this model did not serve (for paths and ``degraded``)."""
        if self.model is None:
            return f"model {self.name} not offered by the provider"
        counts: dict[str, int] = {}
        for exc in self.errors:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
        failed = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in counts.items())
        if self.refused and failed:
            return f"model {self.name} failed: {failed}; then {self.refused}"
        if self.refused:
            return f"model {self.name} {self.refused}"
        return f"model {self.name} failed: {failed}"

    def details(self) -> str:
        """Long: every distinct error with its message (for notes)."""
        seen: dict[str, None] = {}
        for exc in self.errors:
            seen.setdefault(f"{type(exc).__name__}: {_clip(str(exc))}", None)
        parts = list(seen)
        if self.refused:
            parts.append(self.refused)
        if self.model is None:
            parts.append("not offered by the provider")
        return "; ".join(parts)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"


def _candidates(provider: ModelProvider, name: str, context: Context) -> list[_Candidate]:
    """The fallback chain after the role's model ``name``: configured order, no repeats."""
    chain: list[_Candidate] = []
    seen = {name, RULES_MODEL}
    for fallback in context.model_fallbacks:
        if fallback in seen:
            continue
        seen.add(fallback)
        model = (
            provider.named(fallback, context)
            if isinstance(provider, FallbackModelProvider)
            else None
        )
        chain.append(_Candidate(fallback, model))
    return chain


def _breaker(name: str, context: Context) -> CircuitBreaker:
    return BREAKERS.get(
        f"model:{name}",
        failure_threshold=context.breaker_failure_threshold,
        cooldown_s=context.breaker_cooldown_s,
    )


def _attempt(
    candidate: _Candidate, context: Context, schema: type[BaseModel]
) -> Callable[[list[Any]], Any]:
    """One guarded attempt: budget, breaker, injected fault, timeout, call, charge."""
    model = candidate.model
    if model is None:
        raise ValueError(f"model {candidate.name} is not offered; it cannot be called")
    name = candidate.name
    breaker = _breaker(name, context)

    async def attempt(messages: list[Any]) -> StructuredReply:
        meter = current_meter()
        refusal = meter.refusal()
        if refusal is not None:
            raise _Refused(refusal, budget=True)
        admission = breaker.admit()
        if admission is BreakerAdmission.REFUSED:
            raise _Refused(f"circuit open (retry in {breaker.retry_after_s():.0f}s)", budget=False)
        trial = admission is BreakerAdmission.TRIAL
        if meter.start_call is not None:
            try:
                refusal = await meter.start_call()
            except BaseException:
                if trial:
                    breaker.release_trial()
                raise
            if refusal is not None:
                if trial:
                    breaker.release_trial()
                raise _Refused(refusal, budget=True)
        fault = FAULTS.draw("model", name)
        reply: StructuredReply | None = None
        try:
            deadline = asyncio.timeout(context.model_timeout_s)
            try:
                async with deadline:
                    if fault == "malformed":
                        reply = malformed_reply(schema, name)
                    elif fault is not None:
                        raise injected_error(fault, name)
                    else:
                        reply = await call_structured(model, schema, messages)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise
                raise TimeoutError(f"no reply within {context.model_timeout_s}s") from exc
        except Exception as exc:
            candidate.errors.append(exc)
            log.warning("model %s attempt failed: %r", name, exc)
            if is_client_error(exc):
                breaker.record_success()  # it answered: up, but refusing this request
            else:
                breaker.record_failure()
            raise
        except BaseException:  # cancelled from outside: never leave a half-open trial stuck
            if trial:
                breaker.record_failure()
            raise
        finally:
            charge(name, context, reply.raw if reply is not None else None)
        breaker.record_success()  # a reply, usable or not, means the model is up
        return reply

    return attempt


@dataclass(frozen=True)
class ModelAnswer:
    """A role's structured answer, or why the rules model serves instead.

    ``path`` is what the run records in ``model_path`` (``rules``, ``model:<name>``,
    ``model:<name> (repaired Nx)`` or ``rules (fallback: ...)``); ``note`` says what went
    wrong, for the run's notes; ``degraded`` is set when the role's model could not serve
    (unavailable, or the budget refused the call) and another model or the rules model did,
    for the run's ``degraded`` list.
    """

    parsed: BaseModel | None
    path: str
    note: str | None = None
    raw: BaseMessage | None = None
    provider_failed: bool = False
    """No model could be asked (unavailable or refused); invalid output is not this."""
    degraded: str | None = None
    model: str | None = None
    """The model that answered, when one did."""


async def ask_model(
    provider: ModelProvider,
    role: Role,
    context: Context,
    schema: type[SchemaT],
    messages: list[Any],
    *,
    repairs: int = 0,
) -> ModelAnswer:
    """Ask the role's model (then its fallbacks) for ``schema``; the rules model is the floor.

    ``repairs``: how many times unusable output is sent back to the same model with the
    validation error before the rules model serves. Callers that validate more than the
    schema (the planner checks plans against the tool gate) pass 0 and run their own loop.
    """
    FAULTS.validate_environment()  # a malformed PAYABLES_FAULTS is a ConfigError, not an outage
    chosen = provider.chat(role, context)
    if chosen is None:
        return ModelAnswer(None, RULES_MODEL)
    primary = _Candidate(*chosen)
    tried: list[_Candidate] = []
    for candidate in [primary, *_candidates(provider, primary.name, context)]:
        tried.append(candidate)
        if candidate.model is None:
            continue
        attempt_once = RunnableLambda(
            _attempt(candidate, context, schema), name=f"model_call:{candidate.name}"
        )
        call = with_backoff(attempt_once, context)
        conversation = list(messages)
        errors: list[str] = []
        for attempt in range(1, repairs + 2):
            try:
                reply: StructuredReply = await call.ainvoke(conversation)
            except _Refused as refused:
                if refused.budget:
                    return _budget_answer(role, tried, refused.reason)
                candidate.refused = refused.reason
                break
            except Exception as exc:
                if not any(exc is seen for seen in candidate.errors):
                    raise  # not the model failing: our own code or settings; surface it
                break  # the model failed; try the next one
            if reply.parsed is not None:
                return _served(role, tried, candidate, reply, errors)
            errors.append(_clip(reply.error or "unusable output"))
            if attempt <= repairs:
                text = OUTPUT_REPAIR.format(errors=errors[-1], tool=schema.__name__)
                conversation.extend(repair_messages(reply.raw, text))
                continue
            return _invalid(role, tried, candidate, reply, errors)
    return _unavailable(role, tried)


def _served(
    role: Role,
    tried: list[_Candidate],
    candidate: _Candidate,
    reply: StructuredReply,
    errors: list[str],
) -> ModelAnswer:
    path = f"model:{candidate.name}" + (f" (repaired {len(errors)}x)" if errors else "")
    notes: list[str] = []
    if candidate.errors:
        notes.append(f"{role} model {candidate.name} retried after: {candidate.details()}")
    if errors:
        replies = "reply" if len(errors) == 1 else "replies"
        notes.append(
            f"{role} model {candidate.name}: {len(errors)} unusable {replies} repaired "
            f"({errors[0]})"
        )
    degraded = None
    if len(tried) > 1:
        skipped = [c for c in tried if c is not candidate]
        reasons = "; ".join(c.reason() for c in skipped)
        degraded = f"{role}: {reasons}; fallback model {candidate.name} served"
        notes.insert(0, f"{role}: " + "; ".join(f"{c.name}: {c.details()}" for c in skipped))
    return ModelAnswer(
        reply.parsed,
        path,
        "; ".join(notes) or None,
        raw=reply.raw,
        degraded=degraded,
        model=candidate.name,
    )


def _invalid(
    role: Role,
    tried: list[_Candidate],
    candidate: _Candidate,
    reply: StructuredReply,
    errors: list[str],
) -> ModelAnswer:
    attempts = len(errors)
    suffix = f" after {attempts} attempts" if attempts > 1 else ""
    invalid = f"model {candidate.name} output invalid{suffix}"
    note = f"{role} model {candidate.name}: {errors[-1]}"
    degraded = None
    skipped = [c for c in tried if c is not candidate]
    if skipped:  # the role's model could not serve either: that is an outage, say so
        reasons = "; ".join(c.reason() for c in skipped)
        invalid = f"{reasons}; {invalid}"
        note = f"{role}: " + "; ".join(f"{c.name}: {c.details()}" for c in skipped) + f"; {note}"
        degraded = (
            f"{role}: {reasons}; fallback model {candidate.name} output invalid; rules model served"
        )
    return ModelAnswer(
        None,
        f"rules (fallback: {invalid})",
        note,
        raw=reply.raw,
        degraded=degraded,
        model=candidate.name,
    )


def _unavailable(role: Role, tried: list[_Candidate]) -> ModelAnswer:
    reasons = "; ".join(c.reason() for c in tried)
    details = "; ".join(f"{c.name}: {c.details()}" for c in tried)
    if len(tried) == 1:
        note = f"{role} model {tried[0].name} failed ({tried[0].details()})"
    else:
        note = f"{role} models failed ({details})"
    return ModelAnswer(
        None,
        f"rules (fallback: {reasons})",
        note,
        provider_failed=True,
        degraded=f"{role}: models unavailable ({reasons}); rules model served",
    )


def _budget_answer(role: Role, tried: list[_Candidate], refusal: str) -> ModelAnswer:
    earlier = [c.reason() for c in tried if c.errors or c.model is None]
    reasons = "; ".join([*earlier, f"budget: {refusal}"])
    return ModelAnswer(
        None,
        f"rules (fallback: {reasons})",
        f"{role}: no model call made, {refusal}",
        provider_failed=True,
        degraded=f"{role}: {refusal}; rules model served",
    )
