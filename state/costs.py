"""Estimated model spend per tenant per UTC day, kept in Postgres so every process sees it.

The budget guard (`runtime.budgets`) admits a run only when the tenant's spend today plus
the run's own cost budget fits under the daily cap, and adds each node's metered model
cost to the tenant's row as the node finishes. Both are single statements on one row
(``INSERT ... ON CONFLICT DO UPDATE``), so concurrent processes never lose an update.

Admission does not reserve the run's budget: the row holds money actually spent, never
money a run might spend. Runs admitted at the same moment can therefore together spend
past the cap, but only by what their nodes in flight spend: before every node the guard
limits that node's model calls to what is left of the day, as read at most a second ago
(`runtime.budgets.SPEND_MAX_AGE_S`; a run's own charges count at once). A
reservation would hold the cap exactly, but a run paused for approval (for days) or
killed would hold money it never spends, and the tenant would be refused for nothing.

Admission is once per thread (``run_admissions``): a run's first step that runs again
(a retry, `payables continue`, a dead letter's replay) was admitted already, so it is
neither counted again nor refused by spend that came after its admission.

The day is the database's UTC date, so processes with skewed clocks agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from state.db import Database

_TODAY = "COALESCE(%(day)s::date, (now() AT TIME ZONE 'UTC')::date)"
"""SQL for the row's day: the caller's (tests pin one) or the database's UTC date."""


@dataclass(frozen=True)
class TenantDay:
    """One tenant's spend on one UTC day."""

    tenant: str
    day: date
    cost_usd: float
    model_calls: int = 0
    runs: int = 0
    refused_runs: int = 0

    def left_usd(self, cap_usd: float) -> float:
        """What the tenant may still spend today under ``cap_usd`` (never negative)."""
        return max(0.0, cap_usd - self.cost_usd)


@dataclass(frozen=True)
class Admission:
    """Whether a run may start, and the tenant's day as the decision saw it."""

    admitted: bool
    today: TenantDay
    pruned_at: datetime | None = None
    """When the thread's earlier run was pruned: its id is not to be reused (nothing counted)."""
    used_before_seed: bool = False
    """The thread id has audit rows from before the last `payables seed` (nothing counted)."""


def _tenant_day(tenant: str, row: dict[str, Any]) -> TenantDay:
    return TenantDay(
        tenant=tenant,
        day=row["day"],
        cost_usd=float(row["cost_usd"]),
        model_calls=row["model_calls"],
        runs=row["runs"],
        refused_runs=row["refused_runs"],
    )


_COLUMNS = "day, cost_usd, model_calls, runs, refused_runs"

USED_BEFORE_SEED = (
    "SELECT 1 FROM audit_events WHERE thread_id = %(thread)s"
    " AND NOT EXISTS (SELECT 1 FROM run_admissions WHERE thread_id = %(thread)s)"
    " AND NOT EXISTS (SELECT 1 FROM runs WHERE thread_id = %(thread)s) LIMIT 1"
)
"""A row if a run of an earlier world used the thread id ``%(thread)s``.

The audit chain outlives worlds; `payables seed` clears the run index and admissions with
the threads. A thread of this world that has audit rows has an admission (admitted runs
record it before their first audit row) or a run index row (a run the cost cap refused;
a pruned one keeps its row).
"""


async def spent_today(database: Database, tenant: str, *, day: date | None = None) -> TenantDay:
    """The tenant's spend today (zero when it has not spent anything yet)."""
    async with database.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM tenant_daily_costs"
            f" WHERE tenant = %(tenant)s AND day = {_TODAY}",
            {"tenant": tenant, "day": day},
        )
        row = await cur.fetchone()
        if row is not None:
            return _tenant_day(tenant, row)
        cur = await conn.execute(f"SELECT {_TODAY} AS day", {"day": day})
        today = await cur.fetchone()
    assert today is not None
    return TenantDay(tenant=tenant, day=today["day"], cost_usd=0.0)


