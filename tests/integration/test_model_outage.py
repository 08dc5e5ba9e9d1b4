"""Whole runs on Postgres while the models fail: the rules model carries the run, and says so.

Models are scripted fakes that raise the `openai` client's exceptions, or are cut off by
`PAYABLES_FAULTS`; breakers are reset around every test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from runtime.agent import open_agent
from runtime.breakers import BREAKERS
from runtime.context import Context
from runtime.faults import ENV_VAR as FAULTS_VAR
from state.db import Database
from tests.fakes import (
    ScriptedChatModel,
    ScriptedModels,
    connection_error,
    invalid_tool_reply,
    rate_limit_error,
    server_error,
    tool_reply,
)

pytestmark = pytest.mark.integration

REQUEST = "Validate INV-1002"
ROUTE_1002 = {
    "route": "invoice_processing",
    "confidence": 0.95,
    "invoice_ids": ["INV-1002"],
    "rationale": "validate one invoice",
}


@pytest.fixture(autouse=True)
def _fresh_breakers_and_no_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Breakers are process-wide and faults come from the environment: isolate both."""
    monkeypatch.delenv(FAULTS_VAR, raising=False)
    BREAKERS.reset()
    yield
    BREAKERS.reset()


def fast(**overrides: Any) -> Context:
    """No backoff wait, so failing models cost no time; everything else as configured."""
    settings: dict[str, Any] = {
        "retry_initial_s": 0.0,
        "model_max_retries": 1,
        "model_fallbacks": (),
    }
    settings.update(overrides)
    return Context(**settings)


def staged(db_uri: str, invoice_id: str) -> str:
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(
            "SELECT status FROM invoices WHERE invoice_id = %s", (invoice_id,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def route_event_path(db_uri: str, thread_id: str) -> str:
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(
            "SELECT payload->>'model_path' FROM audit_events "
            "WHERE thread_id = %s AND kind = 'route'",
            (thread_id,),
        ).fetchone()
    assert row is not None
    return str(row[0])


async def test_with_every_model_down_the_rules_model_serves_and_the_result_says_so(
    database: Database, db_uri: str
) -> None:
    router = ScriptedChatModel([rate_limit_error(), rate_limit_error()])
    planner = ScriptedChatModel([connection_error(), connection_error()])
    respond = ScriptedChatModel([server_error(), server_error()])
    models = ScriptedModels(router=router, planner=planner, respond=respond)
    # Two failures open a model's breaker: the planner's second phase does not call at all.
    context = fast(breaker_failure_threshold=2, breaker_cooldown_s=300.0)
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start(REQUEST, user="clerk-ana", context=context)

    assert view["status"] == "completed"
    assert view["result"]["invoices"]["INV-1002"]["verdict"] == "match"
    assert staged(db_uri, "INV-1002") == "staged"
    assert view["plan_source"] == "rules"
    assert [router.script, planner.script, respond.script] == [[], [], []]

    paths = view["model_path"]
    assert paths["router"] == "rules (fallback: model scripted-router failed: RateLimitError x2)"
    assert paths["respond"] == (
        "rules (fallback: model scripted-respond failed: InternalServerError x2)"
    )
    assert paths["planner"] == (
        "rules (fallback: model scripted-planner circuit open (retry in 300s))"
    )
    assert view["result"]["degraded"] == [
        "router: models unavailable (model scripted-router failed: RateLimitError x2); "
        "rules model served",
        "planner: models unavailable (model scripted-planner failed: APIConnectionError x2); "
        "rules model served",
        "planner: models unavailable (model scripted-planner circuit open (retry in 300s)); "
        "rules model served",
        "respond: models unavailable (model scripted-respond failed: InternalServerError x2); "
        "rules model served",
    ]
    model_breakers = {k: v for k, v in BREAKERS.snapshot().items() if k.startswith("model:")}
    assert model_breakers == {
        "model:scripted-planner": "open",
        "model:scripted-respond": "open",
        "model:scripted-router": "open",
    }
    assert route_event_path(db_uri, view["thread_id"]) == paths["router"]
    assert view["result"]["usage"]["model_calls"] == 6  # router, planner and respond: 2 each


async def test_an_injected_rate_limit_sends_every_role_to_the_rules_model(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULTS_VAR, "model:rate_limit:1")
    models = ScriptedModels(
        router=ScriptedChatModel([]),
        planner=ScriptedChatModel([]),
        respond=ScriptedChatModel([]),
    )
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start(REQUEST, user="clerk-ana", context=fast())

    assert view["status"] == "completed"
    assert view["result"]["invoices"]["INV-1002"]["actions"] == ["staged"]
    assert all(m.received == [] for m in models.models.values())  # no call got through
    assert set(view["model_path"]) == {"router", "planner", "respond"}
    for role, path in view["model_path"].items():
        assert path == f"rules (fallback: model scripted-{role} failed: RateLimitError x2)"
    degraded = view["result"]["degraded"]
    assert {d.split(":")[0] for d in degraded} == {"router", "planner", "respond"}
    assert all(d.endswith("rules model served") for d in degraded)
    assert any("injected by PAYABLES_FAULTS" in note for note in view["result"]["notes"])


async def test_a_fallback_model_takes_over_a_role_whose_model_is_down(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULTS_VAR, "model:scripted-router:server_error:1")
    backup = ScriptedChatModel([tool_reply("RouteDecision", ROUTE_1002)])
    models = ScriptedModels(router=ScriptedChatModel([]), fallbacks={"backup": backup})
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start(
            REQUEST, user="clerk-ana", context=fast(model_fallbacks=("backup",))
        )

    assert view["status"] == "completed"
    assert view["model_path"]["router"] == "model:backup"
    assert backup.script == []
    assert view["result"]["degraded"] == [
        "router: model scripted-router failed: InternalServerError x2; fallback model backup served"
    ]


async def test_malformed_output_is_repaired_in_a_run_and_its_usage_is_charged(
    database: Database,
) -> None:
    router = ScriptedChatModel(
        [
            invalid_tool_reply("RouteDecision", '{"route": "invoice_processing", '),
            tool_reply("RouteDecision", ROUTE_1002, usage=(1200, 80)),
        ]
    )
    unusable = tool_reply("Summary", {"text": "wrong field"}, usage=(500, 10))
    respond = ScriptedChatModel([unusable, unusable, unusable])
    models = ScriptedModels(router=router, respond=respond)
    context = fast(max_plan_repairs=2, model_prices={"scripted-router": (0.001, 0.002)})
    async with open_agent(models=models, database=database) as agent:
        view = await agent.start(REQUEST, user="clerk-ana", context=context)

    assert view["status"] == "completed"
    assert view["model_path"]["router"] == "model:scripted-router (repaired 1x)"
    feedback = router.received[1][-1]
    assert "not valid JSON" in str(feedback.content)
    assert view["model_path"]["respond"] == (
        "rules (fallback: model scripted-respond output invalid after 3 attempts)"
    )
    assert view["summary"].startswith("[completed] INV-1002: match; staged")
    assert respond.script == []
    assert view["result"]["degraded"] == []  # the models answered; nothing was unavailable
    usage = view["result"]["usage"]
    # The router's two attempts (the first's reply carried no usage) and respond's three,
    # whose model, unpriced, is charged at the highest price known (price_per_1k).
    assert usage["model_calls"] == 5
    assert (usage["input_tokens"], usage["output_tokens"]) == (1200 + 3 * 500, 80 + 3 * 10)
    assert usage["cost_usd"] == pytest.approx((1.2 + 1.5) * 0.001 + (0.08 + 0.03) * 0.002)
