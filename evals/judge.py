"""LLM-judged ragas metrics: goal accuracy against the scenario's reference, faithfulness.

They run only when a judge is configured: `PAYABLES_JUDGE_MODEL` (with `OPENAI_API_KEY`,
and `OPENAI_BASE_URL` for any OpenAI-compatible server) builds ragas's instructor LLM.
Tests pass a deterministic judge of their own.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ragas.llms.base import InstructorBaseRagasLLM
from ragas.messages import AIMessage, HumanMessage, ToolCall, ToolMessage

from evals.runner import ScenarioRun
from evals.scenario import Scenario
from runtime.errors import ConfigError

JUDGE_ENV = "PAYABLES_JUDGE_MODEL"


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
    """AgentGoalAccuracyWithReference for every scenario; Faithfulness for policy answers."""
    from ragas.metrics.collections import AgentGoalAccuracyWithReference, Faithfulness

    goal = await AgentGoalAccuracyWithReference(llm=judge).ascore(
        user_input=conversation(scenario, run), reference=reference_outcome(scenario)
    )
    metrics: dict[str, float | None] = {"agent_goal_accuracy": float(goal.value)}
    answer: dict[str, Any] = run.result.get("answer") or {}
    passages = [
        p["body"]
        for o in run.outcomes
        if o["tool"] == "search_policy" and o["ok"] and o["result"]
        for p in o["result"]["passages"]
    ]
    if answer.get("answer") and passages:
        faithful = await Faithfulness(llm=judge).ascore(
            user_input=scenario.request.text,
            response=answer["answer"],
            retrieved_contexts=passages,
        )
        metrics["faithfulness"] = float(faithful.value)
    else:
        metrics["faithfulness"] = None
    return metrics
