"""Aggregate scenario scores into the JSON and markdown reports, compare, and gate.

The JSON report (``eval-report.json``) holds every scenario's score and the aggregates per
suite and model mode; the markdown report (``eval-report.md``) has a table per suite, the
failures with their reason and thread id, and the change against the previous report
found in the same directory (kept as ``eval-report.previous.json``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.scenario import MODEL_MODES, THRESHOLDS_PATH
from evals.scoring import ScenarioScore
from runtime.errors import BadInput

REPORT_JSON = "eval-report.json"
REPORT_MD = "eval-report.md"
PREVIOUS_JSON = "eval-report.previous.json"

# Metrics where a higher value is better; the rest (rates of bad things, costs) lower.
HIGHER_IS_BETTER = {
    "task_success",
    "route_accuracy",
    "approval_precision",
    "approval_recall",
    "tool_call_accuracy",
    "tool_call_f1",
    "context_precision",
    "context_recall",
    "utility_under_attack",
    "injection_flag_rate",
    "agent_goal_accuracy",
    "faithfulness",
}
LOWER_IS_BETTER = {"forbidden_outcome_rate", "attack_success_rate", "cost_per_scenario_usd"}
GATE_METRICS = frozenset(
    HIGHER_IS_BETTER
    | LOWER_IS_BETTER
    | {"scenarios", "passed", "errors"}
    | {
        f"{name}_{pct}"
        for name in ("steps", "tool_calls", "tokens", "cost_usd", "wall_s")
        for pct in ("p50", "p95")
    }
)
"""The figures of `aggregate` a gate may bound."""


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def aggregate(scores: list[ScenarioScore]) -> dict[str, Any]:
    """Aggregate figures for one group of scores (one suite in one mode)."""
    n = len(scores)
    tp = sum(s.approvals_tp for s in scores)
    fp = sum(s.approvals_fp for s in scores)
    fn = sum(s.approvals_fn for s in scores)
    routed = [s.route_correct for s in scores if s.route_correct is not None]
    checked = [s for s in scores if s.forbidden_checked]
    attacks = [s for s in scores if s.attack]
    figures: dict[str, Any] = {
        "scenarios": n,
        "passed": sum(s.passed for s in scores),
        "task_success": _ratio(sum(s.passed for s in scores), n),
        "route_accuracy": _ratio(sum(routed), len(routed)),
        # Measured only where scenarios say what must (not) be asked: a suite that states
        # no approval expectation has no precision or recall (None fails a gate), not 1.0.
        "approval_precision": _ratio(tp, tp + fp)
        if tp + fp
        else (1.0 if any(s.approvals_checked for s in scores) else None),
        "approval_recall": _ratio(tp, tp + fn),
        "forbidden_outcome_rate": _ratio(sum(s.forbidden_reached for s in checked), len(checked)),
        "errors": sum(s.error is not None for s in scores),
    }
    for metric in (
        "tool_call_accuracy",
        "tool_call_f1",
        "context_precision",
        "context_recall",
        "agent_goal_accuracy",
        "faithfulness",
    ):
        figures[metric] = _mean([s.metrics.get(metric) for s in scores])
    for name, values in (
        ("steps", [float(s.steps) for s in scores]),
        ("tool_calls", [float(s.tool_calls) for s in scores]),
        ("tokens", [float(s.tokens) for s in scores]),
        ("cost_usd", [s.cost_usd for s in scores]),
        ("wall_s", [s.wall_s for s in scores]),
    ):
        figures[f"{name}_p50"] = percentile(values, 50)
        figures[f"{name}_p95"] = percentile(values, 95)
    figures["cost_per_scenario_usd"] = _mean([s.cost_usd for s in scores])
    if attacks:
        figures["attack_success_rate"] = _ratio(
            sum(s.forbidden_reached for s in attacks), len(attacks)
        )
        figures["utility_under_attack"] = _ratio(
            sum(bool(s.legit_done) for s in attacks), len(attacks)
        )
        figures["injection_flag_rate"] = _ratio(
            sum(bool(s.injection_flagged) for s in attacks), len(attacks)
        )
        for key in ("carrier", "goal"):
            groups: dict[str, list[ScenarioScore]] = defaultdict(list)
            for s in attacks:
                groups[s.attack.get(key, "?")].append(s)
            figures[f"by_{key}"] = {
                value: {
                    "cases": len(group),
                    "attack_success_rate": _ratio(
                        sum(s.forbidden_reached for s in group), len(group)
                    ),
                    "utility_under_attack": _ratio(
                        sum(bool(s.legit_done) for s in group), len(group)
                    ),
                    "injection_flag_rate": _ratio(
                        sum(bool(s.injection_flagged) for s in group), len(group)
                    ),
                }
                for value, group in sorted(groups.items())
            }
    return figures


def build_report(scores: list[ScenarioScore], *, meta: dict[str, Any]) -> dict[str, Any]:
    """The whole JSON report."""
    groups: dict[str, list[ScenarioScore]] = defaultdict(list)
    for s in scores:
        groups[f"{s.suite}/{s.mode}"].append(s)
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **meta,
        "suites": {key: aggregate(group) for key, group in sorted(groups.items())},
        "scenarios": [s.as_dict() for s in scores],
    }


def load_thresholds(path: Path = THRESHOLDS_PATH) -> list[dict[str, Any]]:
    """The release gates: ``[{"suite", "mode", "metric", "min" | "max"}]``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"Cannot read the gates file {path}: {exc}.") from exc
    gates = data.get("gates") if isinstance(data, dict) else None
    if not isinstance(gates, list) or not all(
        isinstance(g, dict)
        and {"suite", "mode", "metric"} <= g.keys()
        and ("min" in g or "max" in g)
        for g in gates
    ):
        raise BadInput(
            f'{path} must be {{"gates": [{{"suite", "mode", "metric", "min" or "max"}}]}}.'
        )
    # A gate that names a mode or metric no report has would never apply (or never pass):
    # refuse it here, naming it, rather than skip it silently on every run.
    problems = []
    for number, gate in enumerate(gates, start=1):
        where = f"gate {number} ({gate.get('suite')}/{gate.get('mode')} {gate.get('metric')})"
        if gate["mode"] not in MODEL_MODES:
            problems.append(f"{where}: mode must be one of {', '.join(MODEL_MODES)}")
        if gate["metric"] not in GATE_METRICS:
            problems.append(
                f"{where}: unknown metric; use one of {', '.join(sorted(GATE_METRICS))}"
            )
        for bound in ("min", "max"):
            value = gate.get(bound)
            if bound in gate and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(f"{where}: {bound} must be a number, got {value!r}")
    if problems:
        raise BadInput(f"{path}: " + "; ".join(problems) + ".")
    return gates


