"""Running the graph from a process.

Open the database, compile with the Postgres checkpointer, and turn a thread's checkpoint
into the view the CLI and tests print.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from langsmith import Client

from graphs.payables import build_graph
from guards.redaction import redact, redact_text
from nodes.approval import validated_edits
from nodes.deps import NodeDeps
from runtime.context import Context
from runtime.errors import BadInput, NotFound, ResumeError
from runtime.models import ModelProvider, OpenAIModelProvider
from runtime.tracing import traced
from state.approvals import ApprovalRequest, parse_resume
from state.db import Database, default_database, migrate
from state.graph_state import Attachment
from state.runs import list_runs
from tools.gate import ToolGate


@dataclass
class Agent:
    """A compiled graph bound to a Postgres checkpointer and the app database."""

    graph: CompiledStateGraph[Any, Any, Any, Any]
    database: Database
    gate: ToolGate
    tracing_client: Client | None = None
    """LangSmith client for this agent's runs (default: a redacting one when tracing is on)."""

    @staticmethod
    def config(thread_id: str) -> RunnableConfig:
        """The run config for a thread."""
        return {"configurable": {"thread_id": thread_id}}

    @staticmethod
    def traced_config(
        thread_id: str, context: Context, *, actor: str, action: str
    ) -> RunnableConfig:
        """Run config whose name, tags and metadata join LangSmith traces to the thread."""
        return {
            "configurable": {"thread_id": thread_id},
            "run_name": f"payables:{action}",
            "tags": ["payables", action],
            "metadata": {
                "thread_id": thread_id,
                "actor": actor,
                "tenant": context.tenant,
                "prompt_version": context.prompt_version,
            },
        }

    async def start(
        self,
        request: str,
        *,
        user: str,
        thread_id: str | None = None,
        attachments: list[Attachment] | None = None,
        context: Context | None = None,
    ) -> dict[str, Any]:
        """Run a new request to completion or to its first interrupt; return the view."""
        thread_id = thread_id or str(uuid.uuid4())
        snapshot = await self.graph.aget_state(self.config(thread_id))
        if snapshot.values:
            raise BadInput(
                f"Thread {thread_id} already exists; start a new request without "
                "--thread, or answer its approval with `payables resume`."
            )
        context = context or Context()
        with traced(self.tracing_client):
            await self.graph.ainvoke(
                {"request": request, "user": user, "attachments": attachments or []},
                self.traced_config(thread_id, context, actor=user, action="start"),
                context=context,
                durability="sync",
            )
        return await self.view(thread_id)

    async def pending(self, thread_id: str) -> list[tuple[str, ApprovalRequest]]:
        """The thread's pending approval interrupts as ``(interrupt_id, request)``."""
        snapshot = await self.graph.aget_state(self.config(thread_id))
        return [(i.id, i.value) for i in snapshot.interrupts]

    async def resume(
        self,
        thread_id: str,
        value: dict[str, Any],
        *,
        interrupt_id: str | None = None,
        context: Context | None = None,
    ) -> dict[str, Any]:
        """Answer the thread's pending approval with ``value``; refuse anything else."""
        snapshot = await self.graph.aget_state(self.config(thread_id))
        if not snapshot.values:
            raise NotFound(f"No thread {thread_id}; `payables threads` lists them.")
        interrupts = list(snapshot.interrupts)
        if not interrupts:
            status = snapshot.values.get("status") or "running"
            raise ResumeError(
                f"Thread {thread_id} has no pending approval (status: {status}); "
                "it was already resolved. `payables show` prints its result."
            )
        if interrupt_id is not None:
            interrupts = [i for i in interrupts if i.id == interrupt_id]
            if not interrupts:
                raise ResumeError(
                    f"Interrupt {interrupt_id} is not pending on {thread_id}; "
                    "it was already resolved or never existed."
                )
        target = interrupts[0]
        resume = parse_resume(value, target.value)
        context = context or Context()
        # Refuse here what the approval node would refuse, so the caller gets an error
        # (exit 2) instead of a run that pauses again with an error in its payload.
        validated_edits(self.gate, snapshot.values.get("route") or "", target.value, resume)
        with traced(self.tracing_client):
            await self.graph.ainvoke(
                Command(resume={target.id: value}),
                self.traced_config(thread_id, context, actor=resume.reviewer.id, action="resume"),
                context=context,
                durability="sync",
            )
        return await self.view(thread_id)

    async def continue_run(
        self, thread_id: str, *, context: Context | None = None
    ) -> dict[str, Any]:
        """Finish a run that stopped between checkpoints (a crash, a kill, a lost database).

        The graph re-runs the interrupted step from its last checkpoint; the gate's
        idempotency keys turn any side effect that had already committed into a replay.
        """
        snapshot = await self.graph.aget_state(self.config(thread_id))
        if not snapshot.values:
            raise NotFound(f"No thread {thread_id}; `payables threads` lists them.")
        if snapshot.interrupts:
            raise ResumeError(f"Thread {thread_id} is waiting for approval; use `payables resume`.")
        if not snapshot.next:
            status = snapshot.values.get("status", "completed")
            raise ResumeError(f"Thread {thread_id} already finished (status: {status}).")
        context = context or Context()
        with traced(self.tracing_client):
            await self.graph.ainvoke(
                None,
                self.traced_config(thread_id, context, actor="recovery", action="continue"),
                context=context,
                durability="sync",
            )
        return await self.view(thread_id)

    async def view(self, thread_id: str) -> dict[str, Any]:
        """The thread as the CLI's ``--json`` prints it."""
        snapshot = await self.graph.aget_state(self.config(thread_id))
        if not snapshot.values:
            raise NotFound(f"No thread {thread_id}; `payables threads` lists them.")
        values = snapshot.values
        pending = [
            {
                "interrupt_id": i.id,
                "action": action["name"],
                "args": action["args"],
                "description": action["description"],
                "evidence": evidence,
                "requirement": step,
                "requester": i.value["requester"],
                "error": i.value.get("error"),
            }
            for i in snapshot.interrupts
            for action, evidence, step in zip(
                i.value["action_requests"], i.value["evidence"], i.value["steps"], strict=True
            )
        ]
        if snapshot.interrupts:
            status = "interrupted"
        elif snapshot.next:
            status = "failed" if any(t.error for t in snapshot.tasks) else "running"
        else:
            status = values.get("status", "completed")
        plan = values.get("plan")
        return {
            "thread_id": thread_id,
            "status": status,
            "route": values.get("route"),
            "request": redact_text(values.get("request", "")),
            "user": values.get("user"),
            "plan": [
                {
                    "step_id": s["step_id"],
                    "tool": s["tool"],
                    "args": redact(s["args"]),
                    "why": redact_text(s["why"]),
                }
                for s in (plan["steps"] if plan else [])
            ],
            "plan_source": plan["source"] if plan else None,
            "model_path": values.get("model_path", {}),
            "pending_approvals": pending,
            "reason": values.get("reason", ""),
            "summary": values.get("summary", ""),
            "result": values.get("result"),
            "flags": values.get("flags", []),
        }

    async def history(self, thread_id: str) -> list[dict[str, Any]]:
        """Every checkpoint of a thread, oldest first."""
        steps = []
        async for snap in self.graph.aget_state_history(self.config(thread_id)):
            steps.append(
                {
                    "checkpoint_id": snap.config["configurable"].get("checkpoint_id"),
                    "step": snap.metadata.get("step") if snap.metadata else None,
                    "source": snap.metadata.get("source") if snap.metadata else None,
                    "next": list(snap.next),
                    "created_at": snap.created_at,
                    "interrupts": [i.id for i in snap.interrupts],
                }
            )
        return list(reversed(steps))

    async def pending_everywhere(self) -> list[dict[str, Any]]:
        """Pending approvals across every thread that the run index says is interrupted."""
        rows = await list_runs(self.database, status="interrupted", limit=500)
        found = []
        for row in rows:
            view = await self.view(row["thread_id"])
            for approval in view["pending_approvals"]:
                found.append(
                    {
                        "thread_id": row["thread_id"],
                        "request": row["request"],
                        "route": view["route"],
                        **approval,
                    }
                )
        return found


@asynccontextmanager
async def open_agent(
    models: ModelProvider | None = None,
    database: Database | None = None,
    tracing_client: Client | None = None,
) -> AsyncIterator[Agent]:
    """Migrate (once per process), open the pool, and yield an `Agent`."""
    database = database or default_database()
    await migrate(database.uri)
    gate = ToolGate(database)
    saver = AsyncPostgresSaver(await database.pool())
    graph = build_graph(
        NodeDeps(gate=gate, models=models or OpenAIModelProvider()), checkpointer=saver
    )
    try:
        yield Agent(graph=graph, database=database, gate=gate, tracing_client=tracing_client)
    finally:
        await database.close()
