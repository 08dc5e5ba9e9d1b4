"""Tools under failure, on a real Postgres: retries, circuit breakers, read-only runs.

Faults come from where they would in production: the server closing the connection,
`PAYABLES_FAULTS` (the operator's rehearsal switch), a connection that drops right after a
commit. The database is the judge of what happened; settings are small so tests are fast
(``retry_initial_s=0``), and breaker time is a fake clock, never a sleep.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from pydantic import Field

from runtime.agent import open_agent
from runtime.breakers import BREAKERS, BreakerBoard, BreakerState
from runtime.context import Context
from state.audit import verify_chain
from state.db import THREAD_LOCK_CLASS, Database, ThreadLock, ThreadLockLost
from tests.approvals import grant
from tests.cli import explain, payables
from tests.fakes import ScriptedChatModel, ScriptedModels, plan_reply
from tools.ap import AP_TOOLS
from tools.contract import CallContext, Tier, ToolArgs, ToolResult, ToolSpec
from tools.gate import ToolGate
from tools.registry import ToolRegistry

pytestmark = pytest.mark.integration

FAST = {"retry_initial_s": 0.0, "tool_max_retries": 2}


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No fault rules and no breaker state leak into or out of a test."""
    monkeypatch.delenv("PAYABLES_FAULTS", raising=False)
    BREAKERS.reset()
    yield
    BREAKERS.reset()


class FakeClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def scalar(database: Database, sql: str, *params: Any) -> Any:
    async with database.connection() as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


async def tool_call_rows(database: Database, tool: str) -> list[dict[str, Any]]:
    """The audit chain's tool_call rows for ``tool``, in order."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT payload FROM audit_events WHERE kind = 'tool_call'"
            " AND payload->>'tool' = %s ORDER BY seq",
            (tool,),
        )
        return [row["payload"] for row in await cur.fetchall()]


# --- a read tool whose backend drops the connection --------------------------------------


class LookupArgs(ToolArgs):
    """Look an invoice up."""

    invoice_id: str = Field(description="Invoice id.")


class LookupResult(ToolResult):
    """The invoice's status."""

    status: str


class FlakyBackend:
    """A read tool whose first ``failures`` calls lose their connection, for real.

    The handler asks the server to terminate its own backend, exactly what a Postgres
    restart or a network cut does to a query in flight.
    """

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, ctx: CallContext, args: LookupArgs) -> LookupResult:
        self.calls += 1
        if self.calls <= self.failures:
            await ctx.conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        cur = await ctx.conn.execute(
            "SELECT status FROM invoices WHERE invoice_id = %s", (args.invoice_id,)
        )
        row = await cur.fetchone()
        assert row is not None
        return LookupResult(status=row["status"])


def lookup_tool(handler: FlakyBackend) -> ToolSpec[Any, Any]:
    return ToolSpec(
        name="lookup_status",
        description="Read an invoice's status (test tool with a flaky backend).",
        args_model=LookupArgs,
        result_model=LookupResult,
        tier=Tier.READ,
        scopes=frozenset({"invoice_processing"}),
        handler=handler,
    )


def call_args(tool: str, args: dict[str, Any], run: Context, step: str = "p1s1") -> dict[str, Any]:
    return {
        "thread_id": "t-outage",
        "step_id": step,
        "route": "invoice_processing",
        "requester": "clerk-ana",
        "tool": tool,
        "args": args,
        "run": run,
    }


