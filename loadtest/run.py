"""Bounded load test: concurrent clerks start runs, reviewers answer approvals, all checked.

``clients`` concurrent clients each run ``runs_per_client`` payment requests, one invoice
each, against a `langgraph dev` server on loopback (auth on, rules models, Postgres). A
client's clerk starts the run and waits for it to stop; while an approval is pending, its
reviewer approves (its controller gives the second signature where dual control needs one).
Every request is timed; the whole run phase has a hard deadline. A run the agent ends
``failed`` is an error, and not counted in the throughput.

Then the database is checked, not the clients' word: every thread started has reached an
end state (no run lost), every approved payment was made exactly once, no invoice was paid
twice, and no payment exists that nobody approved.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

GRAPH_ID = "payables"
TENANT = "default"
OPEN_STATES = ("running", "interrupted")
FAILED_STATES = ("failed",)
"""End states in which the agent gave up on the run: errors, not finished runs."""
MAX_APPROVAL_ROUNDS = 4  # dual control needs two; more means the run is looping


@dataclass
class RunRecord:
    """One run as a client saw it."""

    client: int
    invoice_id: str
    thread_id: str = ""
    approvals: int = 0
    paid_approved: bool = False
    status: str = ""
    error: str = ""


@dataclass
class LoadReport:
    """The figures of one load test, and what the database check found."""

    clients: int
    runs_per_client: int
    runs: int
    wall_clock_s: float
    throughput_runs_per_s: float
    requests: int
    latency_p50_s: float
    latency_p95_s: float
    latency_max_s: float
    errors: list[str]
    statuses: dict[str, int]
    approved_payments: int
    payments: int
    lost_runs: list[str]
    duplicate_payments: list[str]
    unapproved_payments: list[str]
    missing_payments: list[str]
    records: list[RunRecord] = field(repr=False)

    @property
    def ok(self) -> bool:
        """No error, no lost run, and payments exactly as approved."""
        return not (
            self.errors
            or self.lost_runs
            or self.duplicate_payments
            or self.unapproved_payments
            or self.missing_payments
        )

    def summary(self) -> str:
        """The figures as a short table for a terminal."""
        lines = [
            f"clients x runs        {self.clients} x {self.runs_per_client} = {self.runs} runs",
            f"wall clock            {self.wall_clock_s:.1f} s",
            f"throughput            {self.throughput_runs_per_s:.2f} runs/s",
            f"requests              {self.requests} (start + approve, timed)",
            f"latency p50 / p95     {self.latency_p50_s:.2f} s / {self.latency_p95_s:.2f} s"
            f" (max {self.latency_max_s:.2f} s)",
            f"errors                {len(self.errors)}",
            f"end states            {json.dumps(self.statuses, sort_keys=True)}",
            f"approved payments     {self.approved_payments}",
            f"payments in database  {self.payments}",
            f"lost runs             {len(self.lost_runs)}",
            f"duplicate payments    {len(self.duplicate_payments)}",
            f"unapproved payments   {len(self.unapproved_payments)}",
            f"approved, not paid    {len(self.missing_payments)}",
            f"verdict               {'OK' if self.ok else 'FAILED'}",
        ]
        lines += [f"  error: {e}" for e in self.errors[:20]]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """Everything, for reports/loadtest/loadtest.json."""
        data = asdict(self)
        data["ok"] = self.ok
        return data


def token_table(clients: int) -> dict[str, dict[str, str]]:
    """Development tokens: a clerk, a reviewer and a controller per client."""
    table = {}
    for i in range(clients):
        for role, prefix in (("clerk", "clerk"), ("reviewer", "rev"), ("controller", "ctl")):
            table[f"load-{prefix}-{i}"] = {
                "identity": f"load-{prefix}-{i}",
                "role": role,
                "tenant": TENANT,
            }
    return table


def _percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return 0.0
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(fraction * 100) - 1]


def _next_approver(request: Mapping[str, Any]) -> str:
    """``controller`` when the pending step lacks only a controller's signature."""
    for step in request.get("steps", []):
        needed = step.get("required_role")
        approved = step.get("approved_by", [])
        if needed and not any(a.get("role") == needed for a in approved):
            if len(approved) + 1 >= int(step.get("min_approvers", 1)):
                return str(needed)
    return "approver"


