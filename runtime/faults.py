"""Fault injection, so an operator can rehearse an outage and tests can cause one.

`PAYABLES_FAULTS` is a comma-separated list of rules; off when unset:

- ``model:KIND:P`` — every model call fails with KIND with probability P (0..1);
- ``model:NAME:KIND:P`` — only calls to model NAME;
- ``tool:NAME:KIND:P`` — calls of tool NAME (``*`` for every tool).

Model kinds: ``timeout``, ``rate_limit``, ``server_error``, ``connection``, ``bad_request``
(a 4xx that must not be retried), ``malformed`` (the model answers with unusable output).
Tool kinds: ``error`` (a retryable failure of the tool's backend), ``timeout``.
`PAYABLES_FAULTS_SEED` makes the random draws repeatable.

Example: ``PAYABLES_FAULTS=model:timeout:0.5,tool:schedule_payment:error:1``.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass

from runtime.errors import ConfigError

ENV_VAR = "PAYABLES_FAULTS"
SEED_VAR = "PAYABLES_FAULTS_SEED"
MODEL_KINDS = frozenset(
    {"timeout", "rate_limit", "server_error", "connection", "bad_request", "malformed"}
)
TOOL_KINDS = frozenset({"error", "timeout"})


@dataclass(frozen=True)
class FaultRule:
    """One parsed rule."""

    target: str
    """``model`` or ``tool``."""
    name: str
    """Model or tool name; ``*`` matches all."""
    kind: str
    probability: float


def parse_faults(spec: str) -> tuple[FaultRule, ...]:
    """Parse a `PAYABLES_FAULTS` value, naming the first bad rule and the expected form."""
    rules = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        form = "model:KIND:P, model:NAME:KIND:P or tool:NAME:KIND:P"
        if parts[0] == "model" and len(parts) == 3:
            target, name, kind, prob = "model", "*", parts[1], parts[2]
        elif parts[0] in ("model", "tool") and len(parts) == 4:
            target, name, kind, prob = parts[0], parts[1], parts[2], parts[3]
        else:
            raise ConfigError(f"{ENV_VAR}: rule {item!r} is not of the form {form}.")
        kinds = MODEL_KINDS if target == "model" else TOOL_KINDS
        if kind not in kinds:
            raise ConfigError(
                f"{ENV_VAR}: rule {item!r} has unknown {target} fault {kind!r}; "
                f"use one of {', '.join(sorted(kinds))}."
            )
        if target == "tool" and name not in ("*", "") and name not in _tool_names():
            # A typo would rehearse nothing, silently: the outage never happens.
            raise ConfigError(
                f"{ENV_VAR}: rule {item!r} names no tool {name!r}; use * or one of "
                f"{', '.join(_tool_names())}."
            )
        try:
            probability = float(prob)
        except ValueError:
            probability = -1.0
        if not 0.0 <= probability <= 1.0:
            raise ConfigError(
                f"{ENV_VAR}: rule {item!r} needs a probability between 0 and 1, got {prob!r}."
            )
        rules.append(FaultRule(target, name or "*", kind, probability))
    return tuple(rules)


def _tool_names() -> list[str]:
    from tools.registry import DEFAULT_REGISTRY  # the tools import this module

    return DEFAULT_REGISTRY.names()


class FaultInjector:
    """Draws faults for calls according to the rules in the environment."""

    def __init__(self) -> None:
        """Start with no rules; they are read from the environment at each draw."""
        self._spec: str | None = None
        self._rules: tuple[FaultRule, ...] = ()
        self._rng = random.Random()
        self._lock = threading.Lock()

    def _current_rules(self) -> tuple[FaultRule, ...]:
        spec = os.environ.get(ENV_VAR, "")
        if spec != self._spec:
            self._rules = parse_faults(spec)
            self._spec = spec
            seed = os.environ.get(SEED_VAR)
            self._rng = random.Random(seed) if seed else random.Random()
        return self._rules

    def draw(self, target: str, name: str) -> str | None:
        """The fault kind to inject into this call of ``target`` ``name``, or None."""
        with self._lock:
            for rule in self._current_rules():
                if rule.target != target or rule.name not in ("*", name):
                    continue
                if rule.probability >= 1.0 or self._rng.random() < rule.probability:
                    return rule.kind
        return None

    def validate_environment(self) -> None:
        """Raise `ConfigError` now if the environment's rules are malformed."""
        with self._lock:
            self._current_rules()


FAULTS = FaultInjector()
"""The process-wide injector."""
