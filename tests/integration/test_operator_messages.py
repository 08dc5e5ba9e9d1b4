"""What an operator is told when a command cannot do what was asked: a message, no traceback.

Each case here once ended in a traceback or in advice that led nowhere (a "No thread" for a
thread `payables threads` lists, "already resolved" for a run that still has to finish).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psycopg
import pytest

from runtime.agent import open_agent
from state.db import Database
from tests.cli import explain, payables, payables_json, scalar

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PAY_REQUEST = "Validate INV-1001 and pay it if it matches"
APPROVE = ("--approve", "--reviewer", "rev-1", "--role", "approver")


async def pruned_thread(cli_env: dict[str, str], db_uri: str, database: Database) -> str:
    """A thread that finished 40 days ago and was pruned: its run index row stays."""
    async with open_agent(database=database) as agent:
        old = await agent.start("Validate INV-1002", user="clerk-ana")
    assert old["status"] == "completed", old
    with psycopg.connect(db_uri, autocommit=True) as conn:
        conn.execute(
            "UPDATE runs SET updated_at = now() - interval '40 days' WHERE thread_id = %s",
            (old["thread_id"],),
        )
    assert payables_json(cli_env, "prune", "--older-than", "30")["pruned"]["threads"] == 1
    return str(old["thread_id"])


@pytest.mark.parametrize("how", ["flag", "env"])
def test_prune_with_an_age_past_the_calendar_says_what_is_allowed(
    cli_env: dict[str, str], how: str
) -> None:
    if how == "flag":
        proc = payables(cli_env, "prune", "--older-than", "1000000", "--dry-run")
    else:
        proc = payables({**cli_env, "PAYABLES_RETENTION_DAYS": "1000000"}, "prune", "--dry-run")
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    assert "36500" in " ".join(proc.stderr.split()), explain(proc)


@pytest.mark.parametrize(
    ("uri", "command", "code", "says"),
    [
        ("postgresql://postgres@127.0.0.1:1/payables", ("db", "status"), 1, "Cannot reach"),
        ("postgres:/localhost/payables", ("db", "status"), 2, "not a Postgres connection"),
        ("postgres:/localhost/payables", ("db", "url"), 2, "not a Postgres connection"),
        ("postgres:/localhost/payables", ("threads",), 2, "not a Postgres connection"),
    ],
)
@pytest.mark.parametrize("variable", ["DATABASE_URI", "PAYABLES_DATABASE_URI"])
def test_a_bad_or_unreachable_database_uri_is_named(
    cli_env: dict[str, str],
    uri: str,
    command: tuple[str, ...],
    code: int,
    says: str,
    variable: str,
) -> None:
    # PAYABLES_DATABASE_URI wins over a good DATABASE_URI: the CLI once ignored it outside
    # `langgraph dev`, and `seed --discard-history` replaced the embedded database's world.
    proc = payables({**cli_env, variable: uri}, *command)
    assert proc.returncode == code, explain(proc)
    assert "Traceback" not in proc.stderr and says in " ".join(proc.stderr.split()), explain(proc)


@pytest.mark.parametrize("where", ["missing parent", "a file"])
def test_an_unusable_data_dir_is_named_with_what_to_do(
    cli_env: dict[str, str], tmp_path: Path, where: str
) -> None:
    if where == "a file":
        data_dir = tmp_path / "data"
        data_dir.write_text("not a folder")
    else:
        data_dir = Path("/proc/no-such-dir/data")
    env = {k: v for k, v in cli_env.items() if k != "DATABASE_URI"}
    proc = payables({**env, "PAYABLES_DATA_DIR": str(data_dir)}, "threads")
    assert proc.returncode == 2, explain(proc)
    text = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and "(PAYABLES_DATA_DIR)" in text, explain(proc)
    assert "Point PAYABLES_DATA_DIR at a folder you can write" in text


def test_the_cli_uses_and_names_payables_database_uri(cli_env: dict[str, str], db_uri: str) -> None:
    env = {k: v for k, v in cli_env.items() if k != "DATABASE_URI"}
    proc = payables({**env, "PAYABLES_DATABASE_URI": db_uri}, "db", "status", "--json")
    assert proc.returncode == 0, explain(proc)
    status = json.loads(proc.stdout)
    assert (status["embedded"], status["uri_from"]) == (False, "PAYABLES_DATABASE_URI"), status


@pytest.mark.parametrize("command", [("continue",), ("resume", *APPROVE)])
async def test_a_pruned_thread_is_said_to_be_pruned(
    cli_env: dict[str, str], db_uri: str, database: Database, command: tuple[str, ...]
) -> None:
    thread = await pruned_thread(cli_env, db_uri, database)
    proc = payables(cli_env, command[0], thread, *command[1:])
    assert proc.returncode == 2, explain(proc)
    text = " ".join(proc.stderr.split())
    assert "was pruned on" in text and "No thread" not in text, text


async def test_a_pruned_thread_id_is_not_reused_for_a_new_request(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    """Its run index row, approvals and audit rows outlive the checkpoints."""
    thread = await pruned_thread(cli_env, db_uri, database)
    proc = payables(cli_env, "run", PAY_REQUEST, "--thread", thread, "--user", "clerk-ben")
    assert proc.returncode == 2, explain(proc)
    assert "thread ids are not reused" in " ".join(proc.stderr.split()), explain(proc)
    assert scalar(db_uri, "SELECT request FROM runs WHERE thread_id = %s", thread) == (
        "Validate INV-1002"
    )


def test_resume_after_a_crash_past_the_approval_points_to_continue(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = payables_json(cli_env, "run", PAY_REQUEST, "--user", "clerk-ana")["thread_id"]
    # The reviewer's process dies after the decision was checkpointed, before the payment.
    proc = payables(
        {**cli_env, "PAYABLES_FAILPOINTS": "before:executor"}, "resume", thread, *APPROVE
    )
    assert proc.returncode == -signal.SIGKILL, explain(proc)
    # The index no longer says it waits for an approval: `threads` agrees with `show`.
    listed = {r["thread_id"]: r["status"] for r in payables_json(cli_env, "threads")["threads"]}
    assert listed[thread] == payables_json(cli_env, "show", thread)["status"] == "running"
    again = payables(cli_env, "resume", thread, *APPROVE)
    assert again.returncode == 2, explain(again)
    text = " ".join(again.stderr.split())
    assert "already resolved" not in text and f"continue {thread}" in text, text
    assert payables_json(cli_env, "continue", thread)["status"] == "completed"
    assert scalar(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'") == 1


def test_resume_names_the_roles_a_reviewer_can_sign_as(cli_env: dict[str, str]) -> None:
    proc = payables(
        cli_env, "resume", "t-any", "--approve", "--reviewer", "r", "--role", "reviewer"
    )
    assert proc.returncode == 2, explain(proc)
    text = " ".join(proc.stderr.split())
    assert "--role must be one of approver, clerk, controller, got reviewer" in text, text


@pytest.mark.parametrize("reviewer", ["", "ana lee", "ana\x1b[2J"])
def test_resume_names_the_reviewer_flag_for_a_bad_id(
    cli_env: dict[str, str], reviewer: str
) -> None:
    # The flag the reviewer typed is what to fix, not the resume JSON it becomes.
    proc = payables(cli_env, "resume", "t-any", "--approve", "--reviewer", reviewer)
    assert proc.returncode == 2, explain(proc)
    text = " ".join(proc.stderr.split())
    assert "--reviewer must be your reviewer id" in text, text
    assert "Malformed resume" not in text, text


@pytest.mark.parametrize("user", ["", "ana lee"])
def test_run_names_the_user_flag_for_a_bad_id(
    cli_env: dict[str, str], db_uri: str, user: str
) -> None:
    # An empty --user was recorded as "anonymous": a request nobody on record made.
    proc = payables(cli_env, "run", "Validate INV-1002", "--user", user)
    assert proc.returncode == 2, explain(proc)
    assert "--user must be who is asking" in " ".join(proc.stderr.split()), explain(proc)
    assert scalar(db_uri, "SELECT count(*) FROM runs") == 0


async def test_approvals_lists_the_others_when_an_interrupted_thread_was_deleted(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    # A thread deleted through the server API keeps its run index row: `payables approvals`
    # ended with "No thread ..." and listed nothing.
    async with open_agent(database=database) as agent:
        kept = await agent.start("Pay INV-1001", user="clerk-ana")
        gone = await agent.start("Pay INV-1002", user="clerk-ana")
    assert kept["status"] == gone["status"] == "interrupted"
    with psycopg.connect(db_uri, autocommit=True) as conn:
        for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
            conn.execute(f"DELETE FROM {table} WHERE thread_id = %s", (gone["thread_id"],))
    listed = payables(cli_env, "approvals", "--json")
    assert listed.returncode == 0, explain(listed)
    assert kept["thread_id"] in listed.stdout and gone["thread_id"] not in listed.stdout
    assert f"thread {gone['thread_id']} is interrupted in the run index" in listed.stderr
