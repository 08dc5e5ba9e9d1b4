"""`runtime.models.ask_model` under failure: retries, timeouts, fallbacks, breakers, repairs.

Every model is a scripted fake raising the `openai` client's own exception classes; the
breaker clock is injected, backoff sleeps are recorded instead of waited, and no assertion
depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, TypedDict

import httpx2
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

from bench.models import InProcessChatOpenAI, tool_call_completion
from nodes.respond import Summary
from runtime import models as models_module
from runtime.breakers import BREAKERS, BreakerBoard, BreakerState
from runtime.context import DEFAULT_MODEL_PRICES, Context
from runtime.errors import ConfigError
from runtime.faults import ENV_VAR as FAULTS_VAR
from runtime.faults import parse_faults
from runtime.models import (
    ModelAnswer,
    OpenAIModelProvider,
    ask_model,
    call_structured,
    injected_error,
    is_retryable,
    price_per_1k,
    repair_messages,
    structured_runnable,
)
from runtime.rules_model import RouteDecision
from runtime.usage import Meter, metering
from tests.fakes import (
    ScriptedChatModel,
    ScriptedModels,
    Slow,
    bad_request_error,
    connection_error,
    invalid_tool_reply,
    rate_limit_error,
    server_error,
    timeout_error,
    tool_reply,
)

MESSAGES: list[Any] = [SystemMessage("Route the request."), HumanMessage("Validate INV-1002")]
ROUTE = {"route": "invoice_processing", "confidence": 0.9, "invoice_ids": ["INV-1002"]}


def good(**kwargs: Any) -> AIMessage:
    return tool_reply("RouteDecision", ROUTE, **kwargs)


def ctx(**overrides: Any) -> Context:
    """Settings for fast, deterministic tests: no backoff wait, two retries, no fallbacks."""
    settings: dict[str, Any] = {
        "retry_initial_s": 0.0,
        "model_max_retries": 2,
        "model_fallbacks": (),
        "breaker_failure_threshold": 5,
        "breaker_cooldown_s": 30.0,
        "max_plan_repairs": 2,
    }
    settings.update(overrides)
    return Context(**settings)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _fresh_breakers_and_no_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Breakers are process-wide and faults come from the environment: isolate both."""
    monkeypatch.delenv(FAULTS_VAR, raising=False)
    BREAKERS.reset()
    yield
    BREAKERS.reset()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A breaker board on a hand-moved clock, in place of the process-wide one."""
    fake = Clock()
    monkeypatch.setattr(models_module, "BREAKERS", BreakerBoard(clock=fake))
    return fake


async def ask(
    provider: ScriptedModels, context: Context, *, repairs: int = 0, meter: Meter | None = None
) -> tuple[ModelAnswer, Meter]:
    meter = meter if meter is not None else Meter()
    with metering(meter):
        answer = await ask_model(
            provider, "router", context, RouteDecision, list(MESSAGES), repairs=repairs
        )
    return answer, meter


# --- retries ---------------------------------------------------------------------------------

TRANSIENT = [
    pytest.param(rate_limit_error, id="rate-limit-429"),
    pytest.param(timeout_error, id="client-timeout"),
    pytest.param(server_error, id="server-error-500"),
    pytest.param(lambda: server_error("Service unavailable", status=503), id="server-error-503"),
    pytest.param(connection_error, id="connection"),
    pytest.param(lambda: TimeoutError("read timed out"), id="builtin-timeout"),
]


@pytest.mark.parametrize("error", TRANSIENT)
async def test_transient_errors_are_retried_until_the_model_answers(error: Any) -> None:
    model = ScriptedChatModel([error(), error(), good()])
    answer, meter = await ask(ScriptedModels(router=model), ctx())
    assert isinstance(answer.parsed, RouteDecision)
    assert answer.path == "model:scripted-router"
    assert answer.degraded is None
    assert model.script == []
    assert meter.model_calls == 3  # every attempt is a model call for the budget
    assert answer.note is not None and "retried after" in answer.note


@pytest.mark.parametrize("error", TRANSIENT)
async def test_retries_stop_at_the_configured_count(error: Any) -> None:
    model = ScriptedChatModel([error(), error(), error(), good()])
    answer, meter = await ask(ScriptedModels(router=model), ctx(model_max_retries=2))
    assert answer.parsed is None
    assert answer.provider_failed
    assert len(model.script) == 1  # 1 + 2 retries, never a fourth attempt
    assert meter.model_calls == 3
    assert answer.path.startswith("rules (fallback: model scripted-router failed: ")
    assert f"{type(error()).__name__} x3" in answer.path
    assert answer.degraded == (
        f"router: models unavailable (model scripted-router failed: {type(error()).__name__} "
        "x3); rules model served"
    )


async def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(seconds: float, *args: Any, **kwargs: Any) -> Any:
        waits.append(seconds)
        return await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    model = ScriptedChatModel([rate_limit_error() for _ in range(4)])
    context = ctx(model_max_retries=3, retry_initial_s=0.2, retry_max_s=0.5)
    answer, _ = await ask(ScriptedModels(router=model), context)
    assert answer.provider_failed
    assert len(waits) == 3  # a wait between attempts, none after the last
    assert 0.2 <= waits[0] <= 0.4  # 0.2 + jitter in [0, 0.2]
    assert 0.4 <= waits[1] <= 0.5  # 0.4 + jitter, capped
    assert waits[2] == 0.5  # 0.8 + jitter, capped


def test_which_errors_are_retryable() -> None:
    assert is_retryable(rate_limit_error())
    assert is_retryable(timeout_error())
    assert is_retryable(connection_error())
    assert is_retryable(server_error(status=502))
    assert is_retryable(TimeoutError())
    assert is_retryable(ConnectionResetError())
    assert not is_retryable(bad_request_error())
    assert not is_retryable(ValueError("a bug, not an outage"))


async def test_a_bad_request_is_not_retried_and_does_not_trip_the_breaker(clock: Clock) -> None:
    model = ScriptedChatModel([bad_request_error("Invalid 'messages[1]'"), good()])
    context = ctx(breaker_failure_threshold=1)
    answer, meter = await ask(ScriptedModels(router=model), context)
    assert answer.provider_failed
    assert len(model.script) == 1  # one attempt only
    assert meter.model_calls == 1
    assert "BadRequestError" in answer.path
    assert answer.note is not None and "Invalid 'messages[1]'" in answer.note
    assert models_module.BREAKERS.snapshot() == {"model:scripted-router": "closed"}


# --- per-call timeout ------------------------------------------------------------------------


async def test_a_stalled_call_times_out_and_the_retry_answers() -> None:
    model = ScriptedChatModel([Slow(30.0, good()), good()])
    answer, meter = await ask(
        ScriptedModels(router=model), ctx(model_timeout_s=0.05, model_max_retries=1)
    )
    assert isinstance(answer.parsed, RouteDecision)
    assert model.script == []
    assert meter.model_calls == 2
    assert answer.note is not None and "TimeoutError" in answer.note


async def test_a_model_that_always_stalls_falls_back_to_rules() -> None:
    model = ScriptedChatModel([Slow(30.0, good()), Slow(30.0, good())])
    answer, _ = await ask(
        ScriptedModels(router=model), ctx(model_timeout_s=0.05, model_max_retries=1)
    )
    assert answer.provider_failed
    assert "TimeoutError x2" in answer.path


# --- fallbacks -----------------------------------------------------------------------------


async def test_the_next_configured_model_serves_when_the_first_is_down() -> None:
    primary = ScriptedChatModel([rate_limit_error() for _ in range(3)])
    backup = ScriptedChatModel([good()])
    provider = ScriptedModels(router=primary, fallbacks={"backup": backup})
    answer, meter = await ask(provider, ctx(model_fallbacks=("backup",)))
    assert isinstance(answer.parsed, RouteDecision)
    assert answer.path == "model:backup"
    assert answer.model == "backup"
    assert answer.degraded == (
        "router: model scripted-router failed: RateLimitError x3; fallback model backup served"
    )
    assert meter.models == {"scripted-router": 3, "backup": 1}


async def test_a_fallback_whose_output_stays_unusable_still_reports_the_outage() -> None:
    """The role's model is down and its fallback only answers garbage: the rules model
    serves, and the path and ``degraded`` say the role's model was unavailable too."""
    primary = ScriptedChatModel([server_error() for _ in range(3)])
    unusable = tool_reply("RouteDecision", {"confidence": 0.9})
    backup = ScriptedChatModel([unusable, unusable])
    provider = ScriptedModels(router=primary, fallbacks={"backup": backup})
    answer, meter = await ask(provider, ctx(model_fallbacks=("backup",)), repairs=1)
    assert answer.parsed is None
    assert meter.models == {"scripted-router": 3, "backup": 2}
    assert answer.path == (
        "rules (fallback: model scripted-router failed: InternalServerError x3; "
        "model backup output invalid after 2 attempts)"
    )
    assert answer.degraded == (
        "router: model scripted-router failed: InternalServerError x3; "
        "fallback model backup output invalid; rules model served"
    )
    assert answer.note is not None
    assert "The server had an error" in answer.note and "Field required" in answer.note


