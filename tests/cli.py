"""Running `payables` in a child process, as a user would, for tests."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from runtime.settings import PROJECT_ROOT

CLI_TIMEOUT_S = 120


def payables(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `payables ARGS` in a new interpreter and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-3000:]}"
    )


def payables_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run `payables ARGS --json`, require exit 0, and return the printed object."""
    proc = payables(env, *args, "--json")
    assert proc.returncode == 0, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    value = json.loads(proc.stdout)
    assert isinstance(value, dict)
    return value


def payables_fails(env: dict[str, str], *args: str, code: int = 2) -> str:
    """Run `payables ARGS`, require exit ``code``, and return stderr."""
    proc = payables(env, *args)
    assert proc.returncode == code, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    return proc.stderr
