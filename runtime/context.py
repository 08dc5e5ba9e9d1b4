"""Run-scoped settings, passed to the graph through ``context_schema``.

Environment variables supply the defaults when a `Context` is built; values passed for a
run (``graph.ainvoke(..., context=Context(...))`` or the server's ``context`` field) win.
Nodes read these through ``Runtime[Context]`` and never read the environment themselves.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from runtime.errors import ConfigError
from runtime.prompts import PROMPT_VERSION

RULES_MODEL = "rules"
"""The model name that selects the deterministic, offline rules model."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default  # set but empty counts as unset, as for numbers


def _model_default(role: str) -> str:
    """Default model name for a role.

    `PAYABLES_<ROLE>_MODEL`, else `PAYABLES_MODEL`, else a small OpenAI model when a key is
    configured, else the offline rules model.
    """
    fallback = "gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else RULES_MODEL
    return os.environ.get(f"PAYABLES_{role.upper()}_MODEL") or os.environ.get(
        "PAYABLES_MODEL", fallback
    )


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{name} must be an integer, got {raw!r}; set a number or unset it."
        ) from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{name} must be a number, got {raw!r}; set a number or unset it."
        ) from exc


_T = TypeVar("_T")


def _env_field(name: str, default: _T, read: Callable[[str, _T], _T]) -> Any:
    """A setting whose default is read from environment variable ``name``.

    The field records the variable, so an error about the setting can name what to change.
    """
    return field(default_factory=lambda: read(name, default), metadata={"env": name})


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in os.environ.get(name, "").split(",") if part.strip())


DEFAULT_MODEL_PRICES: dict[str, tuple[float, float]] = {
    # USD per 1,000 tokens (input, output), list prices; override with PAYABLES_MODEL_PRICES.
    "gpt-4o-mini": (0.00015, 0.0006),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1": (0.002, 0.008),
    RULES_MODEL: (0.0, 0.0),
}


def _model_prices() -> dict[str, tuple[float, float]]:
    """`DEFAULT_MODEL_PRICES` updated from `PAYABLES_MODEL_PRICES`.

    The variable is JSON: ``{"my-model": [input_per_1k, output_per_1k], ...}``.
    """
    prices = dict(DEFAULT_MODEL_PRICES)
    raw = os.environ.get("PAYABLES_MODEL_PRICES")
    if not raw:
        return prices
    hint = 'set it to JSON such as {"gpt-4o-mini": [0.00015, 0.0006]} (USD per 1k tokens)'
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"PAYABLES_MODEL_PRICES is not valid JSON ({exc}); {hint}.") from exc
    if not isinstance(table, dict):
        raise ConfigError(f"PAYABLES_MODEL_PRICES must be a JSON object; {hint}.")
    for model, pair in table.items():
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            # JSON true is an int to Python; a price it is not.
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair)
            or not all(x >= 0 for x in pair)
        ):
            raise ConfigError(f"PAYABLES_MODEL_PRICES[{model!r}] must be [input, output]; {hint}.")
        prices[str(model)] = (float(pair[0]), float(pair[1]))
    return prices


def _decimal(name: str, value: object) -> Decimal:
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}.") from exc
    if not result.is_finite() or result < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
    return result


_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_FX_HINT = (
    "set it to comma-separated CURRENCY=RATE pairs such as EUR=1.08,GBP=1.27, "
    "one unit of each currency in the approval currency"
)


def _fx_rates(raw: str, approval_currency: str) -> dict[str, Decimal]:
    """Parse `Context.fx_rates` (``EUR=1.08,GBP=1.27``) into currency -> rate."""
    rates: dict[str, Decimal] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        currency, sep, value = (piece.strip() for piece in entry.partition("="))
        if not sep or not _CURRENCY_RE.match(currency):
            raise ConfigError(
                f"fx_rates (PAYABLES_FX_RATES) entry {entry!r} is not CURRENCY=RATE; {_FX_HINT}."
            )
        if currency == approval_currency:
            raise ConfigError(
                f"fx_rates (PAYABLES_FX_RATES) names the approval currency {currency} itself; "
                "its amounts need no rate, remove the entry."
            )
        if currency in rates:
            raise ConfigError(
                f"fx_rates (PAYABLES_FX_RATES) names {currency} twice; keep one rate for it."
            )
        try:
            rate = Decimal(value)
        except InvalidOperation:
            rate = Decimal("NaN")
        if not rate.is_finite() or rate <= 0:
            raise ConfigError(
                f"fx_rates (PAYABLES_FX_RATES) rate for {currency} must be a number > 0, "
                f"got {value!r}; {_FX_HINT}."
            )
        rates[currency] = rate
    return rates


