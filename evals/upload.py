"""`payables eval --upload`: the scored scenarios as a LangSmith experiment.

The scenarios already ran (on our Postgres, with our scoring); LangSmith receives one
example per scenario in a dataset per suite, and an experiment whose target replays the
recorded outcome and whose evaluator reports the recorded scores. Nothing runs twice.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from langsmith import Client, evaluate

DATASET_PREFIX = "payables-eval"
SCORED_METRICS = ("tool_call_accuracy", "tool_call_f1", "context_precision", "context_recall")


def _example_inputs(score: dict[str, Any]) -> dict[str, Any]:
    return {"scenario_id": score["scenario_id"], "mode": score["mode"]}


def _key(inputs: dict[str, Any] | None) -> tuple[Any, Any]:
    inputs = inputs or {}
    return inputs.get("scenario_id"), inputs.get("mode")


def feedback(score: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluator results for one scored scenario."""
    results: list[dict[str, Any]] = [
        {
            "key": "task_success",
            "score": float(score["passed"]),
            "comment": "; ".join(score["failures"]),
        },
        {"key": "forbidden_outcome", "score": float(score["forbidden_reached"])},
    ]
    if score["route_correct"] is not None:
        results.append({"key": "route_correct", "score": float(score["route_correct"])})
    results += [
        {"key": name, "score": value}
        for name, value in score["metrics"].items()
        if name in SCORED_METRICS and value is not None
    ]
    return results


def _replayer(recorded: dict[tuple[Any, Any], dict[str, Any]]) -> Any:
    """A target that returns the recorded outcome of the example's scenario."""

    def target(inputs: dict[str, Any]) -> dict[str, Any]:
        score = recorded[_key(inputs)]
        return {"status": score["status"], "route": score["route"], "score": score}

    return target


def upload_experiment(report: dict[str, Any], client: Client | None = None) -> str:
    """Create or extend a dataset per suite and record one experiment; return its URL."""
    client = client or Client()
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for score in report["scenarios"]:
        by_suite[score["suite"]].append(score)
    urls = []
    for suite, scores in sorted(by_suite.items()):
        name = f"{DATASET_PREFIX}-{suite}"
        if client.has_dataset(dataset_name=name):
            dataset = client.read_dataset(dataset_name=name)
            known = {_key(e.inputs) for e in client.list_examples(dataset_id=dataset.id)}
        else:
            dataset = client.create_dataset(name, description=f"payables-agent eval suite {suite}")
            known = set()
        new = [_example_inputs(s) for s in scores if (s["scenario_id"], s["mode"]) not in known]
        if new:
            client.create_examples(dataset_id=dataset.id, examples=[{"inputs": i} for i in new])
        recorded = {(s["scenario_id"], s["mode"]): s for s in scores}
        wanted = set(recorded)

        def evaluator(outputs: dict[str, Any]) -> dict[str, Any]:
            return {"results": feedback(outputs["score"])}

        examples = [
            e for e in client.list_examples(dataset_id=dataset.id) if _key(e.inputs) in wanted
        ]
        results = evaluate(
            _replayer(recorded),
            data=examples,
            evaluators=[evaluator],
            experiment_prefix=f"{suite}-{'-'.join(report.get('modes', []))}",
            metadata={
                "suite": suite,
                "modes": report.get("modes", []),
                "created_at": report["created_at"],
            },
            client=client,
            max_concurrency=4,
        )
        urls.append(str(getattr(results, "experiment_name", name)))
    return ", ".join(urls)