async def test_a_bad_request_fails_over_without_a_retry() -> None:
    primary = ScriptedChatModel([bad_request_error("context_length_exceeded")])
    backup = ScriptedChatModel([good()])
    provider = ScriptedModels(router=primary, fallbacks={"backup": backup})
    answer, _ = await ask(provider, ctx(model_fallbacks=("backup",)))
    assert answer.path == "model:backup"
    assert primary.script == [] and backup.script == []


async def test_fallbacks_skip_rules_repeats_and_the_role_model() -> None:
    primary = ScriptedChatModel([server_error()])
    backup = ScriptedChatModel([server_error()])
    provider = ScriptedModels(router=primary, fallbacks={"backup": backup})
    context = ctx(
        model_max_retries=0, model_fallbacks=("rules", "scripted-router", "backup", "backup")
    )
    answer, meter = await ask(provider, context)
    assert meter.models == {"scripted-router": 1, "backup": 1}
    assert answer.path == (
        "rules (fallback: model scripted-router failed: InternalServerError; "
        "model backup failed: InternalServerError)"
    )


async def test_a_fallback_the_provider_does_not_offer_is_reported() -> None:
    primary = ScriptedChatModel([server_error()])
    answer, _ = await ask(
        ScriptedModels(router=primary), ctx(model_max_retries=0, model_fallbacks=("ghost",))
    )
    assert answer.provider_failed
    assert "model ghost not offered by the provider" in answer.path