@dataclass(frozen=True, kw_only=True)
class Context:
    """Settings for one run of the payables graph."""

    tenant: str = _env_field("PAYABLES_TENANT", "default", _env)
    """Tenant the run belongs to (scopes audit chains and budgets in later planes)."""

    router_model: str = field(default_factory=lambda: _model_default("router"))
    """Chat model for the router role; "rules" means the deterministic rules model."""

    planner_model: str = field(default_factory=lambda: _model_default("planner"))
    """Chat model for the planner role; "rules" means the deterministic rules model."""

    respond_model: str = field(default_factory=lambda: _model_default("respond"))
    """Chat model that writes the summary; "rules" means the deterministic rules model."""

    approval_threshold: str = _env_field("PAYABLES_APPROVAL_THRESHOLD", "10000", _env)
    """Payments above this amount need a reviewer with the controller role."""

    dual_control_threshold: str = _env_field("PAYABLES_DUAL_CONTROL_THRESHOLD", "50000", _env)
    """Payments above this amount need two distinct approving reviewers."""

    approval_currency: str = _env_field("PAYABLES_APPROVAL_CURRENCY", "USD", _env)
    """ISO 4217 currency the approval and dual-control thresholds are stated in."""

    fx_rates: str = _env_field("PAYABLES_FX_RATES", "", _env)
    """Rates that bring an invoice's amount into `approval_currency` for the thresholds:
    ``EUR=1.08,GBP=1.27`` (one EUR is 1.08 units of the approval currency). A payment in a
    currency with no rate here cannot be held to the thresholds, so it needs dual control."""

    price_tolerance_pct: str = _env_field("PAYABLES_PRICE_TOLERANCE_PCT", "2", _env)
    """Allowed unit-price variance between invoice and PO, in percent."""

    amount_tolerance: str = _env_field("PAYABLES_AMOUNT_TOLERANCE", "1.00", _env)
    """Allowed absolute difference between an invoice's total and its lines plus tax, and
    between a line's amount and its quantity times unit price."""

    max_plan_repairs: int = 2
    """How many times an invalid model plan is sent back for repair before the rules plan."""

    max_replans: int = 3
    """How many times the verifier may send the run back to the planner."""

    max_tool_calls: int = _env_field("PAYABLES_MAX_TOOL_CALLS", 40, _env_int)
    """Budget: tool calls per run; the run escalates before making one more."""

    max_identical_calls: int = 2
    """Loop detection: how often one tool may run with the same arguments in a run."""

    max_steps: int = _env_field("PAYABLES_MAX_STEPS", 80, _env_int)
    """Budget: graph steps (node executions) per run."""

    max_model_calls: int = _env_field("PAYABLES_MAX_MODEL_CALLS", 30, _env_int)
    """Budget: chat-model calls per run (retries and repairs count)."""

    max_tokens: int = _env_field("PAYABLES_MAX_TOKENS", 200_000, _env_int)
    """Budget: input + output tokens per run, from the models' usage metadata."""

    max_cost_usd: float = _env_field("PAYABLES_MAX_COST_USD", 1.0, _env_float)
    """Budget: estimated model cost per run in USD (priced with `model_prices`)."""

    max_wall_clock_s: float = _env_field("PAYABLES_MAX_WALL_CLOCK_S", 600.0, _env_float)
    """Budget: seconds of work per run (time spent waiting for a reviewer does not count)."""

    budget_warn_fraction: float = _env_field("PAYABLES_BUDGET_WARN_FRACTION", 0.8, _env_float)
    """A soft warning is recorded when a budget reaches this fraction of its limit."""

    tenant_daily_cost_cap_usd: float = _env_field(
        "PAYABLES_TENANT_DAILY_COST_CAP_USD", 50.0, _env_float
    )
    """Per tenant per UTC day: estimated model spend allowed across all processes."""

    max_identical_plans: int = 1
    """Loop detection: how often the planner may repeat an earlier phase's plan unchanged."""

    model_prices: dict[str, tuple[float, float]] = field(default_factory=_model_prices)
    """USD per 1,000 tokens (input, output) per model name; unknown models cost the max."""

    model_fallbacks: tuple[str, ...] = field(
        default_factory=lambda: _env_list("PAYABLES_MODEL_FALLBACKS")
    )
    """Models tried in order when a role's model is unavailable; then the rules model."""

    model_timeout_s: float = _env_field("PAYABLES_MODEL_TIMEOUT_S", 30.0, _env_float)
    """Per-call timeout for a chat model, in seconds."""

    model_max_retries: int = _env_field("PAYABLES_MODEL_MAX_RETRIES", 2, _env_int)
    """Retries per model call on retryable errors (rate limit, timeout, 5xx, connection)."""

    retry_initial_s: float = _env_field("PAYABLES_RETRY_INITIAL_S", 0.5, _env_float)
    """First backoff delay; doubles per retry, with jitter, up to `retry_max_s`."""

    retry_max_s: float = _env_field("PAYABLES_RETRY_MAX_S", 8.0, _env_float)
    """Longest backoff delay between retries, in seconds."""

    breaker_failure_threshold: int = _env_field("PAYABLES_BREAKER_FAILURES", 5, _env_int)
    """Consecutive failures that open a model's or tool's circuit breaker."""

    breaker_cooldown_s: float = _env_field("PAYABLES_BREAKER_COOLDOWN_S", 30.0, _env_float)
    """How long an open breaker refuses calls before letting one trial call through."""

    tool_timeout_s: float = 10.0
    """Default per-call timeout for tools, in seconds."""

    tool_max_retries: int = _env_field("PAYABLES_TOOL_MAX_RETRIES", 2, _env_int)
    """Retries for read tools and idempotency-keyed writes on retryable failures."""

    prompt_version: str = PROMPT_VERSION
    """Version of the prompts in `runtime.prompts`; recorded in results and traces."""

    def __post_init__(self) -> None:
        """Validate numeric settings up front so a bad value fails before the run starts.

        Each error names the setting and, for one read from the environment, its variable.
        """
        if not self.tenant.strip():
            raise ConfigError(
                f"{_named('tenant')} must name a tenant, got {self.tenant!r}: every run, audit "
                "chain and cost cap belongs to one. Set it, or unset it for 'default'."
            )
        for name in (
            "approval_threshold",
            "dual_control_threshold",
            "price_tolerance_pct",
            "amount_tolerance",
        ):
            _decimal(_named(name), getattr(self, name))
        if not _CURRENCY_RE.match(self.approval_currency):
            raise ConfigError(
                f"{_named('approval_currency')} must be an ISO 4217 code "
                f"such as USD, got {self.approval_currency!r}."
            )
        _fx_rates(self.fx_rates, self.approval_currency)
        if self.dual_threshold < self.approval_limit:
            raise ConfigError(
                f"{_named('dual_control_threshold')} must be >= {_named('approval_threshold')} "
                f"(got {self.dual_control_threshold} < {self.approval_threshold})."
            )
        checks: tuple[tuple[tuple[str, ...], str, Callable[[float], bool]], ...] = (
            (
                (
                    "max_tool_calls",
                    "max_identical_calls",
                    "max_steps",
                    "max_model_calls",
                    "max_tokens",
                    "breaker_failure_threshold",
                ),
                ">= 1",
                lambda v: v >= 1,
            ),
            (
                (
                    "max_plan_repairs",
                    "max_replans",
                    "model_max_retries",
                    "tool_max_retries",
                    "max_identical_plans",
                    "max_cost_usd",
                    "tenant_daily_cost_cap_usd",
                    "retry_initial_s",
                    "breaker_cooldown_s",
                ),
                ">= 0",
                lambda v: v >= 0,
            ),
            (
                ("tool_timeout_s", "model_timeout_s", "max_wall_clock_s", "retry_max_s"),
                "> 0",
                lambda v: v > 0,
            ),
            (("budget_warn_fraction",), "in (0, 1]", lambda v: 0 < v <= 1),
        )
        for names, bound, holds in checks:
            for name in names:
                # `not holds` also refuses NaN, which every comparison answers False.
                if not holds(getattr(self, name)):
                    raise ConfigError(f"{_named(name)} must be {bound}, got {getattr(self, name)}.")

    @property
    def approval_limit(self) -> Decimal:
        """`approval_threshold` as a Decimal."""
        return _decimal("approval_threshold", self.approval_threshold)

    @property
    def dual_threshold(self) -> Decimal:
        """`dual_control_threshold` as a Decimal."""
        return _decimal("dual_control_threshold", self.dual_control_threshold)

    def in_approval_currency(self, amount: Decimal, currency: str) -> Decimal | None:
        """``amount`` of ``currency`` in `approval_currency`, unrounded; None with no rate."""
        if currency == self.approval_currency:
            return amount
        rate = _fx_rates(self.fx_rates, self.approval_currency).get(currency)
        return None if rate is None else amount * rate

    @property
    def price_tolerance(self) -> Decimal:
        """`price_tolerance_pct` as a fraction (2 -> 0.02)."""
        return _decimal("price_tolerance_pct", self.price_tolerance_pct) / 100

    @property
    def amount_tolerance_abs(self) -> Decimal:
        """`amount_tolerance` as a Decimal."""
        return _decimal("amount_tolerance", self.amount_tolerance)


