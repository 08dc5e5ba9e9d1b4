"""`python -m loadtest` (`make loadtest`): a bounded load test against a local `langgraph dev`.

It creates a fresh database (on ``DATABASE_URI`` when set, else the embedded Postgres under
``.data/loadtest``), migrates and seeds it with the sample world, serves the graph with
`langgraph dev` on a free loopback port, runs `loadtest.run.run_load`, prints the figures,
writes ``reports/loadtest/loadtest.json`` and drops the database. Exit status 1 when a run
was lost, a payment duplicated or missing, or any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from loadtest.devserver import DevServerError, dev_server
from loadtest.run import LoadReport, run_load, token_table
from runtime.settings import PROJECT_ROOT
from state.db import CONNECTION_KWARGS, embedded_uri, migrate
from state.world import SAMPLE_WORLD_PATH, load_world, read_world

REPORT_PATH = PROJECT_ROOT / "reports" / "loadtest" / "loadtest.json"


def payable_invoices() -> list[str]:
    """Invoices of the sample world that are not paid yet, in id order."""
    world = read_world(SAMPLE_WORLD_PATH)
    return sorted(i.invoice_id for i in world.invoices if i.status == "received")


def _with_dbname(uri: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(uri)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


@contextmanager
def scratch_database(server_uri: str, keep: bool) -> Iterator[str]:
    """A new database seeded with the sample world; dropped afterwards unless ``keep``."""
    name = f"payables_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    uri = _with_dbname(server_uri, name)

    async def prepare() -> None:
        await migrate(uri)
        async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
            await load_world(conn, read_world(SAMPLE_WORLD_PATH))

    try:
        asyncio.run(prepare())
        yield uri
    finally:
        if not keep:
            with psycopg.connect(server_uri, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def load_test(
    database_uri: str, *, clients: int, runs_per_client: int, deadline_s: float
) -> LoadReport:
    """Serve ``database_uri`` with `langgraph dev` and run the load against it."""
    env = {
        **os.environ,
        "PAYABLES_AUTH_TOKENS": json.dumps(token_table(clients)),
        "PAYABLES_DATABASE_URI": database_uri,
    }
    for key in ("PAYABLES_AUTH_TOKENS_FILE", "PAYABLES_JWT_SECRET", "PAYABLES_FAULTS"):
        env.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="payables-loadtest-") as workdir:
        with dev_server(database_uri, env, Path(workdir)) as url:
            return asyncio.run(
                run_load(
                    url,
                    database_uri,
                    payable_invoices(),
                    clients=clients,
                    runs_per_client=runs_per_client,
                    deadline_s=deadline_s,
                )
            )


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the load test, print and save the figures."""
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--runs", type=int, default=5, help="runs per client (default 5)")
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="hard limit in seconds for the runs"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    parser.add_argument("--report", type=Path, default=REPORT_PATH, help="where to write JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.runs < 1 or args.deadline <= 0:
        parser.error("--clients and --runs must be at least 1 and --deadline positive")
    server_uri = os.environ.get("DATABASE_URI") or embedded_uri(PROJECT_ROOT / ".data" / "loadtest")
    try:
        with scratch_database(server_uri, args.keep_db) as database_uri:
            report = load_test(
                database_uri,
                clients=args.clients,
                runs_per_client=args.runs,
                deadline_s=args.deadline,
            )
    except (DevServerError, ValueError, psycopg.Error) as exc:
        print(f"load test could not run: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report.as_json(), indent=2, default=str))
    print(f"report                {args.report}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