async def test_the_rules_role_never_calls_a_model() -> None:
    answer, meter = await ask(ScriptedModels(), ctx(model_fallbacks=("backup",)))
    assert answer == ModelAnswer(None, "rules")
    assert meter.model_calls == 0


# --- circuit breakers ----------------------------------------------------------------------


async def test_the_breaker_opens_after_the_threshold_and_then_skips_the_model(
    clock: Clock,
) -> None:
    model = ScriptedChatModel([server_error(), server_error(), good()])
    provider = ScriptedModels(router=model)
    context = ctx(model_max_retries=0, breaker_failure_threshold=2, breaker_cooldown_s=30.0)
    for _ in range(2):
        answer, _ = await ask(provider, context)
        assert answer.provider_failed
    assert models_module.BREAKERS.snapshot() == {"model:scripted-router": "open"}

    answer, meter = await ask(provider, context)
    assert len(model.script) == 1  # no call while open
    assert meter.model_calls == 0
    assert answer.path == "rules (fallback: model scripted-router circuit open (retry in 30s))"
    assert answer.degraded == (
        "router: models unavailable (model scripted-router circuit open (retry in 30s)); "
        "rules model served"
    )


async def test_an_open_breaker_half_opens_after_the_cooldown_and_a_good_trial_closes_it(
    clock: Clock,
) -> None:
    model = ScriptedChatModel([server_error(), good(), good()])
    provider = ScriptedModels(router=model)
    context = ctx(model_max_retries=0, breaker_failure_threshold=1, breaker_cooldown_s=30.0)
    await ask(provider, context)
    breaker = models_module.BREAKERS.get(
        "model:scripted-router", failure_threshold=1, cooldown_s=30
    )
    assert breaker.state is BreakerState.OPEN

    clock.now += 29.0
    answer, _ = await ask(provider, context)
    assert "circuit open" in answer.path and len(model.script) == 2

    clock.now += 1.0
    assert breaker.state is BreakerState.HALF_OPEN
    answer, _ = await ask(provider, context)
    assert answer.path == "model:scripted-router"
    assert breaker.state is BreakerState.CLOSED
    answer, _ = await ask(provider, context)
    assert answer.path == "model:scripted-router"


