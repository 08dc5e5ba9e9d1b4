"""Benchmarks: the agent's own overhead against bare LangGraph and the database's limit.

`python -m bench` (what `make bench` runs) builds a private database, runs the invoice and
approval flows, a bare LangGraph graph of the same shape on the same checkpointer, and plain
psycopg commits of the same bytes, side by side in one process; then prints a table and
writes ``reports/bench/bench.json``. Everything runs offline (rules model, and an instant
scripted planner for long plans).
"""

import os

OFFLINE_MODEL_VARIABLES = (
    "PAYABLES_MODEL",
    "PAYABLES_ROUTER_MODEL",
    "PAYABLES_PLANNER_MODEL",
    "PAYABLES_RESPOND_MODEL",
)


def go_offline() -> None:
    """Run like the tests: no tracing, no telemetry, the rules model for every role.

    For the bench's entry points (`bench.__main__`, `bench.worker`), before they import
    the agent; never on import, since the tests import the harness in their own process.
    """
    os.environ.setdefault("LANGSMITH_TRACING", "false")
    os.environ.setdefault("LANGCHAIN_TRACING_V2", "false")
    for variable in OFFLINE_MODEL_VARIABLES:
        os.environ[variable] = "rules"
