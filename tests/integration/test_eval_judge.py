"""LLM-judged ragas metrics through the real ragas metric code, with a deterministic judge."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel
from ragas.llms.base import InstructorBaseRagasLLM

from evals.judge import judge_from_env
from evals.suite import run_jobs, select_jobs
from runtime.errors import ConfigError

pytestmark = pytest.mark.integration
ModelT = TypeVar("ModelT", bound=BaseModel)


def squeezed(text: str) -> str:
    """Letters and digits only, lower case: how the judge compares a statement and context."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


class KeywordJudge(InstructorBaseRagasLLM):
    """Answers ragas's prompts by rule: a goal is met when the run says it completed;
    a statement is faithful when its words appear in the context."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompt: str, response_model: type[ModelT]) -> ModelT:
        self.prompts.append(prompt)
        name = response_model.__name__
        if name == "WorkflowOutput":
            status = "completed" if "[completed]" in prompt else "not completed"
            return response_model.model_validate(
                {"user_goal": "the clerk's request", "end_state": status}
            )
        if name == "CompareOutcomeOutput":
            met = "not completed" not in prompt
            return response_model.model_validate({"reason": "rule", "verdict": "1" if met else "0"})
        if name == "StatementGeneratorOutput":
            answer = prompt.rsplit("answer", 1)[-1]
            sentences = [s.strip() for s in re.split(r"[.!?]\s", answer) if len(s.strip()) > 20]
            return response_model.model_validate({"statements": sentences[:3] or ["nothing"]})
        if name == "NLIStatementOutput":
            # The case to judge is the prompt's last input (its examples come first): a
            # statement is faithful when its opening words are in that input's context.
            opening = prompt.rindex("{", 0, prompt.rindex('"context":'))
            case = json.loads(prompt[opening : prompt.rindex("Output:")])
            context, statements = squeezed(case["context"]), case["statements"]
            return response_model.model_validate(
                {
                    "statements": [
                        {
                            "statement": s,
                            "reason": "rule",
                            "verdict": 1 if squeezed(s)[:40] in context else 0,
                        }
                        for s in statements
                    ]
                }
            )
        raise AssertionError(f"unexpected response model {name}")

    async def agenerate(self, prompt: str, response_model: type[ModelT]) -> ModelT:
        return self.generate(prompt, response_model)


SCENARIOS: list[dict[str, Any]] = [
    {
        "id": "paid",
        "suite": "judge",
        "description": "INV-1001 is paid after one approval",
        "request": {"text": "Pay INV-1001"},
        "decisions": [{"reviewer": {"id": "ctl-1"}}],
    },
    {
        "id": "out-of-scope",
        "suite": "judge",
        "request": {"text": "Write me a poem"},
        "expect": {"route": "out_of_scope"},
    },
    {
        "id": "policy",
        "suite": "judge",
        "request": {"text": "What is our price variance tolerance for invoice matching?"},
        "expect": {"cited_passages": ["AP-TOL-1"]},
    },
]


async def test_judged_metrics_run_when_a_judge_is_given(
    db_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URI", db_uri)
    dataset = tmp_path / "judge.jsonl"
    dataset.write_text("".join(json.dumps(s) + "\n" for s in SCENARIOS))
    judge = KeywordJudge()
    scores, meta = await run_jobs(select_jobs([], [dataset], None), concurrency=2, judge=judge)
    by_id = {s.scenario_id: s.metrics for s in scores}
    assert by_id["paid"]["agent_goal_accuracy"] == 1.0
    assert by_id["out-of-scope"]["agent_goal_accuracy"] == 0.0  # refused, not completed
    # The rules model answers from the passages it found: every statement is in them.
    assert by_id["policy"]["faithfulness"] == 1.0
    assert by_id["paid"]["faithfulness"] is None  # no answer to be faithful to
    assert meta["judge"] == "KeywordJudge"
    assert any("INV-1001 is paid after one approval" in p for p in judge.prompts)


def test_no_judge_without_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYABLES_JUDGE_MODEL", raising=False)
    assert judge_from_env() is None
    monkeypatch.setenv("PAYABLES_JUDGE_MODEL", "gpt-4o-mini")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="needs OPENAI_API_KEY"):
        judge_from_env()


class BrokenJudge(KeywordJudge):
    """A judge that fails as hosted ones do: a timeout, then output ragas cannot read."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def agenerate(self, prompt: str, response_model: type[ModelT]) -> ModelT:
        self.calls += 1
        if self.calls % 2:
            raise TimeoutError("the judge did not answer")
        return response_model.model_validate({"unexpected": "shape"})


async def test_a_judge_that_fails_leaves_its_metrics_empty_and_every_run_scored(
    db_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, the first failure raised out of the whole eval: no report at all.
    monkeypatch.setenv("DATABASE_URI", db_uri)
    dataset = tmp_path / "judge.jsonl"
    dataset.write_text("".join(json.dumps(s) + "\n" for s in SCENARIOS))
    judge = BrokenJudge()
    scores, _ = await run_jobs(select_jobs([], [dataset], None), concurrency=2, judge=judge)
    assert sorted(s.scenario_id for s in scores) == ["out-of-scope", "paid", "policy"]
    assert all(s.metrics["agent_goal_accuracy"] is None for s in scores)
    assert all(s.metrics["faithfulness"] is None for s in scores)
    assert judge.calls >= 3
    assert "agent_goal_accuracy not judged" in caplog.text


@pytest.mark.parametrize(
    ("context", "faithfulness"),
    [
        ("Price variance above 2% of the PO unit price is held for the buyer.", 1.0),
        ("Duplicate invoices are rejected and the vendor is told.", 0.0),
    ],
)
async def test_the_judge_says_unfaithful_to_an_answer_its_context_does_not_hold(
    context: str, faithfulness: float
) -> None:
    """The faithfulness the suite asserts could come out otherwise: judged against other
    passages, the same answer is not faithful."""
    from ragas.metrics.collections import Faithfulness

    answer = "Price variance above 2% of the PO unit price is held for the buyer to amend."
    result = await Faithfulness(llm=KeywordJudge()).ascore(
        user_input="What happens to a price variance?",
        response=answer,
        retrieved_contexts=[context],
    )
    assert result.value == faithfulness
