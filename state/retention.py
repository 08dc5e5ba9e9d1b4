"""Retention: delete the checkpoints of finished threads after a while (`payables prune`).

Only checkpoints go (LangGraph's ``checkpoints``, ``checkpoint_blobs`` and
``checkpoint_writes``, through the saver's own ``adelete_thread``). The run index row stays,
marked ``pruned_at``, so `payables threads` keeps the history and `payables show` can say
what happened; the audit chain, the approval decisions, the tool-call ledger and the AP
world are never touched.

A thread is pruned only when all of these hold, checked again under the thread's run
lock (no run can start on it meanwhile) and its run row's lock just before its
checkpoints are deleted:

- its run row says it finished (completed, refused, escalated or failed) longer ago than
  the cutoff;
- its latest checkpoint has no pending interrupt (no approval waits on it) and no next
  step (nothing `payables continue` could still finish). A run that died after respond
  recorded its final status and before the last checkpoint fails this one: it is kept,
  and every prune names it with the `payables continue` command that finishes it;
- it has no open dead letter (a replay needs the checkpoint).

Threads that are old enough but fail a check are reported as kept, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph.state import CompiledStateGraph

from runtime.errors import BadInput
from runtime.settings import MAX_RETENTION_DAYS
from state.db import Database
from state.graph_state import pending_steps
from state.routes import FINISHED_STATUSES

ThreadLock = Callable[[str], AbstractAsyncContextManager[Any]]
"""Takes a thread's run lock (`runtime.agent.Agent.thread_lock`); raises `BadInput` if busy."""


@dataclass
class ThreadRetention:
    """One old thread: what it holds, and why it was kept (None: pruned, or would be)."""

    thread_id: str
    tenant: str
    status: str
    updated_at: datetime
    checkpoints: int
    writes: int
    blobs: int
    kept_because: str | None = None


@dataclass
class PruneReport:
    """What `prune` did (or, with ``dry_run``, would do)."""

    older_than_days: int
    cutoff: datetime
    dry_run: bool
    pruned: list[ThreadRetention] = field(default_factory=list)
    kept: list[ThreadRetention] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        """Threads, checkpoints, writes and blobs pruned (or that would be)."""
        return {
            "threads": len(self.pruned),
            "checkpoints": sum(t.checkpoints for t in self.pruned),
            "writes": sum(t.writes for t in self.pruned),
            "blobs": sum(t.blobs for t in self.pruned),
        }

    def as_dict(self) -> dict[str, Any]:
        """The report as `payables prune --json` prints it."""
        return {
            "older_than_days": self.older_than_days,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "pruned": self.totals(),
            "threads": [asdict(t) for t in self.pruned],
            "kept": [asdict(t) for t in self.kept],
        }


# Old threads that still have checkpoints, with what they hold. (A pruned thread has none,
# unless its id was used again for a new run.)
_OLD_THREADS_SQL = """
SELECT r.thread_id, r.tenant, r.status, r.updated_at,
       (SELECT count(*) FROM checkpoints c WHERE c.thread_id = r.thread_id) AS checkpoints,
       (SELECT count(*) FROM checkpoint_writes w WHERE w.thread_id = r.thread_id) AS writes,
       (SELECT count(*) FROM checkpoint_blobs b WHERE b.thread_id = r.thread_id) AS blobs
FROM runs r
WHERE r.updated_at < %s
  AND EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = r.thread_id)
ORDER BY r.updated_at, r.thread_id
"""


