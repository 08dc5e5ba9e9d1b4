"""Dead letters on a real Postgres: list, show and replay through the CLI, as an operator.

The failures are real: a ``raise:`` failpoint (`runtime.failpoints`) makes a step fail the
way an unexpected bug does, in a child process; the agent records the dead letter itself.
A SIGKILL failpoint kills a replay mid-way. Only the start that failed before its first
checkpoint (the database refused that first write) is recorded by hand, with the payload
the agent stores.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, get_args

import psycopg
import pytest

from guards.redaction import find_unmasked
from runtime.agent import context_payload, open_agent
from runtime.context import Context
from runtime.replay import replay_context, replay_dead_letter
from state.db import Database
from state.deadletters import claim_dead_letter, get_dead_letter, record_dead_letter
from state.routes import FINISHED_STATUSES, RunStatus
from state.runs import record_run
from tests.cli import explain, killed, payables, payables_fails, payables_json, scalar

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PAY_REQUEST = "Validate INV-1001 and pay it if it matches"
APPROVE = ("--approve", "--reviewer", "rev-1", "--role", "approver")
ACCOUNT = "NL23KNAB0257394811"


def payments(db_uri: str, invoice: str) -> int:
    return int(scalar(db_uri, "SELECT count(*) FROM payments WHERE invoice_id = %s", invoice))


def dead_letter_row(db_uri: str, dead_letter_id: int) -> dict[str, Any]:
    with psycopg.connect(db_uri) as conn:
        cur = conn.execute(
            "SELECT thread_id, action, step, status, replay_note, payload FROM dead_letters"
            " WHERE dead_letter_id = %s",
            (dead_letter_id,),
        )
        row = cur.fetchone()
    assert row is not None
    keys = ("thread_id", "action", "step", "status", "replay_note", "payload")
    return dict(zip(keys, row, strict=True))


def plain(text: str) -> str:
    """CLI text without the terminal's line wrapping."""
    return " ".join(text.split())


def fails_at(env: dict[str, str], point: str, *args: str) -> str:
    """Run `payables ARGS` with a ``raise:`` failpoint; require exit 1; return stderr."""
    proc = payables({**env, "PAYABLES_FAILPOINTS": point}, *args)
    assert proc.returncode == 1, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    return plain(proc.stderr)


def only_open_dead_letter(env: dict[str, str]) -> dict[str, Any]:
    listed = payables_json(env, "deadletters", "list")["dead_letters"]
    assert len(listed) == 1, listed
    row: dict[str, Any] = listed[0]
    assert row["status"] == "open"
    return row


