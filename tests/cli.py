"""Running `payables` in a child process, as a user would, for tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import psycopg

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


def killed(env: dict[str, str], point: str, *args: str) -> None:
    """Run `payables ARGS` with failpoint ``point`` armed and check the process was killed."""
    proc = payables({**env, "PAYABLES_FAILPOINTS": point}, *args)
    assert proc.returncode == -signal.SIGKILL, explain(proc)


def scalar(db_uri: str, sql: str, *params: Any) -> Any:
    """The first column of the first row ``sql`` returns (there must be one)."""
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]
