"""Per-run budgets, checked before every graph step, and the usage every step adds.

`guard_node` wraps each node of the graph: it opens a `runtime.usage.Meter` for the
node's model calls and adds one step, the node's model usage and its time to the run's
``usage`` in graph state.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import Command

from nodes.deps import Node
from runtime.context import Context
from runtime.usage import Meter, metering
from state.graph_state import AgentState, Usage


def _with_usage(result: Any, usage: Usage) -> Any:
    """``result`` (a Command or a state update) with ``usage`` added to its update."""
    if isinstance(result, Command):
        update = result.update if isinstance(result.update, dict) else {}
        return Command(
            graph=result.graph,
            update={**update, "usage": usage},
            resume=result.resume,
            goto=result.goto,
        )
    if isinstance(result, dict):
        return {**result, "usage": usage}
    if result is None:
        return {"usage": usage}
    raise TypeError(f"node returned {type(result).__name__}; expected a Command or a dict")


def guard_node(name: str, node: Node) -> Node:
    """``node`` with its usage metered and added to the run's ``usage``."""

    @functools.wraps(node)  # keeps the Command[Literal[...]] hints Studio draws edges from
    async def guarded(state: AgentState, *, runtime: Runtime[Context]) -> Any:
        meter = Meter()
        started = time.monotonic()
        with metering(meter):
            result = await node(state, runtime=runtime)
        usage = Usage(
            steps=1,
            model_calls=meter.model_calls,
            input_tokens=meter.input_tokens,
            output_tokens=meter.output_tokens,
            cost_usd=meter.cost_usd,
            wall_clock_s=time.monotonic() - started,
        )
        return _with_usage(result, usage)

    return guarded
