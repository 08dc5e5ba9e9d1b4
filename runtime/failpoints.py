"""Named crash and stall points, for proving exactly-once behaviour with real processes.

Off unless `PAYABLES_FAILPOINTS` lists points (comma-separated). Each entry is one of:

``NAME``
    Send SIGKILL to the current process at point ``NAME``: no cleanup, no flush, exactly
    what a crash or an OOM kill does.
``sleep:NAME:SECONDS``
    Pause at ``NAME`` for ``SECONDS``, after writing ``failpoint NAME: sleeping`` to
    stderr, so a test can act (send a signal, start a rival process, restart Postgres)
    while the process is known to be inside that step.
``raise:NAME``
    Raise `FailpointError` at ``NAME``: a bug the agent did not expect, for dead letters.
``flaky:NAME:TIMES``
    Raise `psycopg.OperationalError` (what psycopg raises for a lost connection) the first
    ``TIMES`` times this process reaches ``NAME``: a transient database failure, for
    retries.

Points: ``after_commit:TOOL`` (a write's transaction has committed, the graph has not yet
checkpointed), ``verifier`` (entering the verifier), and around every graph node
``before:NODE`` (entering it) and ``after:NODE`` (it has returned; its update is not yet
checkpointed).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from runtime.errors import ConfigError

if TYPE_CHECKING:  # tools.gate imports this module; nodes import tools.gate
    from langgraph.runtime import Runtime

    from nodes.deps import Node
    from runtime.context import Context
    from state.graph_state import AgentState

ENV_VAR = "PAYABLES_FAILPOINTS"

Kind = Literal["kill", "sleep", "raise", "flaky"]


class FailpointError(RuntimeError):
    """The deliberate, unexpected failure a ``raise:NAME`` failpoint injects."""


@dataclass(frozen=True)
class Action:
    """What to do at a point."""

    kind: Kind
    seconds: float = 0.0
    times: int = 0


def parse(listed: str) -> dict[str, Action]:
    """The points in a `PAYABLES_FAILPOINTS` value, by name."""
    points: dict[str, Action] = {}
    for raw in listed.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith(("sleep:", "flaky:")):
            kind, _, rest = entry.partition(":")
            name, _, number = rest.rpartition(":")
            try:
                value = float(number)
            except ValueError:
                value = -1.0
            if not name or not value >= 0:
                raise ConfigError(
                    f"{ENV_VAR} entry {entry!r} must look like {kind}:NAME:NUMBER, "
                    f"e.g. {kind}:verifier:2."
                )
            points[name] = (
                Action("sleep", seconds=value)
                if kind == "sleep"
                else Action("flaky", times=int(value))
            )
        elif entry.startswith("raise:"):
            points[entry.removeprefix("raise:")] = Action("raise")
        else:
            points[entry] = Action("kill")
    return points


def _action(name: str) -> Action | None:
    listed = os.environ.get(ENV_VAR, "")
    return parse(listed).get(name) if listed else None


def _announce(name: str, action: Action) -> None:
    sys.stderr.write(f"failpoint {name}: sleeping {action.seconds:g}s\n")
    sys.stderr.flush()


_flaky_hits: dict[str, int] = {}


def _kill_or_raise(name: str, action: Action) -> None:
    if action.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.kind == "raise":
        raise FailpointError(f"failpoint {name} raised (injected by {ENV_VAR})")
    elif action.kind == "flaky":
        _flaky_hits[name] = _flaky_hits.get(name, 0) + 1
        if _flaky_hits[name] <= action.times:
            raise psycopg.OperationalError(
                f"consuming input failed: server closed the connection unexpectedly "
                f"(failpoint {name}, {_flaky_hits[name]} of {action.times})"
            )


def hit(name: str) -> None:
    """Act at ``name`` if the environment lists it (a sleep blocks the thread)."""
    action = _action(name)
    if action is None:
        return
    if action.kind == "sleep":
        _announce(name, action)
        time.sleep(action.seconds)
    else:
        _kill_or_raise(name, action)


async def ahit(name: str) -> None:
    """Act at ``name`` if the environment lists it (a sleep lets the event loop run)."""
    action = _action(name)
    if action is None:
        return
    if action.kind == "sleep":
        _announce(name, action)
        await asyncio.sleep(action.seconds)
    else:
        _kill_or_raise(name, action)


def around(name: str, node: Node) -> Node:
    """``node`` with the points ``before:NAME`` and ``after:NAME`` at its edges."""

    @functools.wraps(node)  # keeps the Command[Literal[...]] hints Studio draws edges from
    async def with_points(state: AgentState, *, runtime: Runtime[Context]) -> Any:
        await ahit(f"before:{name}")
        result = await node(state, runtime=runtime)
        await ahit(f"after:{name}")
        return result

    return with_points
