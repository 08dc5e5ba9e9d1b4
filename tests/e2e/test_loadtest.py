"""A bounded load test against a real `langgraph dev` (auth on, Postgres, rules models).

Smaller than `make loadtest` (4 clients x 3 runs) so it fits the suite; the same code. The
database is the judge: no run lost, each approved payment made once, none unapproved. The
checker itself is shown to catch a lost run and an unapproved payment.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import psycopg
import pytest

from loadtest.__main__ import payable_invoices
from loadtest.devserver import dev_server
from loadtest.run import OPEN_STATES, RunRecord, check_database, run_load, token_table

pytestmark = pytest.mark.e2e

CLIENTS, RUNS_PER_CLIENT = 4, 3
DEADLINE_S = 120.0


async def test_concurrent_clients_lose_no_run_and_pay_each_approval_once(
    cli_env: dict[str, str], db_uri: str, tmp_path: Path
) -> None:
    env = {**cli_env, "PAYABLES_AUTH_TOKENS": json.dumps(token_table(CLIENTS))}
    for key in ("PAYABLES_AUTH_TOKENS_FILE", "PAYABLES_JWT_SECRET", "PAYABLES_FAULTS"):
        env.pop(key, None)
    with dev_server(db_uri, env, tmp_path / "server") as url:
        report = await run_load(
            url,
            db_uri,
            payable_invoices(),
            clients=CLIENTS,
            runs_per_client=RUNS_PER_CLIENT,
            deadline_s=DEADLINE_S,
        )

    print(report.summary())
    assert report.ok, report.summary()
    assert report.runs == CLIENTS * RUNS_PER_CLIENT == sum(report.statuses.values())
    assert not set(report.statuses) & set(OPEN_STATES)
    assert report.requests >= report.runs and report.latency_p95_s >= report.latency_p50_s > 0
    assert report.throughput_runs_per_s > 0
    threads = [r.thread_id for r in report.records]
    assert len(set(threads)) == report.runs and all(threads)
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        cur = await conn.execute(
            "SELECT invoice_id, count(*) FROM payments WHERE thread_id = ANY(%s)"
            " GROUP BY invoice_id",
            (threads,),
        )
        paid = dict(await cur.fetchall())
    approved = {r.invoice_id for r in report.records if r.paid_approved}
    assert paid, "no run was approved and paid: the load test exercised nothing"
    assert set(paid) == approved and set(paid.values()) == {1}
    assert report.payments == report.approved_payments == len(paid)

    # The checker catches what it is there to catch.
    ghost = RunRecord(client=0, invoice_id="INV-9999", thread_id="no-such-thread")
    _, _, lost, _, _, _ = await check_database(db_uri, [*report.records, ghost])
    assert lost == ["INV-9999 (no-such-thread: no run row)"]
    paid_record = next(r for r in report.records if r.paid_approved)
    unapproved_view = [
        dataclasses.replace(r, paid_approved=False) if r is paid_record else r
        for r in report.records
    ]
    _, _, _, _, unapproved, _ = await check_database(db_uri, unapproved_view)
    assert unapproved == [f"{paid_record.invoice_id} on {paid_record.thread_id}"]