async def prune(
    database: Database,
    graph: CompiledStateGraph[Any, Any, Any, Any],
    *,
    older_than_days: int,
    dry_run: bool = False,
    lock: ThreadLock | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Delete the checkpoints of threads that finished more than ``older_than_days`` ago.

    ``graph`` is the compiled payables graph with its checkpointer: it tells whether a
    thread's latest checkpoint still has an interrupt or a next step. ``lock`` takes the
    lock every run of a thread holds, so no run can start on a thread while it is pruned;
    a thread whose lock is busy is kept. Each thread is deleted in its own transaction, so
    an error part-way leaves every thread either whole or pruned.
    """
    if not 1 <= older_than_days <= MAX_RETENTION_DAYS:
        raise BadInput(
            f"--older-than must be between 1 and {MAX_RETENTION_DAYS} days, got {older_than_days}."
        )
    now = now or datetime.now(UTC)
    report = PruneReport(
        older_than_days=older_than_days,
        cutoff=now - timedelta(days=older_than_days),
        dry_run=dry_run,
    )
    async with database.connection() as conn:
        cur = await conn.execute(_OLD_THREADS_SQL, (report.cutoff,))
        old = [ThreadRetention(**row) for row in await cur.fetchall()]
    for thread in old:
        if dry_run:
            async with database.connection() as conn:
                thread.kept_because = await _reason_to_keep(conn, graph, thread.thread_id)
        else:
            await _prune_locked(database, graph, thread, report.cutoff, lock)
        (report.kept if thread.kept_because else report.pruned).append(thread)
    return report


async def _prune_locked(
    database: Database,
    graph: CompiledStateGraph[Any, Any, Any, Any],
    thread: ThreadRetention,
    cutoff: datetime,
    lock: ThreadLock | None,
) -> None:
    """`_prune_thread` while holding the thread's run lock, if there is one to take."""
    async with AsyncExitStack() as stack:
        if lock is not None:
            try:
                await stack.enter_async_context(lock(thread.thread_id))
            except BadInput:
                thread.kept_because = "a run on it is in progress right now"
                return
        await _prune_thread(database, graph, thread, cutoff)


async def _prune_thread(
    database: Database,
    graph: CompiledStateGraph[Any, Any, Any, Any],
    thread: ThreadRetention,
    cutoff: datetime,
) -> None:
    """Check ``thread`` again under its run row's lock, then delete its checkpoints.

    A thread with neither an interrupt nor a next step cannot move again: start, resume
    and continue all refuse it. The lock and the re-check cover a run that is finishing
    right now: its respond node writes the run row before the final checkpoint, so either
    the re-check sees the row's new time, or the checkpoint still shows a next step.
    """
    async with database.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT status, updated_at FROM runs WHERE thread_id = %s FOR UPDATE",
            (thread.thread_id,),
        )
        row = await cur.fetchone()
        if row is None:
            thread.kept_because = "its run row was removed meanwhile (`payables seed`?)"
            return
        thread.status, thread.updated_at = row["status"], row["updated_at"]
        if row["updated_at"] >= cutoff:
            thread.kept_because = "it ran again after the cutoff"
            return
        thread.kept_because = await _reason_to_keep(conn, graph, thread.thread_id)
        if thread.kept_because:
            return
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) AS checkpoints,"
            " (SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(t)s) AS writes,"
            " (SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %(t)s) AS blobs",
            {"t": thread.thread_id},
        )
        counts = await cur.fetchone()
        assert counts is not None
        thread.checkpoints, thread.writes, thread.blobs = (
            counts["checkpoints"],
            counts["writes"],
            counts["blobs"],
        )
        if not thread.checkpoints:
            thread.kept_because = "another prune removed its checkpoints meanwhile"
            return
        # The saver's own delete, on this connection: it commits with the run row's mark.
        await AsyncPostgresSaver(conn).adelete_thread(thread.thread_id)
        await conn.execute(
            "UPDATE runs SET pruned_at = now() WHERE thread_id = %s", (thread.thread_id,)
        )
        # Admission matters only while the thread can run again; a pruned one never does.
        await conn.execute("DELETE FROM run_admissions WHERE thread_id = %s", (thread.thread_id,))
        await conn.execute("DELETE FROM answer_claims WHERE thread_id = %s", (thread.thread_id,))
        await conn.execute(
            "DELETE FROM model_calls_started WHERE thread_id = %s", (thread.thread_id,)
        )


async def _reason_to_keep(
    conn: psycopg.AsyncConnection[dict[str, Any]],
    graph: CompiledStateGraph[Any, Any, Any, Any],
    thread_id: str,
) -> str | None:
    """Why ``thread_id`` must keep its checkpoints, or None if it may go."""
    cur = await conn.execute("SELECT status FROM runs WHERE thread_id = %s", (thread_id,))
    row = await cur.fetchone()
    status = row["status"] if row else None
    if status == "interrupted":
        return "it waits for an approval"
    if status not in FINISHED_STATUSES:
        return f"it has not finished (status {status}); `payables continue` can finish it"
    cur = await conn.execute(
        "SELECT dead_letter_id FROM dead_letters WHERE thread_id = %s AND status = 'open'"
        " ORDER BY dead_letter_id",
        (thread_id,),
    )
    open_letters = [r["dead_letter_id"] for r in await cur.fetchall()]
    if open_letters:
        ids = ", ".join(str(i) for i in open_letters)
        return f"open dead letter(s) {ids}; `payables deadletters replay` needs its checkpoint"
    snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    if snapshot.interrupts:
        return "its checkpoint has a pending interrupt (an approval waits on it)"
    if next_steps := pending_steps(snapshot):
        # The run index says it finished, the checkpoint does not: the process died after
        # respond recorded the final status and before its checkpoint, so the result was
        # never saved. Kept (pruning would make that final: nothing could write the result
        # any more) and said so here, at every prune, until `continue` finishes it.
        return (
            f"its final status ({status}) was recorded, but the process stopped before its "
            f"last checkpoint (next: {', '.join(next_steps)}), so its result was not saved; "
            f"`payables continue {thread_id}` finishes it, and a later prune removes it"
        )
    return None


async def pruned_run(database: Database, thread_id: str) -> dict[str, Any] | None:
    """The run row of ``thread_id`` if its checkpoints were pruned, else None."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT thread_id, request, requester, tenant, route, status, summary, created_at,"
            " updated_at, pruned_at FROM runs WHERE thread_id = %s AND pruned_at IS NOT NULL",
            (thread_id,),
        )
        return await cur.fetchone()
