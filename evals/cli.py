"""`payables eval` and `payables eval-schema`: the eval suites from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evals.scenario import (
    DEFAULT_SUITES,
    MODEL_MODES,
    SCHEMA_PATH,
    THRESHOLDS_PATH,
    ModelMode,
    scenario_json_schema,
)
from runtime.errors import BadInput, PayablesError
from runtime.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from evals.scoring import ScenarioScore

# The runner, scoring and ragas load only when `payables eval` runs, so that every other
# command starts without them.

DEFAULT_OUT = PROJECT_ROOT / "reports" / "eval"
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def eval_command(
    suite: Annotated[
        list[str] | None,
        typer.Option(
            "--suite",
            help=f"Suite in evals/datasets (repeatable; default {', '.join(DEFAULT_SUITES)}).",
        ),
    ] = None,
    dataset: Annotated[
        list[Path] | None,
        typer.Option("--dataset", help="A JSONL file of scenarios (repeatable).", exists=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="rules | llm | compromised (default: rules; red team also compromised).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where the reports go.")] = DEFAULT_OUT,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=32, help="Scenarios run at once.")
    ] = 4,
    gate: Annotated[
        bool,
        typer.Option(
            "--gate",
            help="Exit 1 when a gate fails (gates: --thresholds, else evals/thresholds.json).",
        ),
    ] = False,
    thresholds: Annotated[
        Path, typer.Option("--thresholds", help="The gates file.")
    ] = THRESHOLDS_PATH,
    upload: Annotated[
        bool, typer.Option("--upload", help="Send the experiment to LangSmith (needs a key).")
    ] = False,
    keep_databases: Annotated[
        bool, typer.Option("--keep-databases", help="Keep each scenario's database to inspect.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
) -> None:
    """Run eval scenarios through the real graph, score them, write reports, check gates."""
    from evals.report import (
        build_report,
        check_gates,
        check_writable,
        earlier_baseline,
        gate_failures,
        load_thresholds,
        write_reports,
    )
    from evals.runner import provider_for
    from evals.suite import run_jobs, select_jobs

    if model is not None and model not in MODEL_MODES:
        _fail(f"--model must be one of {', '.join(MODEL_MODES)}, got {model!r}.", 2)
    mode: ModelMode | None = model  # type: ignore[assignment]
    suites = list(suite or ([] if dataset else DEFAULT_SUITES))
    try:
        jobs = select_jobs(suites, list(dataset or []), mode)
        # A file named without --gate is read too (it went unchecked, exit 0): its gates are
        # reported, and only --gate makes a failed one fail the command.
        gates = load_thresholds(thresholds) if gate or thresholds != THRESHOLDS_PATH else None
        earlier_baseline(out)
        if any(job.mode == "llm" for job in jobs):
            provider_for("llm")  # no chat model configured: refused once, before any run
        check_writable(out)
    except BadInput as exc:
        _fail(str(exc), 2)
        return
    progress = Progress(
        TextColumn("[bold]eval[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=not err.is_terminal,
        disable=not err.is_terminal,
    )
    failed_so_far = 0

    def on_done(score: ScenarioScore) -> None:
        nonlocal failed_so_far
        failed_so_far += not score.passed
        progress.update(task, advance=1, description=f"{failed_so_far} failed")
        if not err.is_terminal:
            mark = "ok  " if score.passed else "FAIL"
            err.print(
                f"{mark} {score.suite}/{score.mode} {score.scenario_id} ({score.wall_s:.1f}s)"
            )

    with progress:
        task = progress.add_task("", total=len(jobs))
        try:
            scores, meta = asyncio.run(
                run_jobs(
                    jobs, concurrency=concurrency, keep_databases=keep_databases, on_done=on_done
                )
            )
        except PayablesError as exc:
            _fail(str(exc), 1)
            return
    report = build_report(scores, meta=meta)
    gate_results = check_gates(report, gates) if gates is not None else None
    json_path, md_path, _ = write_reports(out, report, gate_results)
    if upload:
        _upload(report)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        _print_summary(report, gate_results)
        sys.stdout.write(f"reports: {json_path} and {md_path}\n")
    failed = gate_failures(gate_results) if gate_results is not None and gate else []
    if failed:
        _fail("gates failed: " + ", ".join(failed), 1)


def _print_summary(report: dict[str, Any], gate_results: list[dict[str, Any]] | None) -> None:
    lines = []
    for key, f in report["suites"].items():
        line = f"{key}: {f['passed']}/{f['scenarios']} passed"
        if f.get("attack_success_rate") is not None:
            line += (
                f", attack success {f['attack_success_rate']:.0%}"
                f", utility under attack {f['utility_under_attack']:.0%}"
            )
        lines.append(line)
    if gate_results is not None:
        verdicts = [g["passed"] for g in gate_results if g["passed"] is not None]
        lines.append(f"gates: {sum(verdicts)}/{len(verdicts)} passed")
    sys.stdout.write("\n".join(lines) + "\n")


def _upload(report: dict[str, Any]) -> None:
    """Send the scored scenarios to LangSmith as an experiment, if a key is configured."""
    if not (os.environ.get("LANGSMITH_API_KEY") or os.environ.get("LANGCHAIN_API_KEY")):
        err.print(
            "--upload: no LANGSMITH_API_KEY is set, so nothing was sent; the reports are local."
        )
        return
    from evals.upload import upload_experiment

    try:
        url = upload_experiment(report)
    except Exception as exc:  # the local reports are written; say what failed and go on
        err.print(f"[yellow]--upload failed:[/] {escape(f'{type(exc).__name__}: {exc}')}")
        return
    err.print(f"uploaded the experiment to LangSmith: {url}")


def eval_schema_command(
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the committed schema is out of date.")
    ] = False,
) -> None:
    """Write evals/scenario.schema.json from the scenario models (or check it)."""
    text = json.dumps(scenario_json_schema(), indent=2, sort_keys=True) + "\n"
    if check:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.is_file() else ""
        if current != text:
            _fail(f"{SCHEMA_PATH} is out of date; run `payables eval-schema`.", 1)
        return
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {SCHEMA_PATH.relative_to(PROJECT_ROOT)}\n")


def register(app: typer.Typer) -> None:
    """Add the eval commands to the `payables` CLI."""
    app.command("eval")(eval_command)
    app.command("eval-schema")(eval_schema_command)
