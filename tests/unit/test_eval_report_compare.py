"""The eval report's comparison with earlier runs covers every suite, whatever ran last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evals.report import PREVIOUS_JSON, REPORT_JSON, REPORT_MD, write_reports
from runtime.errors import BadInput


def _report(created: str, groups: dict[str, dict[str, Any]], passed: dict[str, bool]) -> dict:
    scenarios = []
    for key, ok in passed.items():
        suite, mode, scenario_id = key.split("/")
        scenarios.append(
            {
                "scenario_id": scenario_id,
                "suite": suite,
                "mode": mode,
                "thread_id": f"t-{scenario_id}",
                "passed": ok,
                "failures": [] if ok else ["expected status completed"],
            }
        )
    return {"created_at": created, "modes": ["rules"], "suites": groups, "scenarios": scenarios}


def _markdown(out: Path) -> str:
    return (out / REPORT_MD).read_text(encoding="utf-8")


def test_a_partial_run_does_not_drop_the_other_suites_from_the_next_comparison(
    tmp_path: Path,
) -> None:
    full = _report(
        "t1",
        {
            "golden/rules": {"task_success": 1.0},
            "redteam/rules": {"task_success": 1.0, "attack_success_rate": 0.0},
        },
        {"golden/rules/g1": True, "redteam/rules/r1": True},
    )
    write_reports(tmp_path, full, None)
    golden_only = _report("t2", {"golden/rules": {"task_success": 1.0}}, {"golden/rules/g1": True})
    write_reports(tmp_path, golden_only, None)
    # The red team got worse since its last run (t1), not since the golden-only run (t2).
    worse = _report(
        "t3",
        {
            "golden/rules": {"task_success": 1.0},
            "redteam/rules": {"task_success": 0.5, "attack_success_rate": 0.5},
        },
        {"golden/rules/g1": True, "redteam/rules/r1": False},
    )
    _, _, previous = write_reports(tmp_path, worse, None)
    assert previous is not None and set(previous["suites"]) == {"golden/rules", "redteam/rules"}
    text = _markdown(tmp_path)
    assert "| attack_success_rate | 0.500 | +0.500 **REGRESSION** |" in text, text
    assert "| task_success | 0.500 | -0.500 **REGRESSION** |" in text, text
    assert "- **`r1`** (redteam, rules)" in text, text
    kept = json.loads((tmp_path / PREVIOUS_JSON).read_text(encoding="utf-8"))
    assert {s["scenario_id"] for s in kept["scenarios"]} == {"g1", "r1"}


def test_a_figure_no_longer_measured_is_marked(tmp_path: Path) -> None:
    write_reports(tmp_path, _report("t1", {"golden/rules": {"tool_call_accuracy": 0.9}}, {}), None)
    write_reports(tmp_path, _report("t2", {"golden/rules": {"tool_call_accuracy": None}}, {}), None)
    assert "| tool_call_accuracy | – | was 0.900, now not measured **REGRESSION** |" in (
        _markdown(tmp_path)
    )


def test_an_unreadable_earlier_report_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    (tmp_path / REPORT_JSON).write_text("{not json", encoding="utf-8")
    with pytest.raises(BadInput, match=r"eval-report\.json.*Move it away"):
        write_reports(tmp_path, _report("t1", {"golden/rules": {}}, {}), None)
    assert (tmp_path / REPORT_JSON).read_text(encoding="utf-8") == "{not json"
    assert not (tmp_path / REPORT_MD).exists()