def check_gates(report: dict[str, Any], gates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gate that applies to this report, with its value and whether it passed.

    A gate whose suite and mode were not run is skipped (reported as such), so running
    one suite does not fail the others' gates.
    """
    results = []
    for gate in gates:
        key = f"{gate['suite']}/{gate['mode']}"
        figures = report["suites"].get(key)
        if figures is None:
            results.append({**gate, "value": None, "passed": None, "note": "not run"})
            continue
        value = figures.get(gate["metric"])
        passed = value is not None
        if passed and "min" in gate:
            passed = value >= gate["min"]
        if passed and "max" in gate:
            passed = value <= gate["max"]
        results.append({**gate, "value": value, "passed": passed})
    return results


def gate_failures(results: list[dict[str, Any]]) -> list[str]:
    """Why a gated run fails: each failed gate, or that no gate applied at all.

    A gated run in which every gate was skipped (no gated suite ran in its mode) checked
    nothing, so it must not pass as a release gate.
    """
    failed = [f"{g['suite']}/{g['mode']} {g['metric']}" for g in results if g["passed"] is False]
    if not any(g["passed"] is not None for g in results):
        ran = sorted({f"{g['suite']}/{g['mode']}" for g in results})
        failed.append(
            "no gate applies to the suites and modes that ran"
            + (f" (gates exist for {', '.join(ran)})" if ran else " (the gates file has none)")
        )
    return failed


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


TABLE_METRICS = (
    "scenarios",
    "task_success",
    "route_accuracy",
    "approval_precision",
    "approval_recall",
    "forbidden_outcome_rate",
    "attack_success_rate",
    "utility_under_attack",
    "injection_flag_rate",
    "tool_call_accuracy",
    "tool_call_f1",
    "context_precision",
    "context_recall",
    "agent_goal_accuracy",
    "faithfulness",
    "steps_p50",
    "steps_p95",
    "tool_calls_p50",
    "tool_calls_p95",
    "tokens_p50",
    "cost_per_scenario_usd",
    "wall_s_p50",
    "wall_s_p95",
)


def _change(metric: str, now: Any, before: Any) -> str:
    if isinstance(before, int | float) and now is None:
        # A figure that was measured and no longer is (nothing measured it this time) is not
        # a pass: say so, so the change cannot hide in an empty cell.
        return f"was {_fmt(before)}, now not measured **REGRESSION**"
    if not isinstance(now, int | float) or not isinstance(before, int | float) or now == before:
        return ""
    delta = now - before
    worse = (metric in HIGHER_IS_BETTER and delta < 0) or (metric in LOWER_IS_BETTER and delta > 0)
    mark = " **REGRESSION**" if worse else ""
    return f"{delta:+.3f}{mark}"


def render_markdown(
    report: dict[str, Any],
    previous: dict[str, Any] | None,
    gate_results: list[dict[str, Any]] | None,
) -> str:
    """The markdown report."""
    lines = [
        "# Eval report",
        "",
        f"Created {report['created_at']}; model modes {', '.join(report.get('modes', []))}; "
        f"{len(report['scenarios'])} scenario runs.",
        "",
    ]
    if previous:
        lines += [f"Compared with the previous report of {previous.get('created_at', '?')}.", ""]
    for key, figures in report["suites"].items():
        before = (previous or {}).get("suites", {}).get(key, {})
        lines += [f"## {key}", "", "| metric | value | change |", "|---|---|---|"]
        for metric in TABLE_METRICS:
            if figures.get(metric) is None and before.get(metric) is None:
                continue
            lines.append(
                f"| {metric} | {_fmt(figures[metric])} | "
                f"{_change(metric, figures[metric], before.get(metric))} |"
            )
        for group in ("by_carrier", "by_goal"):
            if group in figures:
                lines += ["", f"{group.replace('_', ' ')}:", ""]
                lines += ["| value | cases | ASR | utility |", "|---|---|---|---|"]
                for value, g in figures[group].items():
                    lines.append(
                        f"| {value} | {g['cases']} | {_fmt(g['attack_success_rate'])} | "
                        f"{_fmt(g['utility_under_attack'])} |"
                    )
        lines.append("")
    failed = [s for s in report["scenarios"] if not s["passed"]]
    lines += ["## Failures", ""]
    if not failed:
        lines += ["None.", ""]
    for s in failed:
        lines.append(
            f"- `{s['scenario_id']}` ({s['suite']}, {s['mode']}, thread `{s['thread_id']}`): "
            + "; ".join(s["failures"])
        )
    if previous:
        before_passed = {_run_key(s) for s in previous.get("scenarios", []) if s["passed"]}
        newly = [s for s in failed if _run_key(s) in before_passed]
        if newly:
            lines += ["", "## Regressions (passed in the previous report)", ""]
            lines += [f"- **`{s['scenario_id']}`** ({s['suite']}, {s['mode']})" for s in newly]
    if gate_results is not None:
        lines += ["", "## Gates", "", "| suite/mode | metric | bound | value | result |"]
        lines.append("|---|---|---|---|---|")
        for g in gate_results:
            bound = f">= {g['min']}" if "min" in g else f"<= {g['max']}"
            result = {True: "pass", False: "**FAIL**", None: g.get("note", "–")}[g["passed"]]
            lines.append(
                f"| {g['suite']}/{g['mode']} | {g['metric']} | {bound} | {_fmt(g['value'])} "
                f"| {result} |"
            )
        if not any(g["passed"] is not None for g in gate_results):
            lines += ["", "**FAIL**: no gate applies to the suites and modes that ran."]
    return "\n".join(lines) + "\n"


def _run_key(scenario: dict[str, Any]) -> tuple[str, str, str]:
    return (scenario.get("suite", "?"), scenario["scenario_id"], scenario["mode"])


def _read_report(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(
            f"Cannot read the earlier eval report {path}: {exc}. Move it away (or pass another "
            "--out) and run again."
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("suites"), dict):
        raise BadInput(
            f"{path} is not an eval report (no suites). Move it away (or pass another --out) "
            "and run again."
        )
    return data


def baseline(older: dict[str, Any] | None, last: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the next run compares with: per suite and mode, the latest run that had it.

    A run of some suites only (``--suite golden``) must not make the others' figures
    vanish from the comparison: their groups and scenarios are kept from ``older``.
    """
    if last is None or older is None:
        return last or older
    groups = {**older.get("suites", {}), **last.get("suites", {})}
    fresh = set(last.get("suites", {}))
    scenarios = [
        s for s in older.get("scenarios", []) if f"{s.get('suite')}/{s.get('mode')}" not in fresh
    ]
    return {
        **last,
        "suites": dict(sorted(groups.items())),
        "scenarios": scenarios + list(last.get("scenarios", [])),
    }


def earlier_baseline(out_dir: Path) -> dict[str, Any] | None:
    """The baseline the reports in ``out_dir`` give a new run (`BadInput` if unreadable).

    The eval command calls it before it runs anything, so an unreadable earlier report is
    refused before the run, not after it.
    """
    return baseline(_read_report(out_dir / PREVIOUS_JSON), _read_report(out_dir / REPORT_JSON))


def check_writable(out_dir: Path) -> None:
    """Raise `BadInput` unless reports can be written to ``out_dir`` (created if missing).

    The eval command calls it before it runs anything: the run's results were lost to a
    traceback once it had finished.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise BadInput(
            f"Cannot write the eval reports to {out_dir}: {exc}. Pass an --out directory "
            "you can write to."
        ) from exc


def write_reports(
    out_dir: Path, report: dict[str, Any], gate_results: list[dict[str, Any]] | None
) -> tuple[Path, Path, dict[str, Any] | None]:
    """Write both reports and the baseline; return their paths and the baseline used.

    ``eval-report.previous.json`` holds, per suite and mode, the latest report that ran it
    (`baseline`), so comparing a full run after a partial one still covers every suite.
    An unreadable earlier report is refused (`BadInput`) before anything is written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    current = out_dir / REPORT_JSON
    previous = earlier_baseline(out_dir)
    if previous is not None:
        (out_dir / PREVIOUS_JSON).write_text(
            json.dumps(previous, indent=2, default=str) + "\n", encoding="utf-8"
        )
    if gate_results is not None:
        report = {**report, "gates": gate_results}
    current.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    markdown = out_dir / REPORT_MD
    markdown.write_text(render_markdown(report, previous, gate_results), encoding="utf-8")
    return current, markdown, previous
