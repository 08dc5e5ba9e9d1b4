"""The baseline: the payables graph's shape in bare LangGraph, nodes doing nothing.

Same six node names, same checkpointer, same durability, and the same sequence of steps
as a recorded agent run (``path``): each node only routes to the next name on the path,
and ``approval`` calls `interrupt()` as the agent's approval node does. What the agent
spends beyond this is ours: guards, gate, audit, budgets, routing logic, state size.

The state replay (`build_state_replay_graph`) splits that difference in two: on the same
path, its do-nothing nodes write exactly the state updates the agent's run wrote (its
schema is the agent's), so what it spends beyond the bare graph is the cost of the agent's
state (channels, reducers, checkpoint rows and blobs), and what the agent spends beyond it
is the cost of the agent's nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Command, interrupt
from langgraph.typing import StateT

from state.graph_state import AgentState

NODES = ("router", "planner", "executor", "approval", "verifier", "respond")
"""The agent's nodes (`graphs.payables.build_graph`)."""


class BareState(TypedDict, total=False):
    """A request and the position on the path: all a do-nothing node needs."""

    request: str
    position: int


class ReplayState(AgentState, total=False):
    """The agent's state, and the position on the path."""

    position: int


@dataclass(frozen=True)
class BareContext:
    """The step sequence to follow (node names, as the agent's run took them)."""

    path: tuple[str, ...]
    updates: tuple[dict[str, Any], ...] = ()
    """The state update each step writes besides its position (the state replay only)."""


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
        recorded = runtime.context.updates[position] if runtime.context.updates else {}
        return Command(goto=following, update={**recorded, "position": position + 1})

    node.__name__ = name
    return node


def build_bare_graph(
    checkpointer: Checkpointer,
) -> CompiledStateGraph[BareState, BareContext, BareState, BareState]:
    """The bare graph: `NODES`, each routing along `BareContext.path`."""
    return _build(BareState, checkpointer, "bare")


def build_state_replay_graph(
    checkpointer: Checkpointer,
) -> CompiledStateGraph[ReplayState, BareContext, ReplayState, ReplayState]:
    """The state replay: `NODES` on the agent's schema, each writing its recorded update."""
    return _build(ReplayState, checkpointer, "state-replay")


def _build(
    schema: type[StateT], checkpointer: Checkpointer, name: str
) -> CompiledStateGraph[StateT, BareContext, StateT, StateT]:
    builder = StateGraph(schema, context_schema=BareContext)
    for node in NODES:
        builder.add_node(node, _make_node(node), destinations=(*NODES, END))
    builder.add_edge(START, "router")
    return builder.compile(checkpointer=checkpointer, name=name)


def recorded_updates(
    writes: list[tuple[str, str, str, Any]], path: tuple[str, ...]
) -> tuple[dict[str, Any], ...]:
    """Each step's state update, from a run's pending writes.

    ``writes`` are ``(checkpoint id, node, channel, value)`` in the order the run made them;
    a step's writes are those made on the same checkpoint. The run's input (``__start__``)
    and LangGraph's routing channels (``branch:…``) are left out: the replay's input and its
    `Command` make those. The steps must be ``path``.
    """
    steps: dict[str, tuple[str, dict[str, Any]]] = {}
    for checkpoint_id, node, channel, value in writes:
        if node == "__start__":
            continue
        _, update = steps.setdefault(checkpoint_id, (node, {}))
        if not channel.startswith("branch:"):
            update[channel] = value
    nodes = tuple(node for node, _ in steps.values())
    if nodes != path:
        raise ValueError(f"the recorded writes' steps {list(nodes)} are not the path {list(path)}")
    return tuple(update for _, update in steps.values())
