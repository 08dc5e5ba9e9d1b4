"""One row per node execution (``step_metrics``), for `payables stats`.

The budget guard calls `record_step` once per node. A step that spent model money is
written at once, in one statement with the charge to the tenant's day (`state.costs`), so
the cap and the row never disagree. A step that spent nothing (routing, tool calls,
checks: most of them) is observability only. It waits in a buffer of its database and
event loop and goes to Postgres with the others in one multi-row insert that does not wait
for the disk (``synchronous_commit=off``):

- `FLUSH_DELAY_S` after the first waiting row, so runs that end close together share a
  statement (one per half second, however many runs finish in it);
- once `FLUSH_ROWS` rows wait;
- before `payables stats` reads (`flush_step_metrics`, called by `state.stats.run_stats`),
  so a process counts its own steps;
- when the database closes (`state.db.Database.close`).

A process that dies loses its unwritten rows, at most the last `FLUSH_DELAY_S` of unpaid
steps: `payables stats` then undercounts that process's last steps, and nothing else
depends on them (budgets live in the checkpointed ``usage``; money in the tenant's row).
A failed write is logged with the number of rows lost. This saves a statement and a disk
flush per step (about a tenth of a run's statements) and, by not writing at the end of
each run, one more per run.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from state.costs import TenantDay
from state.db import Database

log = logging.getLogger(__name__)

FLUSH_DELAY_S = 0.5
"""Longest a row of an unpaid step waits when nothing flushes it sooner."""

FLUSH_ROWS = 256
"""Rows that make the buffer write at once."""

FLUSH_CONNECT_TIMEOUT_S = 5.0
"""Longest a flush waits for a pooled connection. Shorter than the pool's 30 s: with
Postgres down, a process exiting would wait that out for rows nothing depends on."""


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

    @property
    def spent(self) -> bool:
        """Whether the step used a model (and so must be charged to its tenant now)."""
        return self.model_calls > 0 or self.cost_usd > 0


_RECORD_PAID = """
WITH step AS (
    INSERT INTO step_metrics (thread_id, tenant, node, started_at, duration_ms, model_calls,
                              tokens, cost_usd, ok)
    VALUES (%(thread_id)s, %(tenant)s, %(node)s, %(started_at)s, %(duration_ms)s,
            %(calls)s, %(tokens)s, %(cost)s, %(ok)s)
)
INSERT INTO tenant_daily_costs AS t (tenant, day, cost_usd, model_calls)
VALUES (%(tenant)s, (now() AT TIME ZONE 'UTC')::date, %(cost)s, %(calls)s)
ON CONFLICT (tenant, day) DO UPDATE SET
    cost_usd = t.cost_usd + EXCLUDED.cost_usd,
    model_calls = t.model_calls + EXCLUDED.model_calls, updated_at = now()
RETURNING day, cost_usd, model_calls, runs, refused_runs
"""

_INSERT_MANY = """
INSERT INTO step_metrics (thread_id, tenant, node, started_at, duration_ms, model_calls,
                          tokens, cost_usd, ok)
SELECT r.* FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[],
                       %s::float8[], %s::int[], %s::int[], %s::numeric[], %s::bool[]) AS r
-- Evaluated once, in this statement's transaction: it commits without waiting for the disk.
CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
"""


def _cost(step: StepMetric) -> Decimal:
    return Decimal(str(round(step.cost_usd, 8)))


async def record_step(database: Database, step: StepMetric) -> TenantDay | None:
    """Record ``step``; charge its model spend to the tenant's day if it spent any.

    Returns the tenant's new totals for today when the step spent anything (the row and
    the charge are then written at once, in one statement), else None: the row waits for
    the next flush (see the module docstring) and the tenant's row is not touched.
    """
    if step.cost_usd < 0 or step.model_calls < 0 or step.tokens < 0:
        raise ValueError(
            f"step usage must be >= 0, got ${step.cost_usd}, {step.model_calls} calls,"
            f" {step.tokens} tokens"
        )
    if not step.spent:
        await _buffer_of(database).add(database, step)
        return None
    async with database.connection() as conn:
        cur = await conn.execute(
            _RECORD_PAID,
            {
                "thread_id": step.thread_id,
                "tenant": step.tenant,
                "node": step.node,
                "started_at": step.started_at,
                "duration_ms": step.duration_ms,
                "calls": step.model_calls,
                "tokens": step.tokens,
                "cost": _cost(step),
                "ok": step.ok,
            },
        )
        row = await cur.fetchone()
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns the row
    return TenantDay(
        tenant=step.tenant,
        day=row["day"],
        cost_usd=float(row["cost_usd"]),
        model_calls=row["model_calls"],
        runs=row["runs"],
        refused_runs=row["refused_runs"],
    )


async def flush_step_metrics(database: Database) -> int:
    """Write the rows waiting for ``database`` on the running loop; returns how many.

    A failure is logged with the number of rows lost, not raised: the caller's run has
    finished, and its result must not depend on its statistics.
    """
    buffers = _BUFFERS.get(asyncio.get_running_loop())
    buffer = buffers.get(database) if buffers is not None else None
    if buffer is None:
        return 0
    if buffer.timer is not None and buffer.timer is not asyncio.current_task():
        buffer.timer.cancel()  # nothing left for it to write
        buffer.timer = None
    return await buffer.flush(database)


@dataclass
class _Buffer:
    """Rows of unpaid steps waiting for one database on one event loop.

    It holds no reference to the database (its key in `_BUFFERS`, a weak mapping), so a
    database dropped without closing is not kept alive by its buffer.
    """

    rows: list[StepMetric] = field(default_factory=list)
    timer: asyncio.Task[None] | None = None

    async def add(self, database: Database, step: StepMetric) -> None:
        self.rows.append(step)
        if len(self.rows) >= FLUSH_ROWS:
            await self.flush(database)
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().create_task(
                self._flush_later(database), name="payables-step-metrics-flush"
            )

    async def _flush_later(self, database: Database) -> None:
        try:
            await asyncio.sleep(FLUSH_DELAY_S)
        finally:
            # Also when cancelled: by the loop shutting down (write what waits, then stop),
            # or by an explicit flush, which wrote it all and may have started a new timer.
            if self.timer is asyncio.current_task():
                self.timer = None
                await self.flush(database)

    async def flush(self, database: Database) -> int:
        rows, self.rows = self.rows, []
        if not rows:
            return 0
        columns: list[list[Any]] = [[] for _ in range(9)]
        for step in rows:
            values = (
                step.thread_id,
                step.tenant,
                step.node,
                step.started_at,
                step.duration_ms,
                step.model_calls,
                step.tokens,
                _cost(step),
                step.ok,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        try:
            async with database.connection(wait_s=FLUSH_CONNECT_TIMEOUT_S) as conn:
                await conn.execute(_INSERT_MANY, columns)
        except Exception as exc:
            log.warning(
                "could not write %d step_metrics rows (payables stats will undercount them): %s",
                len(rows),
                exc,
            )
            return 0
        return len(rows)


_BUFFERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Database, _Buffer]
] = weakref.WeakKeyDictionary()


def _buffer_of(database: Database) -> _Buffer:
    loop = asyncio.get_running_loop()
    buffers = _BUFFERS.setdefault(loop, weakref.WeakKeyDictionary())
    buffer = buffers.get(database)
    if buffer is None:
        buffer = buffers[database] = _Buffer()
        database.before_close(flush_step_metrics)
    return buffer
