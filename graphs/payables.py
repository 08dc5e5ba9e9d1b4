"""Assembly of the payables graph.

``START → router → planner → executor ⇄ approval → verifier → (planner | respond) → END``,
with router and verifier able to go straight to respond. `graph` is compiled without a
checkpointer for the LangGraph server (which brings its own); `langgraph.json` serves it
through `served_graph`, which holds the thread's lock while a server run executes. The CLI
and tests call `build_graph(checkpointer=...)`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, RetryPolicy
from langgraph_sdk.runtime import ServerRuntime
from starlette.exceptions import HTTPException

from nodes.approval import make_approval
from nodes.deps import Node, NodeDeps
from nodes.executor import make_executor
from nodes.planner import make_planner
from nodes.respond import make_respond
from nodes.router import make_router
from nodes.verifier import make_verifier
from runtime import failpoints
from runtime.budgets import guard_node
from runtime.context import Context
from runtime.errors import PayablesError
from runtime.logs import redact_process_logs
from runtime.tracing import redact_process_traces
from state.answer_claims import ANSWER_CLAIM_TTL, release_claims_of
from state.db import Database, ThreadLock, check_held_thread_lock, default_database
from state.graph_state import AgentState, InputState, OutputState

GRAPH_NAME = "payables"

log = logging.getLogger(__name__)


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


def checks_thread_lock(node: Node) -> Node:
    """``node``, first checking that its run still holds the thread's lock.

    A run whose lock connection died (`state.db.ThreadLock`) stops with `ThreadLockLost`
    before the step does anything: another process may be running the thread by now.
    """

    @functools.wraps(node)  # keeps the Command[Literal[...]] hints Studio draws edges from
    async def checked(state: AgentState, *, runtime: Runtime[Context]) -> Any:
        check_held_thread_lock()
        return await node(state, runtime=runtime)

    return checked


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
            checks_thread_lock(
                guard_node(name, failpoints.around(name, node), database=lambda: deps.database)
            ),
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


# The server traces runs through langsmith's process-wide client and logs through its own
# handlers: make both mask accounts and secrets first.
redact_process_traces()
redact_process_logs()
graph = build_graph()

SERVER_LOCK_WAIT_S = 10.0
"""How long a server run waits for its thread's lock before it fails, running nothing."""
STATE_WRITE_LOCK_WAIT_S = 1.0
"""How long an admin's direct state write waits for the thread's lock before its 409."""


class ThreadBusy(PayablesError, TimeoutError):
    """Another process held the thread's lock for longer than a server run waits for it.

    A `TimeoutError` too: the LangGraph server tells the caller the message of only a few
    exception types (`langgraph_api.serde`), and "An internal error occurred" otherwise.
    """


@asynccontextmanager
async def server_run_lock(
    database: Database, thread_id: str, *, wait_s: float = SERVER_LOCK_WAIT_S
) -> AsyncIterator[None]:
    """Hold ``thread_id``'s lock for the block, waiting up to ``wait_s`` for it.

    The lock every `payables` command that drives or deletes a thread takes (run, resume,
    continue, dead-letter replay, prune; `payables seed` refuses while any is held). A
    server run waits for it rather than refusing at once: `payables prune` holds it for a
    moment per thread, and the server's own queue already waits its turn. Still busy after
    ``wait_s`` (a `payables` run on the thread), it raises `ThreadBusy` and nothing runs.
    """
    lock = ThreadLock(database, thread_id)
    if not await lock.take(wait_s=wait_s):
        raise ThreadBusy(
            f"Thread {thread_id} is being run by another process (a `payables` "
            f"command) and was still busy after {wait_s:g} s, so nothing was run "
            "or written; try again once that finishes (`payables show "
            f"{thread_id}` says where the thread is)."
        )
    async with lock.held():
        yield


async def _release_answers_undelivered(thread_id: str, runtime: ServerRuntime[Any]) -> None:
    """Free the approval requests a reviewer's answer claimed, as the answer's run ends.

    The approval node releases the claim of an answer it takes; a run cancelled before it
    got there, or whose answer named an interrupt no longer pending (LangGraph drops it),
    held the request from other reviewers until the claim expired.
    """
    user = runtime.user
    if user is None or "role" not in user or user["role"] == "clerk":
        return  # no authentication, or a clerk: they answer nothing, so claim nothing
    try:
        async with default_database().connection() as conn:
            await release_claims_of(conn, thread_id=thread_id, reviewer=user.identity)
    except psycopg.Error as exc:
        # Raised here it would replace the run's own outcome; the claim still expires.
        log.warning(
            "could not release %s's answer claims on thread %s (they expire in %s): %r",
            user.identity,
            thread_id,
            ANSWER_CLAIM_TTL,
            exc,
        )


@asynccontextmanager
async def served_graph(
    config: RunnableConfig, runtime: ServerRuntime[Any]
) -> AsyncIterator[CompiledStateGraph[AgentState, Context, InputState, OutputState]]:
    """The graph factory `langgraph.json` names: `graph`, locked while it writes a thread.

    The server enters it around each run's whole execution, checkpoint writes included
    (``threads.create_run``), around an admin's direct state write (``threads.update``),
    and around reads of state and schemas, which take no lock. A run holds its thread's
    lock as every `payables` run does, so `payables seed` refuses while it executes,
    `payables prune` keeps its thread, and `payables continue`, `resume` or a dead-letter
    replay cannot drive the thread beside it. A state write that finds the thread held by
    a `payables` command gets 409, as the server answers one made during its own run.
    """
    thread_id = (config.get("configurable") or {}).get("thread_id")
    if not thread_id or runtime.access_context not in ("threads.create_run", "threads.update"):
        yield graph
        return
    if runtime.execution_runtime is not None:
        async with server_run_lock(default_database(), str(thread_id)):
            try:
                yield graph
            finally:
                await _release_answers_undelivered(str(thread_id), runtime)
        return
    try:
        async with server_run_lock(
            default_database(), str(thread_id), wait_s=STATE_WRITE_LOCK_WAIT_S
        ):
            yield graph
    except ThreadBusy as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
