"""`payables eval`: pick datasets, run every scenario in every model mode, score, report.

Scenarios run concurrently (each has its own database), bounded by ``concurrency``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.runner import ScenarioDatabases, run_scenario
from evals.scenario import (
    DATASETS_DIR,
    ModelMode,
    Scenario,
    ScenarioError,
    read_dataset,
    resolve_world,
)
from evals.scoring import ScenarioScore, check_state, score
from runtime.errors import BadInput
from state.db import database_uri

SUITE_MODES: dict[str, tuple[ModelMode, ...]] = {
    # The red team's headline is the compromised model; the rules model is the floor.
    "redteam": ("rules", "compromised"),
}


@dataclass(frozen=True)
class Job:
    """One scenario in one model mode, with the folder its dataset lives in."""

    scenario: Scenario
    mode: ModelMode
    base_dir: Path


def select_jobs(
    suites: Sequence[str],
    datasets: Sequence[Path],
    mode: ModelMode | None,
) -> list[Job]:
    """The jobs for the named suites (from evals/datasets) and any extra dataset files.

    Without ``mode``, each suite runs in its default modes (rules; red team also
    compromised); with it, every scenario runs in that mode only.
    """
    paths: list[tuple[Path, str | None]] = []
    for suite in suites:
        path = DATASETS_DIR / f"{suite}.jsonl"
        if not path.is_file():
            known = sorted(p.stem for p in DATASETS_DIR.glob("*.jsonl"))
            raise ScenarioError(f"No suite {suite!r}; suites in {DATASETS_DIR}: {known}.")
        paths.append((path, suite))
    paths.extend((path, None) for path in datasets)
    jobs: list[Job] = []
    for path, named in paths:
        for scenario in read_dataset(path):
            if named is not None and scenario.suite != named:
                # Scores are grouped, and gated, by the scenario's suite: one filed under
                # another name would leave the named suite's gates unapplied, or skew them.
                raise ScenarioError(
                    f"{path}: scenario {scenario.id!r} has suite {scenario.suite!r}; every "
                    f"scenario of the {named} suite must say suite {named!r}."
                )
            try:  # a world or world_patch that cannot load is the dataset's error, said now
                resolve_world(scenario, path.parent)
            except BadInput as exc:
                raise ScenarioError(f"{path}: {exc}") from exc
            modes = (mode,) if mode else SUITE_MODES.get(scenario.suite, ("rules",))
            jobs.extend(Job(scenario, m, path.parent) for m in modes)
    return jobs


async def run_jobs(
    jobs: list[Job],
    *,
    concurrency: int = 4,
    keep_databases: bool = False,
    on_done: Callable[[ScenarioScore], None] | None = None,
    judge: Any = None,
) -> tuple[list[ScenarioScore], dict[str, Any]]:
    """Run and score every job; return scores (in job order) and run metadata.

    ``judge`` (a ragas instructor LLM) adds the LLM-judged metrics; by default the one
    `PAYABLES_JUDGE_MODEL` names, if any.
    """
    if judge is None:
        from evals.judge import judge_from_env

        judge = judge_from_env()
    databases = ScenarioDatabases(database_uri(), keep=keep_databases)
    await databases.ensure_template()
    limit = asyncio.Semaphore(max(1, concurrency))
    started = time.perf_counter()

    async def one(job: Job) -> ScenarioScore:
        async with limit:
            run, findings = await run_scenario(
                job.scenario,
                mode=job.mode,
                databases=databases,
                base_dir=job.base_dir,
                check_state=check_state,
            )
            result = await score(run, findings, judge)
        if on_done is not None:
            on_done(result)
        return result

    scores = await asyncio.gather(*(one(job) for job in jobs))
    meta = {
        "modes": sorted({job.mode for job in jobs}),
        "wall_s": time.perf_counter() - started,
        "concurrency": concurrency,
        "judge": getattr(judge, "model", type(judge).__name__) if judge is not None else None,
    }
    return list(scores), meta
