"""CLI arguments: whatever a user types, `payables` exits 0, or 2 with a message saying what
to fix, never with a traceback, and a refused command changes nothing.

Most examples run the real Typer app in-process (`typer.testing.CliRunner`, fast) against
the test's database; a few run `payables` as a child process with bytes a shell can pass
(argv that is not UTF-8), where a traceback would reach the user's terminal.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import Result
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from runtime.agent import open_agent
from runtime.cli import app
from state.db import Database
from state.world import SAMPLE_WORLD_PATH
from tests.cli import explain, payables
from tests.property.checks import VALID_STATUSES, db_examples, rows
from tests.property.strategies import (
    JSON_VALUES,
    is_json_text,
    mutations_of,
    nasty_text,
    storable,
)
from tests.property.test_world_files import FILE_TEXTS, WORLDS

REQUESTER = "clerk-ana"

# argv cannot carry NUL (exec refuses it); anything else may arrive, ids included.
ARG_TEXT = nasty_text(max_size=30).filter(lambda t: "\x00" not in t)
ID_TEXT = ARG_TEXT


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_clean_exit(result: Result, codes: set[int] = {0, 2}) -> None:  # noqa: B006
    """Exit with a known code; an exception other than an exit is a traceback for a user."""
    detail = f"exit {result.exit_code}\n{result.output[-2000:]}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    assert result.exit_code in codes, detail
    assert "Traceback" not in result.output, detail
    if result.exit_code == 2:
        assert result.stderr.strip(), detail  # says what to fix


def _interrupted_thread(db_uri: str) -> str:
    async def go() -> str:
        async with open_agent(database=Database(db_uri, max_size=2)) as agent:
            view = await agent.start("Validate INV-1001 and pay it if it matches", user=REQUESTER)
        assert view["status"] == "interrupted", view
        return str(view["thread_id"])

    return asyncio.run(go())


def _list_of_non_objects(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, list) and not all(isinstance(v, dict) for v in value)


EDIT_ARGS = {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"}
EDITS = st.one_of(
    mutations_of(EDIT_ARGS).filter(is_json_text).map(json.dumps),
    JSON_VALUES.filter(is_json_text).map(json.dumps),
    ARG_TEXT,
    st.sampled_from(['[{"type": "approve"}]', "[]", "{}", '"x"', '[{"edited_action": 5}]']),
).filter(lambda text: not _list_of_non_objects(text))
DECISION_FLAGS = st.one_of(
    st.just(["--approve"]),
    ARG_TEXT.map(lambda reason: ["--reject", reason]),
    EDITS.map(lambda edit: ["--edit", edit]),
    st.lists(
        st.sampled_from(["--approve", "--reject", "why", "--edit", "{}"]), min_size=0, max_size=3
    ),
)
ROLES = st.one_of(st.sampled_from(["clerk", "approver", "controller"]), ARG_TEXT)


def test_resume_with_generated_arguments_exits_cleanly_and_a_refusal_changes_nothing(
    cli_database: str,
) -> None:
    current: dict[str, str] = {}
    accepted: list[str] = []

    @settings(max_examples=db_examples(25))
    @given(ARG_TEXT, ROLES, DECISION_FLAGS, st.booleans())
    @example("rev-1", "approver", ["--edit", '[{"edited_action": 5, "type": "edit"}]'], False)
    @example("rev\udcff", "approver", ["--approve"], False)
    @example("rev-1", "approver", ["--reject", "no\udcff"], False)
    @example(REQUESTER, "controller", ["--approve"], True)
    # `--reject --json`: the option is not taken as the reason (nothing is recorded).
    @example("rev-1", "approver", ["--reject"], True)
    def resume_one(reviewer: str, role: str, flags: list[str], as_json: bool) -> None:
        if "thread" not in current:
            current["thread"] = _interrupted_thread(cli_database)
        thread = current["thread"]
        decided = "SELECT count(*) FROM approval_decisions WHERE thread_id = %s"
        result = invoke(
            "resume",
            thread,
            "--reviewer",
            reviewer,
            "--role",
            role,
            *flags,
            *(["--json"] if as_json else []),
        )
        assert_clean_exit(result)
        if result.exit_code == 2:
            assert rows(cli_database, decided, thread) == [(0,)]
            shown = invoke("show", thread, "--json")
            assert_clean_exit(shown, {0})
            assert json.loads(shown.stdout)["status"] == "interrupted"
            return
        # Accepted: the decision is on record; the thread is spent, start another.
        accepted.append(reviewer)
        assert rows(cli_database, decided, thread) != [(0,)]
        if as_json:
            assert json.loads(result.stdout)["status"] in VALID_STATUSES
        reseed = invoke("seed", "--discard-history")  # an accepted payment stays otherwise
        assert_clean_exit(reseed, {0})
        del current["thread"]

    resume_one()
    assert accepted, "no generated resume was accepted; that branch went untested"


def test_resume_show_and_continue_on_unknown_threads_exit_2(cli_database: str) -> None:
    @settings(max_examples=db_examples(15))
    @given(
        ID_TEXT.filter(lambda t: not t.startswith("-")),
        st.sampled_from(
            [
                (["resume"], ["--approve", "--reviewer", "rev-1"]),
                (["show"], []),
                (["show"], ["--history", "--json"]),
                (["continue"], []),
                (["audit", "show"], []),
            ]
        ),
    )
    @example("", (["show"], []))
    @example("[bold]x[/]", (["show"], []))
    @example("\ud800", (["audit", "show"], []))  # found by CI: audit show skipped the id check
    def unknown(thread: str, command: tuple[list[str], list[str]]) -> None:
        head, rest = command
        result = invoke(*head, thread, *rest)
        assert_clean_exit(result, {2})

    unknown()


# Requests and users, including text Postgres cannot store (lone surrogates from argv).
RUN_TEXT = st.one_of(
    ARG_TEXT,
    st.builds(lambda noise: f"Validate INV-1002 {noise}", ARG_TEXT),
    st.sampled_from(["", " ", "What is our price variance tolerance?", "x" * 9000]),
).filter(storable)


def test_run_with_odd_text_ends_in_a_valid_status_or_exits_2(cli_database: str) -> None:
    @settings(max_examples=db_examples(15))
    @given(
        RUN_TEXT.filter(lambda t: not t.startswith("-")),
        st.one_of(st.just("clerk-ana"), ARG_TEXT.filter(lambda t: storable(t) and t[:1] != "-")),
    )
    @example("Validate INV-1002", "")
    @example("Validate INV-1002\u202e", "clerk-ana")
    def run_one(request: str, user: str) -> None:
        result = invoke("run", request, "--user", user, "--json")
        assert_clean_exit(result)
        if result.exit_code == 0:
            view = json.loads(result.stdout)
            assert view["status"] in VALID_STATUSES, view

    run_one()


def test_run_with_a_thread_id_that_exists_exits_2(cli_database: str) -> None:
    thread = _interrupted_thread(cli_database)
    result = invoke("run", "Validate INV-1002", "--thread", thread)
    assert_clean_exit(result, {2})
    assert "already exists" in result.stderr


_WORLD_TABLES = ("vendors", "invoices", "payments", "purchase_orders", "policy_passages")


def _world(uri: str) -> dict[str, list[Any]]:
    return {t: rows(uri, f"SELECT * FROM {t} ORDER BY 1") for t in _WORLD_TABLES}


def test_seed_with_generated_world_files_loads_whole_or_changes_nothing(
    cli_database: str, tmp_path: Path
) -> None:
    @settings(max_examples=db_examples(20))
    @given(st.one_of(FILE_TEXTS, WORLDS.filter(is_json_text).map(json.dumps)))
    @example("[" * 100_000)
    @example('{"vendors": [' + "9" * 5000 + "]}")
    @example(SAMPLE_WORLD_PATH.read_text().replace("Acme", "Ac\\u0000me", 1))
    def seed_one(text: str) -> None:
        path = tmp_path / "world.json"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        before = _world(cli_database)
        result = invoke("seed", "--world", str(path), "--json")
        assert_clean_exit(result)
        if result.exit_code == 2:
            assert _world(cli_database) == before
        else:
            loaded = json.loads(result.stdout)["loaded"]
            assert loaded["vendors"] == len(_world(cli_database)["vendors"])

    seed_one()
    assert_clean_exit(invoke("seed", "--world", str(tmp_path / "missing.json")), {2})
    assert_clean_exit(invoke("seed", "--world", str(tmp_path)), {2})


def test_resume_edit_with_a_list_of_non_objects_exits_2(cli_database: str) -> None:
    thread = _interrupted_thread(cli_database)
    for edit in ("[1, 2]", "[null]", '["approve"]', "[[]]"):
        result = invoke("resume", thread, "--reviewer", "rev-1", "--edit", edit)
        assert_clean_exit(result, {2})


# --- real child processes ------------------------------------------------------------------


def test_child_process_deeply_nested_world_file_exits_2_without_a_traceback(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Nesting deep enough to exhaust Python's recursion limit in json.loads.
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    proc = payables(cli_env, "seed", "--world", str(deep))
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    assert "nests" in proc.stderr, explain(proc)


def test_child_process_reviewer_id_from_bytes_that_are_not_utf8_is_refused(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = _interrupted_thread(db_uri)
    # Python turns argv bytes that are not UTF-8 into lone surrogates (surrogateescape);
    # subprocess turns them back into those bytes.
    proc = payables(cli_env, "resume", thread, "--approve", "--reviewer", "rev\udcff")
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    assert rows(db_uri, "SELECT 1 FROM approval_decisions WHERE thread_id = %s", thread) == []


def test_child_process_thread_id_from_bytes_that_are_not_utf8_exits_2(
    cli_env: dict[str, str],
) -> None:
    proc = payables(cli_env, "show", "thread-\udcff")
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