async def test_a_read_whose_connection_drops_twice_is_retried_and_succeeds(
    database: Database,
) -> None:
    backend = FlakyBackend(failures=2)
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    gate = ToolGate(
        database,
        ToolRegistry([*AP_TOOLS, lookup_tool(backend)]),
        breakers=BreakerBoard(),
        sleep=record_sleep,
    )
    run = Context(tool_max_retries=2, retry_initial_s=0.5, retry_max_s=0.75)
    outcome = await gate.call(**call_args("lookup_status", {"invoice_id": "INV-1002"}, run))

    assert outcome["ok"], outcome["error"]
    assert outcome["result"] == {"status": "received"}
    assert backend.calls == 3
    # Exponential backoff with jitter, capped: 0.5 + U(0, 0.5), then min(1.0 + U(0, 0.5), 0.75).
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and sleeps[1] == 0.75
    rows = await tool_call_rows(database, "lookup_status")
    assert [r["error_code"] for r in rows] == ["backend_error", "backend_error", None]
    assert "attempt 1 of 3" in rows[0]["error_message"]
    assert "AdminShutdown" in rows[0]["error_message"]
    assert (await verify_chain_ok(database)) is True


async def verify_chain_ok(database: Database) -> bool:
    """The chain links and hashes, and every ledger row has its event.

    The approvals these tests grant are written straight to `approval_decisions`
    (`tests.approvals.grant`), with no decision event, so only the ledger is checked here.
    """
    async with database.connection() as conn:
        report = await verify_chain(conn)
    chains_ok = all(c.broken is None for c in report.chains)
    ledger_ok = not [u for u in report.unaudited if u.table != "approval_decisions"]
    return chains_ok and ledger_ok and report.rows > 0