async def test_a_failed_half_open_trial_reopens_the_breaker_at_once(clock: Clock) -> None:
    model = ScriptedChatModel([server_error(), server_error(), server_error(), good()])
    provider = ScriptedModels(router=model)
    # Two retries allowed, but after the failed trial the breaker refuses the retries.
    context = ctx(model_max_retries=2, breaker_failure_threshold=1, breaker_cooldown_s=10.0)
    await ask(provider, context)  # first attempt fails and opens; retries are refused
    assert len(model.script) == 3
    clock.now += 10.0
    answer, _ = await ask(provider, context)
    assert len(model.script) == 2  # exactly one trial call
    assert answer.path == (
        "rules (fallback: model scripted-router failed: InternalServerError; "
        "then circuit open (retry in 10s))"
    )
    assert models_module.BREAKERS.snapshot() == {"model:scripted-router": "open"}


async def test_an_open_breaker_sends_the_call_straight_to_the_fallback(clock: Clock) -> None:
    primary = ScriptedChatModel([server_error()])
    backup = ScriptedChatModel([good(), good()])
    provider = ScriptedModels(router=primary, fallbacks={"backup": backup})
    context = ctx(model_max_retries=0, breaker_failure_threshold=1, model_fallbacks=("backup",))
    await ask(provider, context)
    answer, meter = await ask(provider, context)
    assert answer.path == "model:backup"
    assert meter.models == {"backup": 1}
    assert answer.degraded is not None and "circuit open" in answer.degraded


async def test_a_cancelled_half_open_trial_does_not_leave_the_breaker_stuck(
    clock: Clock,
) -> None:
    in_flight = asyncio.Event()
    model = ScriptedChatModel([server_error(), Slow(30.0, good(), in_flight), good()])
    provider = ScriptedModels(router=model)
    context = ctx(model_max_retries=0, breaker_failure_threshold=1, breaker_cooldown_s=5.0)
    await ask(provider, context)
    clock.now += 5.0
    task = asyncio.ensure_future(ask(provider, context))
    await in_flight.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    breaker = models_module.BREAKERS.get("model:scripted-router", failure_threshold=1, cooldown_s=5)
    assert not breaker.trial_in_flight
    clock.now += 5.0
    answer, _ = await ask(provider, context)
    assert answer.path == "model:scripted-router"


# --- malformed output and repairs ---------------------------------------------------------

MALFORMED = [
    pytest.param(
        lambda: invalid_tool_reply("RouteDecision", '{"route": '), "not valid JSON", id="json"
    ),
    pytest.param(
        lambda: tool_reply("RouteDecision", {"route": "invoice_processing", "confidence": 7}),
        "less than or equal to 1",
        id="wrong-schema",
    ),
    pytest.param(lambda: tool_reply("WireMoney", {"to": "X"}), "Unknown tool", id="unknown-tool"),
    pytest.param(
        lambda: tool_reply("RouteDecision", {"confidence": 0.9}),
        "Field required",
        id="missing-args",
    ),
    pytest.param(lambda: AIMessage("invoice_processing"), "no structured output", id="prose"),
    pytest.param(  # two answers that disagree: neither may be picked silently
        lambda: AIMessage(
            content="",
            tool_calls=[
                {"name": "RouteDecision", "args": ROUTE, "id": "call_first"},
                {"name": "RouteDecision", "args": {**ROUTE, "route": "vendor_change"}, "id": "c2"},
            ],
        ),
        "2 tool calls",
        id="two-calls",
    ),
    pytest.param(  # a usable call beside a broken one is not an answer either
        lambda: AIMessage(
            content="",
            tool_calls=[{"name": "RouteDecision", "args": ROUTE, "id": "call_first"}],
            invalid_tool_calls=[
                {
                    "name": "RouteDecision",
                    "args": '{"route": "vendor_ch',
                    "id": "call_broken",
                    "error": "Function arguments are not valid JSON",
                    "type": "invalid_tool_call",
                }
            ],
        ),
        "2 tool calls",
        id="call-and-broken-call",
    ),
]


@pytest.mark.parametrize(("bad", "complaint"), MALFORMED)
async def test_unusable_output_goes_back_to_the_model_and_the_repair_is_used(
    bad: Any, complaint: str
) -> None:
    first = bad()
    model = ScriptedChatModel([first, good()])
    answer, meter = await ask(ScriptedModels(router=model), ctx(), repairs=2)
    assert isinstance(answer.parsed, RouteDecision)
    assert answer.path == "model:scripted-router (repaired 1x)"
    assert answer.degraded is None
    assert meter.model_calls == 2
    second = model.received[1]
    assert second[: len(MESSAGES)] == MESSAGES
    assert second[len(MESSAGES)] == first
    feedback = second[len(MESSAGES) + 1 :]
    assert feedback and complaint in str(feedback[0].content)
    if first.tool_calls or first.invalid_tool_calls:  # every call id is answered
        ids = [c["id"] for c in first.tool_calls] + [c["id"] for c in first.invalid_tool_calls]
        assert [m.tool_call_id for m in feedback if isinstance(m, ToolMessage)] == ids