async def admit_run(
    database: Database,
    tenant: str,
    *,
    thread_id: str,
    max_cost_usd: float,
    cap_usd: float,
    day: date | None = None,
) -> Admission:
    """Admit the run of ``thread_id`` (cost budget ``max_cost_usd``) if today's spend leaves room.

    One statement decides and counts the run (``runs`` or ``refused_runs``), so two
    processes admitting at once both see a consistent row, and records an admitted thread
    in ``run_admissions``. A thread found there was admitted before (its first step runs
    again): it is admitted without being counted or checked against the cap again. A
    thread whose earlier run was pruned is neither counted nor recorded; ``pruned_at``
    says so, for the caller to refuse it (`state.runs.reused_thread`). Nor is a thread
    whose id a run of an earlier world used (`USED_BEFORE_SEED`); ``used_before_seed``
    says so (`state.runs.reused_after_seed`). Nothing is reserved (see the module docstring).
    """
    params = {
        "tenant": tenant,
        "thread": thread_id,
        "day": day,
        "max_cost": Decimal(str(max_cost_usd)),
        "cap": Decimal(str(cap_usd)),
    }
    new = (
        "NOT EXISTS (SELECT 1 FROM prior) AND NOT EXISTS (SELECT 1 FROM pruned)"
        " AND NOT EXISTS (SELECT 1 FROM earlier)"
    )
    async with database.connection() as conn:
        # Creates today's row or locks it (ON CONFLICT DO UPDATE), so the check and the
        # count agree; a new row has spent nothing, so it fits iff the budget does.
        cur = await conn.execute(
            "WITH prior AS (SELECT 1 FROM run_admissions WHERE thread_id = %(thread)s),"
            " pruned AS (SELECT pruned_at FROM runs"
            "  WHERE thread_id = %(thread)s AND pruned_at IS NOT NULL),"
            f" earlier AS ({USED_BEFORE_SEED}),"
            " counted AS (INSERT INTO tenant_daily_costs AS t (tenant, day, runs, refused_runs)"
            f" VALUES (%(tenant)s, {_TODAY},"
            f"  CASE WHEN {new} AND %(max_cost)s <= %(cap)s THEN 1 ELSE 0 END,"
            f"  CASE WHEN {new} AND %(max_cost)s > %(cap)s THEN 1 ELSE 0 END)"
            " ON CONFLICT (tenant, day) DO UPDATE SET"
            " runs = t.runs"
            f"   + CASE WHEN {new} AND t.cost_usd + %(max_cost)s <= %(cap)s THEN 1 ELSE 0 END,"
            " refused_runs = t.refused_runs"
            f"   + CASE WHEN {new} AND t.cost_usd + %(max_cost)s > %(cap)s THEN 1 ELSE 0 END,"
            " updated_at = now()"
            f" RETURNING {_COLUMNS},"
            f"  NOT {new} OR cost_usd + %(max_cost)s <= %(cap)s AS admitted),"
            " claimed AS (INSERT INTO run_admissions (thread_id, tenant, day)"
            f"  SELECT %(thread)s, %(tenant)s, day FROM counted WHERE admitted AND {new}"
            "  ON CONFLICT (thread_id) DO NOTHING)"
            f" SELECT {_COLUMNS}, admitted, (SELECT pruned_at FROM pruned),"
            "  EXISTS (SELECT 1 FROM earlier) AS used_before_seed FROM counted",
            params,
        )
        row = await cur.fetchone()
    assert row is not None
    return Admission(
        admitted=bool(row["admitted"]),
        today=_tenant_day(tenant, row),
        pruned_at=row["pruned_at"],
        used_before_seed=bool(row["used_before_seed"]),
    )


async def add_spend(
    database: Database,
    tenant: str,
    *,
    cost_usd: float,
    model_calls: int,
    day: date | None = None,
) -> TenantDay:
    """Add one node's model spend to the tenant's row for today; return the new totals."""
    if cost_usd < 0 or model_calls < 0:
        raise ValueError(f"spend must be >= 0, got ${cost_usd} and {model_calls} calls")
    async with database.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO tenant_daily_costs AS t (tenant, day, cost_usd, model_calls)"
            f" VALUES (%(tenant)s, {_TODAY}, %(cost)s, %(calls)s)"
            " ON CONFLICT (tenant, day) DO UPDATE SET"
            " cost_usd = t.cost_usd + EXCLUDED.cost_usd,"
            " model_calls = t.model_calls + EXCLUDED.model_calls, updated_at = now()"
            f" RETURNING {_COLUMNS}",
            {
                "tenant": tenant,
                "day": day,
                "cost": Decimal(str(round(cost_usd, 8))),
                "calls": model_calls,
            },
        )
        row = await cur.fetchone()
    assert row is not None
    return _tenant_day(tenant, row)


async def start_model_call(database: Database, thread_id: str, budget: int) -> str | None:
    """Count a model call of ``thread_id`` as it starts; why it may not start, or None.

    The count outlives the process, unlike the run's ``usage``, which a step adds to only
    when it returns: a step killed after its calls (a crash loop, each restart continuing
    the thread) would otherwise spend the budget again on every restart. A refused call is
    counted too; it is not made, and every later one is refused as well.
    """
    async with database.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO model_calls_started (thread_id, calls) VALUES (%s, 1)"
            " ON CONFLICT (thread_id) DO UPDATE"
            " SET calls = model_calls_started.calls + 1, updated_at = now()"
            " RETURNING calls",
            (thread_id,),
        )
        row = await cur.fetchone()
    assert row is not None  # an upsert with RETURNING always answers
    started = int(row["calls"])
    if started <= budget:
        return None
    return (
        f"model-call budget exhausted ({budget}/{budget} calls started on this thread, those "
        "of attempts that never finished included)"
    )