class _Client:
    """One simulated desk: a clerk, a reviewer and a controller working one after another."""

    def __init__(self, url: str, index: int, latencies: list[float]) -> None:
        self.url = url
        self.index = index
        self.latencies = latencies

    def _sdk(self, prefix: str) -> LangGraphClient:
        token = f"load-{prefix}-{self.index}"
        return get_client(
            url=self.url, api_key=None, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )

    async def _timed(self, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.latencies.append(time.perf_counter() - started)

    async def run(self, record: RunRecord) -> None:
        clerk_id = f"load-clerk-{self.index}"
        async with self._sdk("clerk") as clerk, self._sdk("rev") as rev, self._sdk("ctl") as ctl:
            thread = await clerk.threads.create()
            record.thread_id = thread["thread_id"]
            request = f"Validate {record.invoice_id} and pay it if it matches"
            result = await self._timed(
                clerk.runs.wait(
                    record.thread_id, GRAPH_ID, input={"request": request, "user": clerk_id}
                )
            )
            rounds = 0
            while isinstance(result, dict) and result.get("__interrupt__"):
                rounds += 1
                if rounds > MAX_APPROVAL_ROUNDS:
                    raise RuntimeError(
                        f"still asking for approval after {MAX_APPROVAL_ROUNDS} answers"
                    )
                state = await rev.threads.get_state(record.thread_id)
                [interrupt] = state["interrupts"]
                value = interrupt["value"]
                if value.get("error"):
                    raise RuntimeError(f"approval refused: {value['error']}")
                role = _next_approver(value)
                sdk, who = (
                    (ctl, f"load-ctl-{self.index}")
                    if role == "controller"
                    else (
                        rev,
                        f"load-rev-{self.index}",
                    )
                )
                resume = {
                    "decisions": [{"type": "approve"} for _ in value["action_requests"]],
                    "reviewer": {"id": who, "role": role},
                }
                result = await self._timed(
                    sdk.runs.wait(
                        record.thread_id,
                        GRAPH_ID,
                        command={"resume": {interrupt["id"]: resume}},
                    )
                )
                record.approvals += 1
                if any(a["name"] == "schedule_payment" for a in value["action_requests"]):
                    record.paid_approved = True
            final = await rev.threads.get_state(record.thread_id)
            values = final["values"] if isinstance(final["values"], dict) else {}
            record.status = str(values.get("status", "unknown"))
            if record.status in FAILED_STATES:
                raise RuntimeError(f"the run ended {record.status}: {values.get('reason')}")


async def check_database(
    database_uri: str, records: list[RunRecord]
) -> tuple[dict[str, int], int, list[str], list[str], list[str], list[str]]:
    """Statuses, payments, and the lost, duplicate, unapproved and missing payments."""
    threads = [r.thread_id for r in records if r.thread_id]
    async with await psycopg.AsyncConnection.connect(database_uri) as conn:
        cur = await conn.execute(
            "SELECT thread_id, status FROM runs WHERE thread_id = ANY(%s)", (threads,)
        )
        status_of: dict[str, str] = dict(await cur.fetchall())
        cur = await conn.execute(
            "SELECT thread_id, invoice_id FROM payments WHERE thread_id = ANY(%s)", (threads,)
        )
        payments = await cur.fetchall()
        cur = await conn.execute(
            "SELECT invoice_id FROM payments GROUP BY invoice_id HAVING count(*) > 1"
        )
        duplicates = [row[0] for row in await cur.fetchall()]
    statuses: dict[str, int] = {}
    for status in status_of.values():
        statuses[status] = statuses.get(status, 0) + 1
    lost = [
        f"{r.invoice_id} ({r.thread_id or 'no thread'}: {status_of.get(r.thread_id, 'no run row')})"
        for r in records
        if not r.thread_id or status_of.get(r.thread_id, "running") in OPEN_STATES
    ]
    paid = {(thread, invoice) for thread, invoice in payments}
    approved = {(r.thread_id, r.invoice_id) for r in records if r.paid_approved}
    paid_ok = {(t, i) for t, i in approved if status_of.get(t) == "completed"}
    unapproved = sorted(f"{i} on {t}" for t, i in paid - approved)
    missing = sorted(f"{i} on {t}" for t, i in paid_ok - paid)
    return statuses, len(payments), lost, duplicates, unapproved, missing


async def run_load(
    url: str,
    database_uri: str,
    invoices: list[str],
    *,
    clients: int,
    runs_per_client: int,
    deadline_s: float,
) -> LoadReport:
    """Drive the server at ``url``; check the outcome in ``database_uri``."""
    needed = clients * runs_per_client
    if len(invoices) < needed:
        raise ValueError(
            f"{clients} clients x {runs_per_client} runs need {needed} distinct payable invoices;"
            f" the world has {len(invoices)}. Lower --clients or --runs."
        )
    latencies: list[float] = []
    records = [
        RunRecord(client=c, invoice_id=invoices[c * runs_per_client + j])
        for c in range(clients)
        for j in range(runs_per_client)
    ]
    errors: list[str] = []

    async def desk(index: int) -> None:
        client = _Client(url, index, latencies)
        for record in records[index * runs_per_client : (index + 1) * runs_per_client]:
            try:
                await client.run(record)
            except Exception as exc:  # reported per run; the check below still runs
                record.error = f"{type(exc).__name__}: {exc}"[:500]
                errors.append(f"client {index} {record.invoice_id}: {record.error}")

    started = time.perf_counter()
    tasks = [asyncio.create_task(desk(i)) for i in range(clients)]
    _, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        errors.append(f"deadline of {deadline_s:.0f}s passed with {len(pending)} client(s) busy")
    wall = time.perf_counter() - started
    statuses, payments, lost, duplicates, unapproved, missing = await check_database(
        database_uri, records
    )
    finished = sum(1 for r in records if r.status and not r.error)
    return LoadReport(
        clients=clients,
        runs_per_client=runs_per_client,
        runs=needed,
        wall_clock_s=wall,
        throughput_runs_per_s=finished / wall if wall > 0 else 0.0,
        requests=len(latencies),
        latency_p50_s=_percentile(sorted(latencies), 0.50),
        latency_p95_s=_percentile(sorted(latencies), 0.95),
        latency_max_s=max(latencies, default=0.0),
        errors=errors,
        statuses=statuses,
        approved_payments=sum(1 for r in records if r.paid_approved and r.status == "completed"),
        payments=payments,
        lost_runs=lost,
        duplicate_payments=duplicates,
        unapproved_payments=unapproved,
        missing_payments=missing,
        records=records,
    )
