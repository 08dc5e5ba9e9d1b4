"""What the models of one graph step consumed, collected without threading it through nodes.

The budget guard around every node opens a `Meter` (a context variable) before the node
runs; `runtime.models` charges each model call to it and asks it whether another call is
still within the run's budget. The guard then adds the meter's totals to the run's
``usage`` in graph state.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Meter:
    """Model usage of one node execution, and what is left of the run's budgets."""

    calls_left: int | None = None
    """Model calls still allowed in this run (None: unlimited, e.g. outside a graph)."""
    tokens_left: int | None = None
    """Tokens still allowed in this run."""
    cost_left_usd: float | None = None
    """Estimated USD still allowed in this run (and today for the tenant)."""

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    models: dict[str, int] = field(default_factory=dict)
    """Calls per model name."""
    start_call: Callable[[], Awaitable[str | None]] | None = None
    """Counts a call where it outlives the process, as the call starts: why it may not
    start (the thread's calls started, crashed attempts included, reached the budget), or
    None. Unset outside the budget guard."""

    def refusal(self) -> str | None:
        """Why no further model call may be made in this run, or None if one may."""
        if self.calls_left is not None and self.model_calls >= self.calls_left:
            return "model-call budget exhausted"
        if self.tokens_left is not None and self.input_tokens + self.output_tokens >= (
            self.tokens_left
        ):
            return "token budget exhausted"
        if self.cost_left_usd is not None and self.cost_usd >= self.cost_left_usd:
            return "cost budget exhausted"
        return None

    def charge(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        """Record one model call (a failed call counts, with whatever tokens it reported)."""
        self.model_calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd
        self.models[model] = self.models.get(model, 0) + 1


_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar(
    "payables_meter", default=None
)


def current_meter() -> Meter:
    """The meter of the node being executed (a throwaway one outside the budget guard)."""
    meter = _current.get()
    return meter if meter is not None else Meter()


@contextmanager
def metering(meter: Meter) -> Iterator[Meter]:
    """Make ``meter`` the current meter for the code inside the block."""
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)
