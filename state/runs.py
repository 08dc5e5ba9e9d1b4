"""The run index: one row per thread, so listings never scan checkpoints.

The checkpoint is the source of truth for a thread's state and interrupts; this table
only says which threads exist, who asked, and their last known status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from guards.redaction import redact_text
from runtime.errors import BadInput
from state.costs import USED_BEFORE_SEED
from state.db import Database


class ThreadReused(BadInput):
    """A new request names the thread id of an earlier run (pruned, or of an earlier world)."""


def reused_thread(thread_id: str, pruned_at: Any) -> ThreadReused:
    """The refusal of a new run on a pruned thread's id (its run index row outlives it)."""
    when = f" on {pruned_at:%Y-%m-%d}" if pruned_at is not None else ""
    return ThreadReused(
        f"Thread {thread_id} was used by an earlier request and pruned{when}; thread ids are "
        "not reused (its run index row, approvals and audit rows still belong to that "
        "request). Start the request on a new thread."
    )


def reused_after_seed(thread_id: str) -> ThreadReused:
    """The refusal of a new run on a thread id a run of an earlier world used.

    Audit events are idempotent per thread (`state.audit`), so the new run's request,
    route, tool call and outcome rows would be taken for the old run's and not written.
    """
    return ThreadReused(
        f"Thread {thread_id} was used by an earlier request, before the world was last "
        "seeded; thread ids are not reused (its audit rows still belong to that request). "
        "Start the request on a new thread."
    )


async def used_before_seed(database: Database, thread_id: str) -> bool:
    """Whether a run of an earlier world (before the last `payables seed`) used the id."""
    async with database.connection() as conn:
        cur = await conn.execute(USED_BEFORE_SEED, {"thread": thread_id})
        return await cur.fetchone() is not None


async def record_run(
    database: Database,
    *,
    thread_id: str,
    request: str,
    requester: str,
    tenant: str,
    route: str | None,
    status: str,
    summary: str = "",
    reason: str = "",
    policy: Mapping[str, str] | None = None,
) -> None:
    """Insert or update a thread's row (idempotent: safe before an `interrupt()`).

    ``policy`` (`runtime.context.policy_of`) is recorded by the row's first write only:
    the approval policy the request was made under, which later legs cannot loosen.

    ``reason`` says why the run ended as it did (respond writes it with the final status);
    a later status without one clears it, so it always belongs to the current status.
    A pruned thread's row belongs to the run that was pruned: it is never updated, and
    writing it raises `ThreadReused` (the router refuses such a run before it writes
    anything; this holds for every writer, a run the cost cap refused too).
    """
    async with database.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO runs (thread_id, request, requester, tenant, route, status, summary,"
            " reason, policy) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (thread_id) DO UPDATE SET route = COALESCE(EXCLUDED.route, runs.route),"
            " status = EXCLUDED.status, summary = EXCLUDED.summary, reason = EXCLUDED.reason,"
            " updated_at = now() WHERE runs.pruned_at IS NULL",
            (
                thread_id,
                request,
                requester,
                tenant,
                route,
                status,
                summary,
                reason,
                Jsonb(dict(policy)) if policy is not None else None,
            ),
        )
        if cur.rowcount == 0:
            cur = await conn.execute(
                "SELECT pruned_at FROM runs WHERE thread_id = %s", (thread_id,)
            )
            row = await cur.fetchone()
            raise reused_thread(thread_id, row["pruned_at"] if row else None)


# The run index says "running" until respond records how a run ended; one that failed on
# the way is recorded as an open dead letter instead (replay or `continue` finish it).
SHOWN_STATUS = (
    "CASE WHEN runs.status = 'running' AND EXISTS (SELECT 1 FROM dead_letters AS d"
    " WHERE d.thread_id = runs.thread_id AND d.status = 'open') THEN 'failed'"
    " ELSE runs.status END"
)


RECENT_RUNS_SQL = (
    "SELECT * FROM (SELECT thread_id, request, requester, tenant, route,"
    f" {SHOWN_STATUS} AS status, summary, created_at, updated_at FROM runs) AS runs"
    " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
    " ORDER BY updated_at DESC LIMIT %(limit)s"
)
"""The runs `list_runs` shows, newest first (index ``runs_updated`` walks them in order)."""


async def list_runs(
    database: Database, *, status: str | None = None, limit: int | None = 100
) -> list[dict[str, Any]]:
    """Most recently updated runs first, optionally only those in ``status``.

    ``limit`` None lists them all. A run the index still calls running but whose failure
    is an open dead letter is listed as failed, as `payables show` says of it.
    """
    async with database.connection() as conn:
        cur = await conn.execute(RECENT_RUNS_SQL, {"status": status, "limit": limit})
        return [
            {**row, "request": redact_text(row["request"]), "summary": redact_text(row["summary"])}
            for row in await cur.fetchall()
        ]
