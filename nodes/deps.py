"""What nodes need from outside the graph: the tool gate and the model provider."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from langgraph.config import get_config
from langgraph.runtime import Runtime

from runtime.context import Context
from runtime.models import ModelProvider, OpenAIModelProvider
from state.db import Database, default_database
from state.graph_state import AgentState
from tools.gate import ToolGate


class Node(Protocol):
    """A graph node as LangGraph calls it: state, and the run's `Runtime` by keyword."""

    def __call__(self, state: AgentState, *, runtime: Runtime[Context]) -> Awaitable[Any]:
        """Run the node."""
        ...


@dataclass(frozen=True)
class NodeDeps:
    """Injected into every node by `graphs.payables.build_graph`."""

    gate: ToolGate = field(default_factory=lambda: ToolGate(default_database))
    models: ModelProvider = field(default_factory=OpenAIModelProvider)

    @property
    def database(self) -> Database:
        """The gate's database (one pool per process and loop)."""
        return self.gate.database


def current_thread_id() -> str:
    """The thread id of the run this node is executing in."""
    configurable = get_config().get("configurable", {})
    thread_id = configurable.get("thread_id")
    if not thread_id:
        raise RuntimeError("payables graph must run with a thread_id (a checkpointer is required)")
    return str(thread_id)
