"""One id joins a run's JSON log lines, its audit rows and its trace: the thread id."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.cli import explain, payables

pytestmark = pytest.mark.integration


def test_json_log_lines_carry_the_thread_id_of_the_audit_rows(
    cli_env: dict[str, str], db_uri: str
) -> None:
    env = {
        **cli_env,
        "PAYABLES_LOG_FORMAT": "json",
        "PAYABLES_LOG_LEVEL": "WARNING",
        "PAYABLES_BUDGET_WARN_FRACTION": "0.1",  # a warning logged from inside the run
    }
    proc = payables(env, "run", "Validate INV-1001", "--user", "clerk-ana", "--json")
    assert proc.returncode == 0, explain(proc)
    thread_id = json.loads(proc.stdout)["thread_id"]
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert lines, explain(proc)
    assert all({"ts", "level", "logger", "message", "thread_id"} <= line.keys() for line in lines)
    in_run = [line for line in lines if line["thread_id"] == thread_id]
    assert any("budget" in line["message"] for line in in_run), lines
    with psycopg.connect(db_uri) as conn:
        audited = conn.execute(
            "SELECT count(*) FROM audit_events WHERE thread_id = %s", (thread_id,)
        ).fetchone()
    assert audited is not None and audited[0] > 0