async def test_a_read_that_keeps_failing_ends_the_run_escalated_with_the_reason(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYABLES_FAULTS", "tool:get_invoice:error:1")
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1002", user="clerk-ana", context=Context(**FAST))

    assert view["status"] == "escalated"
    assert "get_invoice failed in its backend (attempt 3 of 3)" in view["reason"]
    assert "PAYABLES_FAULTS" in view["reason"]
    errors = view["result"]["invoices"]["INV-1002"]["errors"]
    assert [(e["tool"], e["code"], e["retryable"]) for e in errors] == [
        ("get_invoice", "backend_error", True)
    ]
    rows = await tool_call_rows(database, "get_invoice")
    assert [r["error_code"] for r in rows] == ["backend_error"] * 3
    assert await scalar(database, "SELECT count(*) FROM tool_calls") == 0
    assert await verify_chain_ok(database)


# --- exactly once when a write is retried -------------------------------------------------


class LosesTheReplyOnce(Database):
    """A real database whose connection drops once, just after a payment commits.

    The client then sees `psycopg.OperationalError` for a transaction the server did
    commit: the case where only the idempotency key stands between a retry and a second
    payment.
    """

    dropped = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        async with super().connection() as conn:
            yield conn
            if not self.dropped:
                cur = await conn.execute(
                    "SELECT count(*) AS n FROM payments WHERE invoice_id = %s",
                    (PAY["invoice_id"],),
                )
                row = await cur.fetchone()
                if row is not None and row["n"] > 0:
                    self.dropped = True
                    raise psycopg.OperationalError(
                        "consuming input failed: server closed the connection unexpectedly"
                    )


PAY = {"invoice_id": "INV-1001", "amount": "3340.97", "currency": "USD"}
PAYMENTS = "SELECT count(*) FROM payments WHERE invoice_id = 'INV-1001'"


async def stage_and_approve(database: Database, run: Context) -> None:
    gate = ToolGate(database, breakers=BreakerBoard())
    async with database.connection() as conn:
        await conn.execute(
            "INSERT INTO runs (thread_id, request, requester, tenant, status)"
            " VALUES ('t-outage', 'Pay INV-1001', 'clerk-ana', 'default', 'running')"
        )
    staged = await gate.call(**call_args("stage_invoice", {"invoice_id": "INV-1001"}, run, "p1s1"))
    assert staged["ok"], staged["error"]
    async with database.connection() as conn:
        validated = gate.validate("invoice_processing", "schedule_payment", PAY)
        assert isinstance(validated, tuple)
        await grant(
            conn,
            step_id="p1s2",
            tool="schedule_payment",
            args=validated[1],
            reviewer="rev-1",
            role="approver",
            thread_id="t-outage",
        )


async def test_a_payment_whose_commit_reply_is_lost_is_retried_and_made_once(
    db_uri: str,
) -> None:
    database = LosesTheReplyOnce(db_uri, max_size=4)
    try:
        run = Context(**FAST)
        await stage_and_approve(database, run)
        gate = ToolGate(database, breakers=BreakerBoard())
        outcome = await gate.call(**call_args("schedule_payment", PAY, run, "p1s2"))

        assert database.dropped
        assert outcome["ok"] and outcome["replayed"], outcome["error"]
        assert await scalar(database, PAYMENTS) == 1
        assert (
            await scalar(
                database, "SELECT count(*) FROM tool_calls WHERE tool = 'schedule_payment'"
            )
            == 1
        )
        rows = await tool_call_rows(database, "schedule_payment")
        # The chain tells it as it happened: the payment committed with its row, the
        # client lost the reply, and the retry replayed the ledger.
        assert [(r["error_code"], r["replayed"]) for r in rows] == [
            (None, False),
            ("backend_error", False),
            (None, True),
        ]
        assert outcome["result"] is not None
        payment_id = await scalar(
            database, "SELECT payment_id FROM payments WHERE invoice_id = 'INV-1001'"
        )
        assert outcome["result"]["payment_id"] == payment_id
        assert await verify_chain_ok(database)
    finally:
        await database.close()


async def test_a_failed_payment_attempt_leaves_nothing_behind_and_the_retry_pays_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Context(**FAST)
    await stage_and_approve(database, run)
    monkeypatch.setenv("PAYABLES_FAULTS", "tool:schedule_payment:timeout:1")
    gate = ToolGate(database, breakers=BreakerBoard())
    timed_out = await gate.call(
        **call_args("schedule_payment", PAY, Context(**FAST, tool_timeout_s=0.2), "p1s2")
    )
    assert timed_out["error"] is not None
    assert timed_out["error"]["code"] == "timeout" and timed_out["error"]["retryable"]
    assert "attempt 3 of 3" in timed_out["error"]["message"]
    assert await scalar(database, PAYMENTS) == 0
    assert await scalar(database, "SELECT count(*) FROM tool_calls") == 1  # the stage only

    monkeypatch.delenv("PAYABLES_FAULTS")
    paid = await gate.call(**call_args("schedule_payment", PAY, run, "p1s2"))
    again = await gate.call(**call_args("schedule_payment", PAY, run, "p1s2"))
    assert paid["ok"] and not paid["replayed"]
    assert again["ok"] and again["replayed"]
    assert await scalar(database, PAYMENTS) == 1


# --- circuit breakers ---------------------------------------------------------------------


async def test_the_breaker_opens_after_n_failures_refuses_at_once_and_half_opens_later(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    board = BreakerBoard(clock=clock)
    gate = ToolGate(database, breakers=board)
    run = Context(
        retry_initial_s=0.0, tool_max_retries=0, breaker_failure_threshold=3, breaker_cooldown_s=60
    )
    steps = iter(range(1, 100))

    def read() -> dict[str, Any]:  # each call a new step, as re-planned phases make them
        return call_args("get_invoice", {"invoice_id": "INV-1002"}, run, f"p{next(steps)}s1")

    monkeypatch.setenv("PAYABLES_FAULTS", "tool:get_invoice:error:1")
    codes = [(await gate.call(**read()))["error"] for _ in range(4)]
    assert [e["code"] if e else None for e in codes] == ["backend_error"] * 3 + ["circuit_open"]
    refused = codes[3]
    assert refused is not None and not refused["retryable"]
    assert "about 60s" in refused["hint"]
    assert board.snapshot() == {"tool:get_invoice": "open"}

    clock.now += 59
    still = await gate.call(**read())
    assert still["error"] is not None and still["error"]["code"] == "circuit_open"
    assert "about 1s" in still["error"]["hint"]

    # Half-open: one trial goes through; it fails, so the breaker opens again at once.
    clock.now += 1
    assert board.snapshot() == {"tool:get_invoice": "half_open"}
    trial = await gate.call(**read())
    assert trial["error"] is not None and trial["error"]["code"] == "backend_error"
    assert board.snapshot() == {"tool:get_invoice": "open"}

    # The backend is back: the next trial succeeds and closes the breaker.
    monkeypatch.delenv("PAYABLES_FAULTS")
    clock.now += 60
    recovered = await gate.call(**read())
    assert recovered["ok"]
    assert board.snapshot() == {"tool:get_invoice": "closed"}
    rows = await tool_call_rows(database, "get_invoice")
    assert [r["error_code"] for r in rows] == [
        *["backend_error"] * 3,
        "circuit_open",
        "circuit_open",
        "backend_error",
        None,
    ]


async def broken_handler(ctx: CallContext, args: LookupArgs) -> LookupResult:
    """A handler with a bug."""
    raise ValueError("a bug, not an outage")


def buggy_gate(database: Database, board: BreakerBoard) -> ToolGate:
    """A gate whose ``buggy_lookup`` raises a bug, its breaker opened by one failure."""
    buggy = ToolSpec(
        name="buggy_lookup",
        description="Read an invoice's status (test tool with a bug).",
        args_model=LookupArgs,
        result_model=LookupResult,
        tier=Tier.READ,
        scopes=frozenset({"invoice_processing"}),
        handler=broken_handler,
    )
    board.get("tool:buggy_lookup", failure_threshold=1, cooldown_s=10).record_failure()
    return ToolGate(database, ToolRegistry([*AP_TOOLS, buggy]), breakers=board)


BUGGY_RUN = Context(**FAST, breaker_failure_threshold=1, breaker_cooldown_s=10)


async def test_a_bug_during_the_half_open_trial_propagates_and_frees_the_trial(
    database: Database,
) -> None:
    clock = FakeClock()
    board = BreakerBoard(clock=clock)
    gate = buggy_gate(database, board)
    clock.now += 10
    with pytest.raises(ValueError, match="a bug"):
        await gate.call(**call_args("buggy_lookup", {"invoice_id": "INV-1002"}, BUGGY_RUN))
    # A bug says nothing about the backend: still half-open, and the next trial may run.
    assert board.snapshot() == {"tool:buggy_lookup": "half_open"}
    assert board.get("tool:buggy_lookup", failure_threshold=1, cooldown_s=10).allow()


class FlippingClock(FakeClock):
    """Monotonic time that jumps by ``jump`` seconds at its ``at``-th look."""

    def __init__(self, at: int, jump: float) -> None:
        super().__init__()
        self.looks, self.at, self.jump = 0, at, jump

    def __call__(self) -> float:
        self.looks += 1
        if self.looks == self.at:
            self.now += self.jump
        return self.now


@pytest.mark.parametrize("at", range(2, 6))
async def test_a_trial_taken_as_the_cooldown_ends_is_freed_like_any_trial(
    database: Database, at: int
) -> None:
    # However the cooldown's end falls among the gate's looks at the clock, a call that
    # took the trial knows it: a bug during it gives the trial back. Before, the gate
    # looked at the state, then asked for admission; with the end between the two, the
    # trial was never given back and the breaker refused every later call.
    clock = FlippingClock(at, jump=10)  # the first look is record_failure's (opened_at)
    board = BreakerBoard(clock=clock)
    gate = buggy_gate(database, board)
    try:
        await gate.call(**call_args("buggy_lookup", {"invoice_id": "INV-1002"}, BUGGY_RUN))
    except ValueError as bug:
        assert "a bug" in str(bug)  # it took the trial
    breaker = board.get("tool:buggy_lookup", failure_threshold=1, cooldown_s=10)
    assert breaker.opened_at is not None
    clock.now = max(clock.now, breaker.opened_at + 10)
    assert breaker.allow()  # the trial is free


async def test_business_refusals_never_open_a_breaker(database: Database) -> None:
    board = BreakerBoard()
    gate = ToolGate(database, breakers=board)
    run = Context(**FAST, breaker_failure_threshold=2)
    for _ in range(3):  # no approval recorded: refused before the handler runs
        unapproved = await gate.call(**call_args("schedule_payment", PAY, run, "p9s1"))
        assert unapproved["error"] is not None
        assert unapproved["error"]["code"] == "approval_required"
    for _ in range(3):  # the handler refuses: the backend answered
        missing = await gate.call(**call_args("get_invoice", {"invoice_id": "INV-0000"}, run))
        assert missing["error"] is not None and missing["error"]["code"] == "invoice_not_found"
    assert set(board.snapshot().values()) == {BreakerState.CLOSED.value}


# --- read-only runs -----------------------------------------------------------------------


async def payment_story(database: Database, invoice_id: str) -> dict[str, Any]:
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT i.status,"
            " (SELECT count(*) FROM payments p WHERE p.invoice_id = i.invoice_id) AS payments,"
            " (SELECT array_agg(detail ORDER BY exception_id) FROM invoice_exceptions e"
            "   WHERE e.invoice_id = i.invoice_id AND 'payment_unavailable' = ANY(e.codes))"
            "   AS unavailable"
            " FROM invoices i WHERE i.invoice_id = %s",
            (invoice_id,),
        )
        row = await cur.fetchone()
        cur = await conn.execute(
            "SELECT count(*) AS n FROM audit_events WHERE kind = 'approval_requested'"
        )
        asked = await cur.fetchone()
    assert row is not None and asked is not None
    return {**row, "approvals_asked": asked["n"]}


async def test_an_open_payment_breaker_makes_the_run_read_only(database: Database) -> None:
    run = Context(**FAST, breaker_failure_threshold=1)
    BREAKERS.get(
        "tool:schedule_payment", failure_threshold=1, cooldown_s=run.breaker_cooldown_s
    ).record_failure()
    assert BREAKERS.snapshot()["tool:schedule_payment"] == "open"

    async with open_agent(database=database) as agent:
        view = await agent.start(
            "Validate INV-1001 and pay it if it matches", user="clerk-ana", context=run
        )

    assert view["status"] == "escalated", view["reason"]
    assert view["pending_approvals"] == []
    assert view["result"]["degraded"] == [
        "read-only: schedule_payment unavailable (circuit open), so INV-1001 was staged and "
        "flagged, not paid"
    ]
    assert "INV-1001" in view["reason"] and "not paid" in view["reason"]
    invoice = view["result"]["invoices"]["INV-1001"]
    assert invoice["actions"] == ["staged", "flagged", "staged"]
    summary = "INV-1001: match; staged, flagged; not done: schedule_payment (circuit_open)"
    assert summary in view["summary"], view["summary"]
    assert [e["code"] for e in invoice["errors"]] == ["circuit_open"]
    story = await payment_story(database, "INV-1001")
    assert story["status"] == "staged"
    assert story["payments"] == 0
    assert story["approvals_asked"] == 0
    assert len(story["unavailable"]) == 1
    assert "schedule the payment" in story["unavailable"][0].lower()
    assert await verify_chain_ok(database)


async def test_a_payment_backend_that_keeps_failing_opens_the_breaker_for_later_runs(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYABLES_FAULTS", "tool:schedule_payment:error:1")
    run = Context(**FAST, breaker_failure_threshold=3)
    async with open_agent(database=database) as agent:
        first = await agent.start("Validate INV-1001 and pay it", user="clerk-ana", context=run)
        second = await agent.start("Validate INV-1002 and pay it", user="clerk-ana", context=run)

    assert first["status"] == "escalated" and second["status"] == "escalated"
    assert first["result"]["degraded"] == [
        "read-only: schedule_payment unavailable (backend error), so INV-1001 was staged "
        "and flagged, not paid"
    ]
    assert second["result"]["degraded"] == [
        "read-only: schedule_payment unavailable (circuit open), so INV-1002 was staged "
        "and flagged, not paid"
    ]
    rows = await tool_call_rows(database, "schedule_payment")
    # Three failed attempts open the breaker; the second run is refused without an attempt.
    assert [r["error_code"] for r in rows] == ["backend_error"] * 3 + ["circuit_open"]
    for invoice_id in ("INV-1001", "INV-1002"):
        story = await payment_story(database, invoice_id)
        assert (story["status"], story["payments"], len(story["unavailable"])) == (
            "staged",
            0,
            1,
        )
    assert (await payment_story(database, "INV-1001"))["approvals_asked"] == 0


def test_an_operator_rehearses_a_payment_outage_from_the_cli(
    cli_env: dict[str, str], db_uri: str
) -> None:
    env = {
        **cli_env,
        "PAYABLES_FAULTS": "tool:schedule_payment:error:1",
        "PAYABLES_RETRY_INITIAL_S": "0",
        "PAYABLES_TOOL_MAX_RETRIES": "2",
    }
    proc = payables(env, "run", "Validate INV-1001 and pay it", "--user", "clerk-ana", "--json")
    assert proc.returncode == 0, explain(proc)
    assert "Traceback" not in proc.stderr, explain(proc)
    view = json.loads(proc.stdout)
    assert view["status"] == "escalated"
    assert view["pending_approvals"] == []
    assert "INV-1001 was not paid" in view["reason"] or "not paid" in view["reason"]
    assert view["result"]["degraded"] == [
        "read-only: schedule_payment unavailable (backend error), so INV-1001 was staged "
        "and flagged, not paid"
    ]
    with psycopg.connect(db_uri) as conn:
        row = conn.execute(
            "SELECT status, (SELECT count(*) FROM payments p WHERE p.invoice_id = i.invoice_id)"
            " FROM invoices i"
            " WHERE i.invoice_id = 'INV-1001'"
        ).fetchone()
    assert row == ("staged", 0)


async def test_a_model_that_plans_the_payment_again_gets_no_second_flag(
    database: Database,
) -> None:
    BREAKERS.get("tool:schedule_payment", failure_threshold=1, cooldown_s=30).record_failure()
    pay = ("schedule_payment", PAY)
    planner = ScriptedChatModel(
        [
            plan_reply(
                False,
                ("get_invoice", {"invoice_id": "INV-1001"}),
                ("compute_match", {"invoice_id": "INV-1001"}),
            ),
            plan_reply(True, ("stage_invoice", {"invoice_id": "INV-1001"}), pay),
            plan_reply(True, pay),  # after the stand-ins, the model tries to pay again
            plan_reply(True),
        ]
    )
    run = Context(**FAST, breaker_failure_threshold=1)
    async with open_agent(models=ScriptedModels(planner=planner), database=database) as agent:
        view = await agent.start("Pay INV-1001 please", user="clerk-ana", context=run)

    assert view["status"] == "escalated", view["reason"]
    assert view["pending_approvals"] == []
    assert view["result"]["degraded"] == [
        "read-only: schedule_payment unavailable (circuit open), so INV-1001 was staged and "
        "flagged, not paid",
        "read-only: schedule_payment unavailable (circuit open), so it was not done for INV-1001",
    ]
    calls = [(c["step_id"], c["tool"], c["error"]) for c in view["result"]["tool_calls"]]
    assert calls[2:] == [
        ("p2s1", "stage_invoice", None),
        ("p2s2", "schedule_payment", "circuit_open"),
        ("p2s2-ro1", "flag_exception", None),
        ("p2s2-ro2", "stage_invoice", None),
        ("p3s1", "schedule_payment", "circuit_open"),
    ]
    story = await payment_story(database, "INV-1001")
    assert (story["status"], story["payments"], len(story["unavailable"])) == ("staged", 0, 1)
    assert planner.script == []


async def test_a_reject_after_the_run_went_read_only_keeps_it_escalated(
    database: Database,
) -> None:
    """INV-1005 needs a controller's override to be staged; with payments down its stand-in
    stage asks again. Rejecting that leaves the invoice unpaid because of the outage, so the
    run stays escalated for a person, with both reasons, not completed."""
    run = Context(**FAST, breaker_failure_threshold=1)
    BREAKERS.get(
        "tool:schedule_payment", failure_threshold=1, cooldown_s=run.breaker_cooldown_s
    ).record_failure()
    approve = {"decisions": [], "reviewer": {"id": "ctl-1", "role": "controller"}}
    async with open_agent(database=database) as agent:
        view = await agent.start("Validate INV-1005 and pay it", user="clerk-ana", context=run)
        assert view["status"] == "interrupted"
        answer = {**approve, "decisions": [{"type": "approve"}] * len(view["pending_approvals"])}
        view = await agent.resume(view["thread_id"], answer)
        assert view["status"] == "interrupted", view["reason"]
        assert [a["action"] for a in view["pending_approvals"]] == ["stage_invoice"]
        reject = {**approve, "decisions": [{"type": "reject", "message": "not during an outage"}]}
        view = await agent.resume(view["thread_id"], reject)
    assert view["status"] == "escalated"
    assert "INV-1005 was not paid" in view["reason"]
    assert "Rejected by ctl-1 (controller): not during an outage" in view["reason"]


class RestartingBackend(FlakyBackend):
    """A Postgres restart during the call: its own backend and the thread lock's both end."""

    async def __call__(self, ctx: CallContext, args: LookupArgs) -> LookupResult:
        if self.calls < self.failures:
            await ctx.conn.execute(TERMINATE_THREAD_LOCKS, (THREAD_LOCK_CLASS,))
        return await super().__call__(ctx, args)


# With a timeout, the call returns once the backend has exited, so its goodbye ("terminating
# connection due to administrator command") is already in the lock connection's socket.
TERMINATE_THREAD_LOCKS = (
    "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory'"
    " AND classid = %s::oid AND objsubid = 2"
)


async def test_a_run_that_lost_its_thread_lock_mid_call_stops_instead_of_retrying(
    database: Database,
) -> None:
    backend = RestartingBackend(failures=2)
    gate = ToolGate(
        database, ToolRegistry([*AP_TOOLS, lookup_tool(backend)]), breakers=BreakerBoard()
    )
    lock = ThreadLock(database, "t-outage")
    assert await lock.take()
    async with lock.held():
        run = Context(tool_max_retries=2, retry_initial_s=0.01, retry_max_s=0.01)
        with pytest.raises(ThreadLockLost, match="t-outage's lock was lost"):
            await gate.call(**call_args("lookup_status", {"invoice_id": "INV-1002"}, run))
    assert backend.calls == 1  # the first attempt failed; no retry ran


async def test_a_run_whose_thread_lock_died_before_a_call_makes_no_attempt(
    database: Database,
) -> None:
    # Not even a first attempt: with Postgres gone it would wait out its timeout for a
    # connection before the retry's check could stop the run.
    backend = FlakyBackend(failures=0)
    gate = ToolGate(
        database, ToolRegistry([*AP_TOOLS, lookup_tool(backend)]), breakers=BreakerBoard()
    )
    lock = ThreadLock(database, "t-outage")
    assert await lock.take()
    async with lock.held():
        async with database.connection() as conn:  # as a Postgres restart ends the lock
            await conn.execute(TERMINATE_THREAD_LOCKS, (THREAD_LOCK_CLASS,))
        run = Context(tool_max_retries=2, retry_initial_s=0.01, retry_max_s=0.01)
        with pytest.raises(ThreadLockLost, match="t-outage's lock was lost"):
            await gate.call(**call_args("lookup_status", {"invoice_id": "INV-1002"}, run))
    assert backend.calls == 0