@pytest.mark.parametrize(("bad", "complaint"), MALFORMED)
async def test_unusable_output_after_the_repair_bound_hands_over_to_rules(
    bad: Any, complaint: str
) -> None:
    model = ScriptedChatModel([bad(), bad(), bad(), good()])
    answer, meter = await ask(ScriptedModels(router=model), ctx(), repairs=2)
    assert answer.parsed is None
    assert not answer.provider_failed  # the model answered; its answers were unusable
    assert answer.path == "rules (fallback: model scripted-router output invalid after 3 attempts)"
    assert answer.note is not None and complaint in answer.note
    assert len(model.script) == 1 and meter.model_calls == 3


async def test_without_repairs_invalid_output_is_returned_for_the_caller_to_handle() -> None:
    bad = tool_reply("RouteDecision", {"confidence": 0.9})
    answer, _ = await ask(ScriptedModels(router=ScriptedChatModel([bad])), ctx(), repairs=0)
    assert answer.path == "rules (fallback: model scripted-router output invalid)"
    assert answer.raw == bad


def test_repair_messages_answer_every_tool_call_id() -> None:
    reply = AIMessage(
        content="",
        tool_calls=[{"name": "A", "args": {}, "id": "call_1"}],
        invalid_tool_calls=[
            {"name": "B", "args": "{", "id": "call_2", "error": "bad", "type": "invalid_tool_call"}
        ],
    )
    messages = repair_messages(reply, "fix it")
    assert messages[0] == reply
    assert [(m.tool_call_id, m.content) for m in messages[1:] if isinstance(m, ToolMessage)] == [
        ("call_1", "fix it"),
        ("call_2", "fix it"),
    ]
    assert repair_messages(AIMessage("prose"), "fix it")[1] == HumanMessage("fix it")


# --- fault injection -----------------------------------------------------------------------

KINDS = [
    ("timeout", openai.APITimeoutError, None),
    ("connection", openai.APIConnectionError, None),
    ("rate_limit", openai.RateLimitError, 429),
    ("server_error", openai.InternalServerError, 500),
    ("bad_request", openai.BadRequestError, 400),
]


@pytest.mark.parametrize(("kind", "cls", "status"), KINDS)
def test_injected_faults_are_the_clients_own_exceptions(
    kind: str, cls: type[Exception], status: int | None
) -> None:
    error = injected_error(kind, "gpt-4o-mini")
    assert type(error) is cls
    if status is not None:
        assert isinstance(error, openai.APIStatusError) and error.status_code == status
    assert is_retryable(error) == (kind != "bad_request")


async def test_an_injected_rate_limit_sends_a_fake_model_to_the_rules_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FAULTS_VAR, "model:rate_limit:1")
    model = ScriptedChatModel([good()])
    answer, meter = await ask(ScriptedModels(router=model), ctx())
    assert model.received == [] and len(model.script) == 1  # never reached
    assert answer.path == "rules (fallback: model scripted-router failed: RateLimitError x3)"
    assert answer.note is not None and "injected by PAYABLES_FAULTS" in answer.note
    assert meter.model_calls == 3


async def test_a_fault_for_one_model_name_leaves_the_fallback_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FAULTS_VAR, "model:scripted-router:connection:1")
    provider = ScriptedModels(
        router=ScriptedChatModel([]), fallbacks={"backup": ScriptedChatModel([good()])}
    )
    answer, _ = await ask(provider, ctx(model_fallbacks=("backup",)))
    assert answer.path == "model:backup"
    assert answer.degraded is not None and "APIConnectionError x3" in answer.degraded


async def test_injected_malformed_output_runs_the_repair_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FAULTS_VAR, "model:malformed:1")
    model = ScriptedChatModel([])
    answer, meter = await ask(ScriptedModels(router=model), ctx(), repairs=2)
    assert model.received == []
    assert answer.path == "rules (fallback: model scripted-router output invalid after 3 attempts)"
    assert answer.note is not None and "not valid JSON" in answer.note
    assert meter.model_calls == 3


async def test_a_malformed_fault_rule_is_a_config_error_not_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FAULTS_VAR, "model:meltdown:1")
    model = ScriptedChatModel([good()])
    with pytest.raises(ConfigError, match="unknown model fault 'meltdown'"):
        await ask(ScriptedModels(router=model), ctx())
    assert model.received == []


