"""Run-scoped settings, passed to the graph through ``context_schema``.

Environment variables supply the defaults when a `Context` is built; values passed for a
run (``graph.ainvoke(..., context=Context(...))`` or the server's ``context`` field) win.
Nodes read these through ``Runtime[Context]`` and never read the environment themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from runtime.errors import ConfigError
from runtime.prompts import PROMPT_VERSION

RULES_MODEL = "rules"
"""The model name that selects the deterministic, offline rules model."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _model_default(role: str) -> str:
    """Default model name for a role.

    `PAYABLES_<ROLE>_MODEL`, else `PAYABLES_MODEL`, else a small OpenAI model when a key is
    configured, else the offline rules model.
    """
    fallback = "gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else RULES_MODEL
    return os.environ.get(f"PAYABLES_{role.upper()}_MODEL") or os.environ.get(
        "PAYABLES_MODEL", fallback
    )


def _decimal(name: str, value: object) -> Decimal:
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}.") from exc
    if not result.is_finite() or result < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
    return result


@dataclass(frozen=True, kw_only=True)
class Context:
    """Settings for one run of the payables graph."""

    tenant: str = field(default_factory=lambda: _env("PAYABLES_TENANT", "default"))
    """Tenant the run belongs to (scopes audit chains and budgets in later planes)."""

    router_model: str = field(default_factory=lambda: _model_default("router"))
    """Chat model for the router role; "rules" means the deterministic rules model."""

    planner_model: str = field(default_factory=lambda: _model_default("planner"))
    """Chat model for the planner role; "rules" means the deterministic rules model."""

    respond_model: str = field(default_factory=lambda: _model_default("respond"))
    """Chat model that writes the summary; "rules" means the deterministic rules model."""

    approval_threshold: str = field(
        default_factory=lambda: _env("PAYABLES_APPROVAL_THRESHOLD", "10000")
    )
    """Payments above this amount need a reviewer with the controller role."""

    dual_control_threshold: str = field(
        default_factory=lambda: _env("PAYABLES_DUAL_CONTROL_THRESHOLD", "50000")
    )
    """Payments above this amount need two distinct approving reviewers."""

    price_tolerance_pct: str = field(
        default_factory=lambda: _env("PAYABLES_PRICE_TOLERANCE_PCT", "2")
    )
    """Allowed unit-price variance between invoice and PO, in percent."""

    amount_tolerance: str = field(default_factory=lambda: _env("PAYABLES_AMOUNT_TOLERANCE", "1.00"))
    """Allowed absolute difference between invoice total and the matched total."""

    max_plan_repairs: int = 2
    """How many times an invalid model plan is sent back for repair before the rules plan."""

    max_replans: int = 3
    """How many times the verifier may send the run back to the planner."""

    max_tool_calls: int = 40
    """Budget: tool calls per run; the run escalates before making one more."""

    max_identical_calls: int = 2
    """Loop detection: how often one tool may run with the same arguments in a run."""

    tool_timeout_s: float = 10.0
    """Default per-call timeout for tools, in seconds."""

    prompt_version: str = PROMPT_VERSION
    """Version of the prompts in `runtime.prompts`; recorded in results and traces."""

    def __post_init__(self) -> None:
        """Validate numeric settings up front so a bad value fails before the run starts."""
        for name in (
            "approval_threshold",
            "dual_control_threshold",
            "price_tolerance_pct",
            "amount_tolerance",
        ):
            _decimal(name, getattr(self, name))
        if self.dual_threshold < self.approval_limit:
            raise ConfigError(
                "dual_control_threshold must be >= approval_threshold "
                f"(got {self.dual_control_threshold} < {self.approval_threshold})."
            )
        if self.max_tool_calls < 1 or self.max_identical_calls < 1:
            raise ConfigError("max_tool_calls and max_identical_calls must be >= 1.")
        if self.max_plan_repairs < 0 or self.max_replans < 0:
            raise ConfigError("max_plan_repairs and max_replans must be >= 0.")
        if self.tool_timeout_s <= 0:
            raise ConfigError(f"tool_timeout_s must be > 0, got {self.tool_timeout_s}.")

    @property
    def approval_limit(self) -> Decimal:
        """`approval_threshold` as a Decimal."""
        return _decimal("approval_threshold", self.approval_threshold)

    @property
    def dual_threshold(self) -> Decimal:
        """`dual_control_threshold` as a Decimal."""
        return _decimal("dual_control_threshold", self.dual_control_threshold)

    @property
    def price_tolerance(self) -> Decimal:
        """`price_tolerance_pct` as a fraction (2 -> 0.02)."""
        return _decimal("price_tolerance_pct", self.price_tolerance_pct) / 100

    @property
    def amount_tolerance_abs(self) -> Decimal:
        """`amount_tolerance` as a Decimal."""
        return _decimal("amount_tolerance", self.amount_tolerance)
