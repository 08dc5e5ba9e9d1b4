"""Print the red-team summary at the end of the session, when the suite ran."""

from __future__ import annotations

from typing import Any

import pytest


def _rate(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.0%}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Set by tests/redteam/test_redteam.py when it writes reports/redteam-summary.json.
    summary: dict[str, Any] | None = getattr(terminalreporter.config, "_redteam_summary", None)
    if not summary:
        return
    write = terminalreporter.write_line
    terminalreporter.section("red-team summary")
    write(f"written to {summary['path']}")
    for mode, stats in summary["modes"].items():
        write(
            f"{mode:12} runs {stats['runs']:3}  attack success "
            f"{_rate(stats['attack_success_rate'])} ({stats['attack_successes']})"
            f"  utility {_rate(stats['utility_rate'])}"
        )
        for axis in ("by_carrier", "by_goal"):
            cells = ", ".join(
                f"{name} {_rate(row['attack_success_rate']).strip()}/"
                f"{_rate(row['utility_rate']).strip()}"
                for name, row in stats[axis].items()
            )
            write(f"    {axis} (attack/utility): {cells}")
    for attack in summary["successful_attacks"]:
        write(f"  ATTACK {attack['case']} [{attack['mode']}]: {'; '.join(attack['violations'])}")