async def test_a_failure_after_the_payment_replays_to_exactly_one_payment(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = payables_json(cli_env, "run", PAY_REQUEST, "--user", "clerk-ana")["thread_id"]
    stderr = fails_at(cli_env, "raise:after_commit:schedule_payment", "resume", thread, *APPROVE)
    assert "Recorded as dead letter 1" in stderr and "deadletters replay 1" in stderr
    assert payments(db_uri, "INV-1001") == 1

    listed = only_open_dead_letter(cli_env)
    assert (listed["dead_letter_id"], listed["thread_id"]) == (1, thread)
    assert (listed["action"], listed["step"]) == ("resume", "executor")
    assert listed["error_class"] == "runtime.failpoints.FailpointError"
    shown = payables_json(cli_env, "deadletters", "show", "1")
    assert shown["payload"]["input"]["value"]["reviewer"]["id"] == "rev-1"
    assert shown["payload"]["context"]["tenant"] == "default"
    text = payables(cli_env, "deadletters", "list")
    assert text.returncode == 0 and thread in text.stdout, explain(text)

    replay = payables_json(cli_env, "deadletters", "replay", "1")
    assert (replay["outcome"], replay["how"]) == ("replayed", "continue")
    assert replay["view"]["status"] == "completed", replay["view"]["reason"]
    calls = [c for c in replay["view"]["result"]["tool_calls"] if c["tool"] == "schedule_payment"]
    assert [c["replayed"] for c in calls] == [True]
    assert payments(db_uri, "INV-1001") == 1
    assert (
        scalar(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE tool = 'schedule_payment' AND thread_id = %s",
            thread,
        )
        == 1
    )
    assert dead_letter_row(db_uri, 1)["status"] == "replayed"
    assert payables_json(cli_env, "deadletters", "list")["dead_letters"] == []
    everything = payables_json(cli_env, "deadletters", "list", "--all")["dead_letters"]
    assert [d["status"] for d in everything] == ["replayed"]

    again = plain(payables_fails(cli_env, "deadletters", "replay", "1"))
    assert "already handled (replayed" in again and "--force" in again
    forced = payables_json(cli_env, "deadletters", "replay", "1", "--force")
    assert (forced["outcome"], forced["how"]) == ("resolved", "nothing")
    assert "already finished" in forced["note"]
    assert payments(db_uri, "INV-1001") == 1


def test_unknown_dead_letter_is_bad_input(cli_env: dict[str, str]) -> None:
    for command in ("show", "replay"):
        stderr = plain(payables_fails(cli_env, "deadletters", command, "4242"))
        assert "No dead letter 4242" in stderr and "deadletters list --all" in stderr
    assert "valid integer" in plain(payables_fails(cli_env, "deadletters", "replay", "x"))


async def test_a_replay_that_fails_again_leaves_a_new_dead_letter(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "fails-again"
    run = ("run", "Validate INV-1002", "--user", "clerk-ana", "--thread", thread)
    fails_at(cli_env, "raise:before:verifier", *run)
    first = only_open_dead_letter(cli_env)["dead_letter_id"]

    stderr = fails_at(cli_env, "raise:before:verifier", "deadletters", "replay", str(first))
    assert f"Dead letter {first}: replay with `continue` failed again" in stderr
    assert "FailpointError" in stderr
    old = dead_letter_row(db_uri, first)
    assert old["status"] == "failed_again"
    second = only_open_dead_letter(cli_env)["dead_letter_id"]
    assert f"see dead letter {second}" in old["replay_note"]
    new = dead_letter_row(db_uri, second)
    assert (new["thread_id"], new["action"], new["step"]) == (thread, "replay", "verifier")
    assert new["payload"]["replay_of"] == first
    assert "already handled (failed_again" in plain(
        payables_fails(cli_env, "deadletters", "replay", str(first))
    )

    replay = payables_json(cli_env, "deadletters", "replay", str(second))
    assert replay["outcome"] == "replayed"
    assert replay["view"]["status"] == "completed", replay["view"]["reason"]
    assert payables_json(cli_env, "deadletters", "list")["dead_letters"] == []


async def test_a_replay_killed_midway_leaves_the_dead_letter_open(
    cli_env: dict[str, str], db_uri: str
) -> None:
    thread = "killed-replay"
    run = ("run", "Validate INV-1002", "--user", "clerk-ana", "--thread", thread)
    fails_at(cli_env, "raise:before:verifier", *run)
    number = only_open_dead_letter(cli_env)["dead_letter_id"]

    killed(cli_env, "verifier", "deadletters", "replay", str(number))
    assert dead_letter_row(db_uri, number)["status"] == "open"

    replay = payables_json(cli_env, "deadletters", "replay", str(number))
    assert (replay["outcome"], replay["how"]) == ("replayed", "continue")
    assert replay["view"]["status"] == "completed", replay["view"]["reason"]
    assert (
        scalar(
            db_uri,
            "SELECT count(*) FROM tool_calls WHERE tool = 'stage_invoice' AND thread_id = %s",
            thread,
        )
        == 1
    )


async def test_replay_does_not_answer_an_approval_for_the_reviewer(
    cli_env: dict[str, str], db_uri: str
) -> None:
    """The resume failed before its answer was recorded: the approval is pending again."""
    thread = payables_json(cli_env, "run", PAY_REQUEST, "--user", "clerk-ana")["thread_id"]
    failed = fails_at(cli_env, "raise:before:approval", "resume", thread, *APPROVE)
    number = only_open_dead_letter(cli_env)["dead_letter_id"]
    assert scalar(db_uri, DECISIONS, thread) == 0
    # The reviewer is told to answer again, not to replay (which would not answer for them).
    assert "Your answer was not recorded: the approval is still pending" in failed, failed
    assert f"answer it again with `payables resume {thread}`" in failed, failed
    assert "deadletters replay" not in failed, failed

    replay = payables_json(cli_env, "deadletters", "replay", str(number))
    assert (replay["outcome"], replay["how"]) == ("resolved", "nothing")
    assert f"payables resume {thread}" in replay["note"]
    assert replay["view"]["status"] == "interrupted"
    assert payments(db_uri, "INV-1001") == 0
    assert dead_letter_row(db_uri, number)["status"] == "resolved"

    done = payables_json(cli_env, "resume", thread, *APPROVE)
    assert done["status"] == "completed"
    assert payments(db_uri, "INV-1001") == 1


DECISIONS = "SELECT count(*) FROM approval_decisions WHERE thread_id = %s"


@pytest.mark.parametrize(
    ("answer", "paid"), [(APPROVE, 1), (("--reject", "not ours", *APPROVE[1:]), 0)]
)
async def test_replay_finishes_a_run_whose_answer_was_recorded_before_it_failed(
    cli_env: dict[str, str], db_uri: str, answer: tuple[str, ...], paid: int
) -> None:
    """The approval step failed after the reviewer's answer committed, before its checkpoint.

    The checkpoint still shows the interrupt, but the answer is the reviewer's and stands:
    the replay finishes the run from it, as `payables continue` does (before, it told the
    operator the thread waits for an approval, and a second answer would be refused).
    """
    thread = payables_json(cli_env, "run", PAY_REQUEST, "--user", "clerk-ana")["thread_id"]
    failed = fails_at(cli_env, "raise:after:approval", "resume", thread, *answer)
    number = only_open_dead_letter(cli_env)["dead_letter_id"]
    assert scalar(db_uri, DECISIONS, thread) == 1
    assert f"`payables deadletters replay {number}` finishes it" in failed, failed

    replay = payables_json(cli_env, "deadletters", "replay", str(number))
    assert (replay["outcome"], replay["how"]) == ("replayed", "continue"), replay
    assert replay["view"]["status"] == "completed", replay["view"]
    assert payments(db_uri, "INV-1001") == paid
    assert scalar(db_uri, DECISIONS, thread) == 1
    assert dead_letter_row(db_uri, number)["status"] == "replayed"
    if not paid:
        assert replay["view"]["result"]["outcome"] == "rejected_by_reviewer"


async def test_dead_letters_never_show_a_full_account_number(
    cli_env: dict[str, str], db_uri: str
) -> None:
    request = f"Change the bank account of vendor V-006 to {ACCOUNT}"
    fails_at(cli_env, "raise:before:planner", "run", request, "--user", "clerk-ana")
    number = only_open_dead_letter(cli_env)["dead_letter_id"]

    for args in (("show", str(number), "--json"), ("show", str(number)), ("list", "--json")):
        proc = payables(cli_env, "deadletters", *args)
        assert proc.returncode == 0, explain(proc)
        assert find_unmasked(proc.stdout) == [], args
    payload = dead_letter_row(db_uri, number)["payload"]
    assert payload["redacted"] == ["input"]
    assert payload["input"]["request"].endswith("****4811")
    # The checkpoint holds the clerk's words in full: the replay continues from it.
    replay = payables_json(cli_env, "deadletters", "replay", str(number))
    assert (replay["outcome"], replay["how"]) == ("replayed", "continue")
    assert replay["view"]["status"] == "interrupted"
    assert "update_vendor_bank_account" in [
        a["action"] for a in replay["view"]["pending_approvals"]
    ]


async def start_dead_letter(
    database: Database, thread: str, request: str, context: Context | None = None
) -> int:
    """A start that failed before its first checkpoint, as the agent records it."""
    value = {"request": request, "user": "clerk-ana", "attachments": []}
    return await record_dead_letter(
        database,
        thread_id=thread,
        tenant="default",
        action="start",
        step=None,
        error=ConnectionResetError("server closed the connection unexpectedly"),
        attempts=1,
        payload={
            "action": "start",
            "input": value,
            "checkpoint_id": None,
            "next": [],
            "context": context_payload(context or Context()),
        },
    )


async def test_a_start_without_a_checkpoint_is_started_again_unless_its_input_was_masked(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    number = await start_dead_letter(database, "never-checkpointed", "Validate INV-1002")
    replay = payables_json(cli_env, "deadletters", "replay", str(number))
    assert (replay["outcome"], replay["how"]) == ("replayed", "start")
    assert (replay["thread_id"], replay["view"]["user"]) == ("never-checkpointed", "clerk-ana")
    assert replay["view"]["status"] == "completed", replay["view"]["reason"]
    staged = "SELECT count(*) FROM invoices WHERE invoice_id = 'INV-1002' AND status = 'staged'"
    assert scalar(db_uri, staged) == 1

    masked = await start_dead_letter(
        database, "masked-start", f"Change the bank account of vendor V-006 to {ACCOUNT}"
    )
    stderr = plain(payables_fails(cli_env, "deadletters", "replay", str(masked)))
    assert "masked" in stderr and "run it again" in stderr
    assert dead_letter_row(db_uri, masked)["status"] == "open"
    assert scalar(db_uri, "SELECT count(*) FROM runs WHERE thread_id = 'masked-start'") == 0


async def test_two_replays_of_one_dead_letter_cannot_run_together(
    cli_env: dict[str, str], db_uri: str, database: Database
) -> None:
    number = await start_dead_letter(database, "held", "Validate INV-1002")
    async with claim_dead_letter(database, number):
        stderr = plain(payables_fails(cli_env, "deadletters", "replay", str(number)))
    assert "being replayed by another process" in stderr
    assert scalar(db_uri, "SELECT count(*) FROM runs WHERE thread_id = 'held'") == 0
    assert dead_letter_row(db_uri, number)["status"] == "open"


async def test_a_thread_finished_by_a_later_run_closes_its_dead_letters(
    cli_env: dict[str, str], db_uri: str
) -> None:
    """Resuming again (or `continue`) finishes the thread; its dead letters do not linger."""
    thread = "recovers"
    run = ("run", PAY_REQUEST, "--user", "clerk-ana", "--thread", thread)
    fails_at(cli_env, "raise:before:verifier", *run)
    failed_start = only_open_dead_letter(cli_env)["dead_letter_id"]

    paused = payables_json(cli_env, "continue", thread)
    assert paused["status"] == "interrupted"
    # Paused at an approval, the thread has not got past everything yet: still open.
    assert dead_letter_row(db_uri, failed_start)["status"] == "open"
    fails_at(cli_env, "raise:after:approval", "resume", thread, *APPROVE)
    listed = payables_json(cli_env, "deadletters", "list")["dead_letters"]
    failed_resume = max(d["dead_letter_id"] for d in listed)
    assert sorted(d["dead_letter_id"] for d in listed) == [failed_start, failed_resume]

    done = payables_json(cli_env, "resume", thread, *APPROVE)
    assert done["status"] == "completed", done["reason"]
    assert payments(db_uri, "INV-1001") == 1
    assert payables_json(cli_env, "deadletters", "list")["dead_letters"] == []
    for number in (failed_start, failed_resume):
        row = dead_letter_row(db_uri, number)
        assert row["status"] == "resolved"
        assert (
            row["replay_note"]
            == f"not replayed: thread {thread} finished (completed) by a later run"
        )
    again = plain(payables_fails(cli_env, "deadletters", "replay", str(failed_resume)))
    assert "already handled (resolved" in again
    forced = payables_json(cli_env, "deadletters", "replay", str(failed_resume), "--force")
    assert (forced["outcome"], forced["how"]) == ("resolved", "nothing")
    assert payments(db_uri, "INV-1001") == 1


async def test_only_a_final_status_in_the_run_index_resolves_the_threads_dead_letters(
    database: Database, db_uri: str
) -> None:
    """Every status a run can record; the LangGraph server's runs record theirs the same way."""
    for status in get_args(RunStatus):
        thread = f"status-{status}"
        number = await start_dead_letter(database, thread, "Validate INV-1002")
        other_threads_letter = await start_dead_letter(
            database, f"other-{status}", "Validate INV-1002"
        )
        await record_run(
            database,
            thread_id=thread,
            request="Validate INV-1002",
            requester="clerk-ana",
            tenant="default",
            route="validate",
            status=status,
        )
        expected = "resolved" if status in FINISHED_STATUSES else "open"
        assert dead_letter_row(db_uri, number)["status"] == expected, status
        assert dead_letter_row(db_uri, other_threads_letter)["status"] == "open", status


async def test_the_run_a_replay_drives_does_not_wait_for_the_replays_own_claim(
    database: Database, db_uri: str
) -> None:
    """A replay holds its dead letter locked while its run ends; that run must not block."""
    replayed = await start_dead_letter(database, "replaying", "Validate INV-1002")
    older = await start_dead_letter(database, "replaying", "Validate INV-1002")
    async with claim_dead_letter(database, replayed) as claim:
        finished = record_run(
            database,
            thread_id="replaying",
            request="Validate INV-1002",
            requester="clerk-ana",
            tenant="default",
            route="validate",
            status="completed",
        )
        await asyncio.wait_for(finished, timeout=30)
        await claim.finish("replayed", "replayed with `start`: the run is now completed")
    assert dead_letter_row(db_uri, replayed)["status"] == "replayed"
    assert dead_letter_row(db_uri, older)["status"] == "resolved"


def test_show_prints_the_payload_as_json(cli_env: dict[str, str]) -> None:
    fails_at(
        cli_env,
        "raise:before:verifier",
        *("run", "Validate INV-1002", "--user", "clerk-ana", "--thread", "t-show"),
    )
    proc = payables(cli_env, "deadletters", "show", "1")
    assert proc.returncode == 0, explain(proc)
    assert "thread   t-show" in proc.stdout and "FailpointError" in proc.stdout
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["action"] == "start"


async def test_a_replay_applies_the_thresholds_in_the_currency_the_run_was_started_under(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval currency and FX rates are thresholds too: they come from the dead letter.

    Started with thresholds stated in EUR and no USD rate, a USD payment cannot be held
    to them and needs dual control. The replay runs where the environment says USD (the
    default); it must still ask for what the original run would have asked for.
    """
    recorded = Context(approval_currency="EUR", fx_rates="GBP=1.17")
    number = await start_dead_letter(database, "eur-thresholds", PAY_REQUEST, recorded)
    monkeypatch.delenv("PAYABLES_APPROVAL_CURRENCY", raising=False)
    monkeypatch.delenv("PAYABLES_FX_RATES", raising=False)
    kept = replay_context(await get_dead_letter(database, number) or {})
    assert (kept.approval_currency, kept.fx_rates) == ("EUR", "GBP=1.17")

    async with open_agent(database=database) as agent:
        replayed = await replay_dead_letter(agent, number)
    assert (replayed.outcome, replayed.how) == ("replayed", "start")
    assert replayed.view is not None
    [pending] = replayed.view["pending_approvals"]
    assert pending["action"] == "schedule_payment"
    requirement = pending["requirement"]
    assert (requirement["min_approvers"], requirement["required_role"]) == (2, "controller")
    assert any("no rate from USD to EUR" in r for r in requirement["reasons"]), requirement
