"""LLM-judged ragas metrics: goal accuracy against the scenario's reference, faithfulness.

They run only when a judge is configured: `PAYABLES_JUDGE_MODEL` (with `OPENAI_API_KEY`,
and `OPENAI_BASE_URL` for any OpenAI-compatible server) builds ragas's instructor LLM.
Tests pass a deterministic judge of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Awaitable
from typing import Any

from ragas.llms.base import InstructorBaseRagasLLM
from ragas.messages import AIMessage, HumanMessage, ToolCall, ToolMessage

from evals.runner import ScenarioRun
from evals.scenario import Scenario
from runtime.errors import ConfigError

JUDGE_ENV = "PAYABLES_JUDGE_MODEL"

JUDGE_TIMEOUT_S = 120.0
"""Longest one judged metric may take (the judge's calls for it, retries included)."""

log = logging.getLogger(__name__)


def judge_from_env() -> InstructorBaseRagasLLM | None:
    """The configured judge, or None when `PAYABLES_JUDGE_MODEL` is unset."""
    model = os.environ.get(JUDGE_ENV)
    if not model:
        return None
    if not os.environ.get("OPENAI_API_KEY"):
        raise ConfigError(
            f"{JUDGE_ENV}={model} needs OPENAI_API_KEY (and OPENAI_BASE_URL for a local "
            f"server); unset {JUDGE_ENV} to skip the LLM-judged metrics."
        )
    from openai import AsyncOpenAI
    from ragas.llms import llm_factory

    client = AsyncOpenAI(base_url=os.environ.get("OPENAI_BASE_URL") or None)
    judge: InstructorBaseRagasLLM = llm_factory(model, client=client)
    return judge


def conversation(
    scenario: Scenario, run: ScenarioRun
) -> list[HumanMessage | AIMessage | ToolMessage]:
    """The run as the message list ragas's agent metrics read (built from the gate's outcomes)."""
    messages: list[HumanMessage | AIMessage | ToolMessage] = [
        HumanMessage(content=scenario.request.text)
    ]
    for outcome in run.outcomes:
        messages.append(
            AIMessage(
                content="", tool_calls=[ToolCall(name=outcome["tool"], args=outcome["args"] or {})]
            )
        )
        body = outcome["result"] if outcome["ok"] else outcome["error"]
        messages.append(ToolMessage(content=json.dumps(body, default=str)[:2000]))
    messages.append(AIMessage(content=f"[{run.status}] {run.summary}".strip()))
    return messages


def reference_outcome(scenario: Scenario) -> str:
    """What should have happened, in words: the scenario's description, else its expectations."""
    if scenario.description:
        return scenario.description
    expect = scenario.expect
    parts = [
        f"route {expect.route}" if expect.route else "",
        f"status {expect.status}" if expect.status else "",
    ]
    parts += [a.description or f"{a.table} {a.where}" for a in expect.state]
    return "; ".join(p for p in parts if p) or "the request is handled"


async def judged_metrics(
    scenario: Scenario, run: ScenarioRun, judge: InstructorBaseRagasLLM
) -> dict[str, float | None]:
    """AgentGoalAccuracyWithReference for every scenario; Faithfulness for policy answers.

    A metric the judge could not give (an error, a timeout, output ragas cannot read, or
    NaN, which ragas returns when an answer yields no statements) is None, with a warning
    naming the scenario: one judge failure must not lose the whole eval's results.
    """
    from ragas.metrics.collections import AgentGoalAccuracyWithReference, Faithfulness

    metrics: dict[str, float | None] = {
        "agent_goal_accuracy": await _judged(
            scenario,
            "agent_goal_accuracy",
            AgentGoalAccuracyWithReference(llm=judge).ascore(
                user_input=conversation(scenario, run), reference=reference_outcome(scenario)
            ),
        )
    }
    answer: dict[str, Any] = run.result.get("answer") or {}
    passages = [
        p["body"]
        for o in run.outcomes
        if o["tool"] == "search_policy" and o["ok"] and o["result"]
        for p in o["result"]["passages"]
    ]
    metrics["faithfulness"] = None
    if answer.get("answer") and passages:
        metrics["faithfulness"] = await _judged(
            scenario,
            "faithfulness",
            Faithfulness(llm=judge).ascore(
                user_input=scenario.request.text,
                response=answer["answer"],
                retrieved_contexts=passages,
            ),
        )
    return metrics


async def _judged(scenario: Scenario, metric: str, scoring: Awaitable[Any]) -> float | None:
    """The metric's value, or None (with a warning) when the judge did not give one."""
    try:
        result = await asyncio.wait_for(scoring, JUDGE_TIMEOUT_S)
        value = float(result.value)
    except Exception as exc:  # the judge's failure, not the agent's: the run still counts
        log.warning(
            "%s: %s not judged (%s: %s)", scenario.id, metric, type(exc).__name__, str(exc)[:200]
        )
        return None
    if math.isnan(value):
        log.warning("%s: %s not judged (the judge gave NaN)", scenario.id, metric)
        return None
    return value