def test_a_fault_rule_naming_no_tool_is_refused_not_a_silent_rehearsal() -> None:
    with pytest.raises(ConfigError, match=r"names no tool 'schedule_paymnet'.*schedule_payment"):
        parse_faults("tool:schedule_paymnet:error:1")
    assert parse_faults("tool:*:timeout:0.5,tool:get_invoice:error:1")[1].name == "get_invoice"


async def test_a_failure_outside_the_model_call_is_not_mistaken_for_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_draw(target: str, name: str) -> str | None:
        raise RuntimeError("bug in our own code")

    monkeypatch.setattr(models_module.FAULTS, "draw", broken_draw)
    with pytest.raises(RuntimeError, match="bug in our own code"):
        await ask(ScriptedModels(router=ScriptedChatModel([good()])), ctx())


async def test_faults_reach_the_real_openai_provider_without_a_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator rehearsing an outage against ChatOpenAI: no request leaves the process.

    The suite's autouse guard turns any real ChatOpenAI generation into an AssertionError,
    so an attempt that slipped past the fault would show up in the path.
    """
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    monkeypatch.setenv(FAULTS_VAR, "model:server_error:1")
    provider = OpenAIModelProvider()
    context = ctx(router_model="gpt-4o-mini", model_timeout_s=12.0, model_fallbacks=("gpt-4o",))
    with metering(Meter()) as meter:
        answer = await ask_model(provider, "router", context, RouteDecision, list(MESSAGES))
    assert answer.path == (
        "rules (fallback: model gpt-4o-mini failed: InternalServerError x3; "
        "model gpt-4o failed: InternalServerError x3)"
    )
    assert meter.models == {"gpt-4o-mini": 3, "gpt-4o": 3}
    chosen = provider.chat("router", context)
    assert chosen is not None
    client: Any = chosen[1]
    assert client.max_retries == 0  # our retries only; the SDK's would multiply them
    assert client.request_timeout == 12.0


# --- the structured call through the real client ---------------------------------------------


def completion(arguments: str, *, usage: tuple[int, int] = (50, 10)) -> dict[str, Any]:
    """An OpenAI chat completion carrying one RouteDecision tool call with ``arguments``."""
    return tool_call_completion("gpt-4o-mini", "RouteDecision", arguments, usage)


class OpenAIServer:
    """Answers chat completion requests with ``replies`` in order; keeps the request bodies."""

    def __init__(self, *replies: dict[str, Any]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        return httpx2.Response(200, json=self.replies.pop(0))

    def model(self) -> ChatOpenAI:
        return InProcessChatOpenAI(
            model="gpt-4o-mini",
            api_key="sk-test-not-a-key",
            max_retries=0,
            http_async_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle)),
        )


async def test_the_openai_client_is_asked_for_the_schema_tool_and_its_reply_is_charged() -> None:
    server = OpenAIServer(completion(json.dumps(ROUTE), usage=(50, 10)))
    models = ScriptedModels(router=server.model())  # type: ignore[arg-type]
    context = ctx(model_prices={"scripted-router": (0.001, 0.002)})
    answer, meter = await ask(models, context)
    assert isinstance(answer.parsed, RouteDecision)
    assert answer.parsed.invoice_ids == ["INV-1002"]
    assert answer.path == "model:scripted-router"
    (sent,) = server.requests
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["RouteDecision"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "RouteDecision"}}
    assert sent["parallel_tool_calls"] is False
    assert (meter.model_calls, meter.input_tokens, meter.output_tokens) == (1, 50, 10)
    assert meter.cost_usd == pytest.approx(50 / 1000 * 0.001 + 10 / 1000 * 0.002)


class StreamingServer(OpenAIServer):
    """Answers as an OpenAI-compatible local server does (vLLM, llama.cpp, Ollama).

    A streamed reply carries its token usage only when the request asks for it with
    ``stream_options.include_usage``; a plain reply always carries it.
    """

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        reply = self.replies.pop(0)
        if not body.get("stream"):
            return httpx2.Response(200, json=reply)
        head = {k: reply[k] for k in ("id", "created", "model")}
        (call,) = reply["choices"][0]["message"]["tool_calls"]
        delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]}
        chunks = [
            {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**head, "choices": [], "usage": reply["usage"]})
        events = "".join(
            f"data: {json.dumps({**c, 'object': 'chat.completion.chunk'})}\n\n" for c in chunks
        )
        return httpx2.Response(
            200,
            content=(events + "data: [DONE]\n\n").encode(),
            headers={"content-type": "text/event-stream"},
        )


class DoneState(TypedDict):
    done: bool


async def test_a_local_servers_tokens_are_charged_when_the_graph_streams_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The LangGraph server and Studio stream with ``stream_mode="messages"``, which makes a
    chat model stream its reply. `ChatOpenAI` asks for usage in a stream only from OpenAI
    itself, not behind `OPENAI_BASE_URL`: the provider's client must still report the
    tokens, or the token and cost budgets (and the tenant's daily cap) see nothing."""
    server = StreamingServer(completion(json.dumps(ROUTE), usage=(500, 50)))

    class LocalServerChatOpenAI(InProcessChatOpenAI):
        def __init__(self, **kwargs: Any) -> None:
            transport = httpx2.MockTransport(server.handle)
            super().__init__(http_async_client=httpx2.AsyncClient(transport=transport), **kwargs)

    monkeypatch.setattr("langchain_openai.ChatOpenAI", LocalServerChatOpenAI)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://vllm.invalid/v1")
    context = ctx(router_model="local-model", model_prices={"local-model": (0.001, 0.002)})
    meter = Meter()
    answers: list[ModelAnswer] = []

    async def route(state: DoneState) -> dict[str, Any]:
        with metering(meter):
            answers.append(
                await ask_model(
                    OpenAIModelProvider(), "router", context, RouteDecision, list(MESSAGES)
                )
            )
        return {"done": True}

    builder = StateGraph(DoneState)
    builder.add_node("route", route)
    builder.add_edge(START, "route")
    builder.add_edge("route", END)
    async for _ in builder.compile().astream({"done": False}, stream_mode="messages"):
        pass
    (answer,) = answers
    assert isinstance(answer.parsed, RouteDecision)
    assert answer.path == "model:local-model"
    assert (meter.model_calls, meter.input_tokens, meter.output_tokens) == (1, 500, 50)
    assert meter.cost_usd == pytest.approx(500 / 1000 * 0.001 + 50 / 1000 * 0.002)


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        pytest.param('{"route": "invoice_processing", "confid', "not valid JSON", id="bad-json"),
        pytest.param('{"confidence": 0.9}', "did not match the schema", id="wrong-schema"),
    ],
)
async def test_unusable_openai_output_is_repaired_and_every_attempt_is_charged(
    arguments: str, complaint: str
) -> None:
    unusable = completion(arguments)
    server = OpenAIServer(unusable, completion(json.dumps(ROUTE)))
    models = ScriptedModels(router=server.model())  # type: ignore[arg-type]
    answer, meter = await ask(models, ctx(), repairs=1)
    assert isinstance(answer.parsed, RouteDecision)
    assert answer.path == "model:scripted-router (repaired 1x)"
    assert meter.model_calls == 2 and meter.input_tokens == 100
    repair = server.requests[1]["messages"][-1]
    (call,) = unusable["choices"][0]["message"]["tool_calls"]
    assert repair["role"] == "tool" and repair["tool_call_id"] == call["id"]
    assert complaint in repair["content"]