POLICY_FIELDS = (
    "approval_threshold",
    "dual_control_threshold",
    "approval_currency",
    "fx_rates",
    "price_tolerance_pct",
    "amount_tolerance",
)
"""The settings that decide who must approve a call. A thread records them at its first
step (`runs.policy`), and every later leg applies the stricter requirement of those and its
own (`tools.policy.stricter`): a resume from a shell or a request with looser settings does
not lower what the reviewers were asked for. Only the operator's environment sets them on
the server."""


def policy_of(ctx: Context) -> dict[str, str]:
    """``ctx``'s `POLICY_FIELDS`, as a thread records them."""
    return {name: getattr(ctx, name) for name in POLICY_FIELDS}


def with_policy(ctx: Context, policy: Mapping[str, Any]) -> Context:
    """``ctx`` under a recorded ``policy`` (validated again, as any `Context` is)."""
    recorded: dict[str, Any] = {name: str(policy[name]) for name in POLICY_FIELDS if name in policy}
    return replace(ctx, **recorded)


def _named(setting: str) -> str:
    """``setting`` as an error names it: with its environment variable, when it has one."""
    env = _ENV_OF.get(setting)
    return f"{setting} ({env})" if env else setting


_ENV_OF = {f.name: f.metadata["env"] for f in fields(Context) if "env" in f.metadata}
