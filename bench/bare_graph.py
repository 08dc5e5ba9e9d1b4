"""The baseline: the payables graph's shape in bare LangGraph, nodes doing nothing.

Same six node names, same checkpointer, same durability, and the same sequence of steps
as a recorded agent run (``path``): each node only routes to the next name on the path,
and ``approval`` calls `interrupt()` as the agent's approval node does. What the agent
spends beyond this is ours: guards, gate, audit, budgets, routing logic, state size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command, interrupt

NODES = ("router", "planner", "executor", "approval", "verifier", "respond")
"""The agent's nodes (`graphs.payables.build_graph`)."""


class BareState(TypedDict, total=False):
    """A request and the position on the path: all a do-nothing node needs."""

    request: str
    position: int


@dataclass(frozen=True)
class BareContext:
    """The step sequence to follow (node names, as the agent's run took them)."""

    path: tuple[str, ...]


def _make_node(name: str) -> Any:
    async def node(state: BareState, *, runtime: Runtime[BareContext]) -> Command[Any]:
        position = state.get("position", 0)
        path = runtime.context.path
        if path[position] != name:
            raise RuntimeError(
                f"bare graph at {name}, but step {position} of the path is {path[position]}"
            )
        if name == "approval":
            interrupt({"action": "approve?"})
        following = path[position + 1] if position + 1 < len(path) else END
        return Command(goto=following, update={"position": position + 1})

    node.__name__ = name
    return node


def build_bare_graph(
    checkpointer: Checkpointer,
) -> CompiledStateGraph[BareState, BareContext, BareState, BareState]:
    """The bare graph: `NODES`, each routing along `BareContext.path`."""
    builder = StateGraph(BareState, context_schema=BareContext)
    for name in NODES:
        builder.add_node(name, _make_node(name), destinations=(*NODES, END))
    builder.add_edge(START, "router")
    return builder.compile(checkpointer=checkpointer, name="bare")