def test_a_models_structured_runnable_is_built_once_and_the_cache_stays_bounded() -> None:
    model = OpenAIServer().model()
    first = structured_runnable(model, RouteDecision)
    assert structured_runnable(model, RouteDecision) is first
    assert structured_runnable(model, Summary) is not first
    assert structured_runnable(OpenAIServer().model(), RouteDecision) is not first
    for _ in range(100):
        structured_runnable(ScriptedChatModel([]), RouteDecision)
    assert len(models_module._structured) == models_module._STRUCTURED_CACHE_SIZE
    assert structured_runnable(model, RouteDecision) is not first  # evicted, built anew


class RawOnlyModel(ScriptedChatModel):
    """A model whose structured runnable is not ``model | parser`` unless asked for the raw
    reply too (as a provider's own ``with_structured_output`` may be)."""

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        structured = super().with_structured_output(schema, **kwargs)
        if kwargs.get("include_raw"):
            return structured
        return RunnableLambda(lambda messages: messages) | structured


@pytest.mark.parametrize(
    ("reply", "complaint"),
    [
        pytest.param(lambda: good(usage=(30, 5)), None, id="usable"),
        pytest.param(
            lambda: tool_reply("RouteDecision", {"confidence": 2}),
            "did not match the schema",
            id="unusable",
        ),
        pytest.param(
            lambda: AIMessage(
                content="",
                tool_calls=[
                    {"name": "RouteDecision", "args": ROUTE, "id": "call_a"},
                    {"name": "RouteDecision", "args": ROUTE, "id": "call_b"},
                ],
            ),
            "2 tool calls",
            id="two-calls",
        ),
    ],
)
async def test_a_structured_runnable_of_another_shape_is_called_with_the_raw_reply(
    reply: Any, complaint: str | None
) -> None:
    sent = reply()
    result = await call_structured(RawOnlyModel([sent]), RouteDecision, list(MESSAGES))
    assert result.raw == sent
    assert isinstance(result.parsed, RouteDecision) is (complaint is None)
    if complaint is None:
        assert result.error is None
    else:
        assert result.error is not None and complaint in result.error


