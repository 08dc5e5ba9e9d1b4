"""Assembly of the payables graph.

``START → router → planner → executor ⇄ approval → verifier → (planner | respond) → END``,
with router and verifier able to go straight to respond. `graph` is compiled without a
checkpointer for `langgraph.json` (the server brings its own); the CLI and tests call
`build_graph(checkpointer=...)`.
"""

from __future__ import annotations

from typing import Any

import psycopg
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer, RetryPolicy

from nodes.approval import make_approval
from nodes.deps import NodeDeps
from nodes.executor import make_executor
from nodes.planner import make_planner
from nodes.respond import make_respond
from nodes.router import make_router
from nodes.verifier import make_verifier
from runtime import failpoints
from runtime.budgets import guard_node
from runtime.context import Context
from runtime.tracing import redact_process_traces
from state.graph_state import AgentState, InputState, OutputState

GRAPH_NAME = "payables"


def is_transient_db_error(exc: Exception) -> bool:
    """Whether ``exc`` is a database failure that a retry can outlive.

    A lost connection, a server restart or shutdown, an exhausted pool, a serialization
    failure or a deadlock are all `psycopg.OperationalError`. Re-running a node is safe:
    a write whose transaction did not commit is rolled back, and one that did commit is
    replayed by its idempotency key.
    """
    return isinstance(exc, psycopg.OperationalError)


TRANSIENT_DB_RETRY = RetryPolicy(
    initial_interval=0.5,
    backoff_factor=2.0,
    max_interval=4.0,
    max_attempts=5,
    jitter=True,
    retry_on=is_transient_db_error,
)
"""Node retries for transient database errors: up to 5 attempts over roughly 7-11 s."""


def build_graph(
    deps: NodeDeps | None = None, *, checkpointer: Checkpointer = None
) -> CompiledStateGraph[AgentState, Context, InputState, OutputState]:
    """Compile the payables graph with ``deps`` (default: real gate, configured models)."""
    deps = deps or NodeDeps()
    builder = StateGraph(
        AgentState, context_schema=Context, input_schema=InputState, output_schema=OutputState
    )
    nodes = {
        "router": make_router(deps),
        "planner": make_planner(deps),
        "executor": make_executor(deps),
        "approval": make_approval(deps),
        "verifier": make_verifier(deps),
        "respond": make_respond(deps),
    }
    for name, node in nodes.items():
        builder.add_node(
            name,
            guard_node(name, failpoints.around(name, node), database=lambda: deps.database),
            retry_policy=TRANSIENT_DB_RETRY,
        )
    builder.add_edge(START, "router")
    builder.add_edge("respond", END)
    return builder.compile(checkpointer=checkpointer, name=GRAPH_NAME)


def make_graph(
    config: Any = None,
) -> CompiledStateGraph[AgentState, Context, InputState, OutputState]:
    """Graph factory for servers that pass the run config (kept for symmetry with `graph`)."""
    return build_graph()


# The server traces runs through langsmith's process-wide client: make it redact first.
redact_process_traces()
graph = build_graph()
