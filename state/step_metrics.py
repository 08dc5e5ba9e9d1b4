"""One row per node execution (``step_metrics``), for `payables stats`.

The budget guard calls `record_step` once per node. Writing the row and adding the node's
model spend to the tenant's day (`state.costs`) is one statement, a CTE, so measuring a
step costs no extra round trip over charging it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from state.costs import TenantDay
from state.db import Database


@dataclass(frozen=True)
class StepMetric:
    """What one execution of one node took."""

    thread_id: str
    tenant: str
    node: str
    started_at: datetime
    duration_ms: float
    model_calls: int
    tokens: int
    cost_usd: float
    ok: bool


_RECORD = """
WITH step AS (
    INSERT INTO step_metrics (thread_id, tenant, node, started_at, duration_ms, model_calls,
                              tokens, cost_usd, ok)
    VALUES (%(thread_id)s, %(tenant)s, %(node)s, %(started_at)s, %(duration_ms)s,
            %(calls)s, %(tokens)s, %(cost)s, %(ok)s)
), spend AS (
    INSERT INTO tenant_daily_costs AS t (tenant, day, cost_usd, model_calls)
    SELECT %(tenant)s, (now() AT TIME ZONE 'UTC')::date, %(cost)s, %(calls)s
    WHERE %(calls)s > 0 OR %(cost)s > 0
    ON CONFLICT (tenant, day) DO UPDATE SET
        cost_usd = t.cost_usd + EXCLUDED.cost_usd,
        model_calls = t.model_calls + EXCLUDED.model_calls, updated_at = now()
    RETURNING day, cost_usd, model_calls, runs, refused_runs
)
SELECT * FROM spend
"""


async def record_step(database: Database, step: StepMetric) -> TenantDay | None:
    """Record ``step`` and charge its model spend to the tenant's day (one statement).

    Returns the tenant's new totals for today when the step spent anything, else None
    (the tenant's row was not touched).
    """
    if step.cost_usd < 0 or step.model_calls < 0 or step.tokens < 0:
        raise ValueError(
            f"step usage must be >= 0, got ${step.cost_usd}, {step.model_calls} calls,"
            f" {step.tokens} tokens"
        )
    async with database.connection() as conn:
        cur = await conn.execute(
            _RECORD,
            {
                "thread_id": step.thread_id,
                "tenant": step.tenant,
                "node": step.node,
                "started_at": step.started_at,
                "duration_ms": step.duration_ms,
                "calls": step.model_calls,
                "tokens": step.tokens,
                "cost": Decimal(str(round(step.cost_usd, 8))),
                "ok": step.ok,
            },
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return TenantDay(
        tenant=step.tenant,
        day=row["day"],
        cost_usd=float(row["cost_usd"]),
        model_calls=row["model_calls"],
        runs=row["runs"],
        refused_runs=row["refused_runs"],
    )