# --- budgets and usage -----------------------------------------------------------------------


async def test_tokens_and_cost_are_charged_from_usage_metadata() -> None:
    model = ScriptedChatModel([good(usage=(1000, 500))])
    context = ctx(model_prices={"scripted-router": (0.001, 0.002)})
    _, meter = await ask(ScriptedModels(router=model), context)
    assert (meter.model_calls, meter.input_tokens, meter.output_tokens) == (1, 1000, 500)
    assert meter.cost_usd == pytest.approx(0.001 + 0.001)


async def test_an_unpriced_model_is_charged_at_the_dearest_listed_prices() -> None:
    model = ScriptedChatModel([good(usage=(1000, 1000))])
    _, meter = await ask(ScriptedModels(router=model), ctx(model_prices=dict(DEFAULT_MODEL_PRICES)))
    dearest_in = max(p[0] for p in DEFAULT_MODEL_PRICES.values())
    dearest_out = max(p[1] for p in DEFAULT_MODEL_PRICES.values())
    assert meter.cost_usd == pytest.approx(dearest_in + dearest_out)
    assert price_per_1k("gpt-4o-mini", DEFAULT_MODEL_PRICES) == DEFAULT_MODEL_PRICES["gpt-4o-mini"]


async def test_repairs_and_failed_attempts_are_charged_too() -> None:
    bad = tool_reply("RouteDecision", {"confidence": 0.9}, usage=(300, 40))
    model = ScriptedChatModel([rate_limit_error(), bad, good(usage=(350, 30))])
    _, meter = await ask(ScriptedModels(router=model), ctx(), repairs=1)
    assert meter.model_calls == 3
    assert (meter.input_tokens, meter.output_tokens) == (650, 70)


async def test_an_exhausted_budget_means_no_call_and_the_rules_model_serves() -> None:
    model = ScriptedChatModel([good()])
    answer, meter = await ask(ScriptedModels(router=model), ctx(), meter=Meter(calls_left=0))
    assert model.received == []
    assert meter.model_calls == 0
    assert answer.provider_failed
    assert answer.path == "rules (fallback: budget: model-call budget exhausted)"
    assert answer.degraded == "router: model-call budget exhausted; rules model served"


async def test_the_budget_is_asked_before_every_retry() -> None:
    model = ScriptedChatModel([rate_limit_error(), rate_limit_error(), good()])
    backup = ScriptedChatModel([good()])
    provider = ScriptedModels(router=model, fallbacks={"backup": backup})
    answer, meter = await ask(provider, ctx(model_fallbacks=("backup",)), meter=Meter(calls_left=2))
    assert meter.model_calls == 2
    assert backup.received == []  # a refused budget does not move on to another model
    assert answer.path == (
        "rules (fallback: model scripted-router failed: RateLimitError x2; "
        "budget: model-call budget exhausted)"
    )


async def test_a_cost_budget_refuses_once_spent() -> None:
    model = ScriptedChatModel([invalid_tool_reply("RouteDecision", "{"), good()])
    model.script[0].usage_metadata = {
        "input_tokens": 1000,
        "output_tokens": 0,
        "total_tokens": 1000,
    }
    context = ctx(model_prices={"scripted-router": (1.0, 1.0)})
    answer, meter = await ask(
        ScriptedModels(router=model), context, repairs=2, meter=Meter(cost_left_usd=0.5)
    )
    assert meter.model_calls == 1 and meter.cost_usd == pytest.approx(1.0)
    assert answer.path == "rules (fallback: budget: cost budget exhausted)"
