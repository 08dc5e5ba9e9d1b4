"""Dead letters: runs that failed unexpectedly or exhausted their retries, kept to replay.

A row holds the thread, the node that failed, the error's class and message, how many
attempts were made, and a payload with what a replay needs (the action, the run's input or
resume value, the last checkpoint id, the run's context). Messages and payloads are
redacted before they are stored: a dead letter must not become a side channel for account
numbers. When redaction changed part of the payload, the stored payload names the parts
(``"redacted": ["input"]``): that input is no longer what the user sent, so a replay must
not re-send it.

Statuses: ``open`` (not replayed yet), ``replayed`` (a replay finished the run or brought
it to its next approval), ``failed_again`` (the replay failed too; a newer dead letter
holds that failure), ``resolved`` (nothing was left to replay: the thread had finished by
other means, or it waits for a reviewer). A thread that finishes by a later run (resuming
again, ``payables continue``, the LangGraph server) resolves its open dead letters as its
final status reaches the run index (a trigger, migration 0012), except the one a replay
holds, which the replay marks itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from guards.redaction import redact, redact_text
from runtime.errors import BadInput, NotFound
from state.db import Database

DeadLetterAction = Literal["start", "resume", "continue", "replay"]
DeadLetterOutcome = Literal["replayed", "failed_again", "resolved"]


async def record_dead_letter(
    database: Database,
    *,
    thread_id: str,
    tenant: str,
    action: DeadLetterAction,
    step: str | None,
    error: BaseException,
    attempts: int,
    payload: dict[str, Any],
) -> int:
    """Store one dead letter and return its id."""
    stored = redact(payload)
    changed = sorted(key for key in payload if stored[key] != payload[key])
    if changed:
        stored["redacted"] = changed
    async with database.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO dead_letters (thread_id, tenant, action, step, error_class, message,"
            " attempts, payload) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) RETURNING dead_letter_id",
            (
                thread_id,
                tenant,
                action,
                step,
                f"{type(error).__module__}.{type(error).__qualname__}",
                redact_text(str(error))[:4000],
                attempts,
                Jsonb(stored),
            ),
        )
        row = await cur.fetchone()
    assert row is not None
    dead_letter_id: int = row["dead_letter_id"]
    return dead_letter_id


async def list_dead_letters(
    database: Database, *, status: str | None = "open", limit: int = 100
) -> list[dict[str, Any]]:
    """Newest first; ``status=None`` lists every status."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT dead_letter_id, thread_id, tenant, action, step, error_class, message,"
            " attempts, status, created_at, replayed_at, replay_note FROM dead_letters"
            " WHERE (%s::text IS NULL OR status = %s) ORDER BY dead_letter_id DESC LIMIT %s",
            (status, status, limit),
        )
        return list(await cur.fetchall())


async def get_dead_letter(database: Database, dead_letter_id: int) -> dict[str, Any] | None:
    """One dead letter with its payload, or None."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT * FROM dead_letters WHERE dead_letter_id = %s", (dead_letter_id,)
        )
        return await cur.fetchone()


async def mark_dead_letter(
    database: Database,
    dead_letter_id: int,
    *,
    status: DeadLetterOutcome,
    note: str,
) -> None:
    """Record the outcome of a replay."""
    async with database.connection() as conn:
        await _mark(conn, dead_letter_id, status=status, note=note)


async def _mark(
    conn: psycopg.AsyncConnection[dict[str, Any]],
    dead_letter_id: int,
    *,
    status: DeadLetterOutcome,
    note: str,
) -> None:
    await conn.execute(
        "UPDATE dead_letters SET status = %s, replayed_at = now(), replay_note = %s"
        " WHERE dead_letter_id = %s",
        (status, redact_text(note)[:4000], dead_letter_id),
    )


@dataclass
class Claim:
    """A dead letter held for one replay; `finish` records the outcome under the same lock."""

    row: dict[str, Any]
    _conn: psycopg.AsyncConnection[dict[str, Any]]
    outcome: DeadLetterOutcome | None = None

    async def finish(self, status: DeadLetterOutcome, note: str) -> None:
        """Record how the replay ended (committed when the claim is released)."""
        await _mark(self._conn, self.row["dead_letter_id"], status=status, note=note)
        self.outcome = status

    async def link_replay_failure(self, newer_id: int) -> None:
        """Mark the dead letter the failed replay left as a replay of this one.

        The agent records it with action ``replay`` already; ``replay_of`` links the two.
        """
        await self._conn.execute(
            "UPDATE dead_letters SET action = 'replay', payload = payload ||"
            " jsonb_build_object('action', 'replay', 'replay_of', %s::bigint)"
            " WHERE dead_letter_id = %s",
            (self.row["dead_letter_id"], newer_id),
        )


@asynccontextmanager
async def claim_dead_letter(
    database: Database, dead_letter_id: int, *, force: bool = False
) -> AsyncIterator[Claim]:
    """Lock one dead letter for a replay; refuse an unknown id, a replayed one, a busy one.

    The row stays locked (one transaction on one connection) until the block exits, so two
    replays of the same dead letter cannot both run; the outcome recorded with
    `Claim.finish` commits with the release. A crash mid-replay rolls back: the row stays
    open, to replay again.
    """
    async with database.connection() as conn, conn.transaction():
        try:
            cur = await conn.execute(
                "SELECT * FROM dead_letters WHERE dead_letter_id = %s FOR UPDATE NOWAIT",
                (dead_letter_id,),
            )
        except psycopg.errors.LockNotAvailable as exc:
            raise BadInput(
                f"Dead letter {dead_letter_id} is being replayed by another process; "
                f"wait for it, then `payables deadletters show {dead_letter_id}`."
            ) from exc
        row = await cur.fetchone()
        if row is None:
            raise NotFound(
                f"No dead letter {dead_letter_id}; `payables deadletters list --all` lists them."
            )
        if row["status"] != "open" and not force:
            handled = row["replayed_at"].astimezone(UTC)
            raise BadInput(
                f"Dead letter {dead_letter_id} was already handled ({row['status']} at "
                f"{handled:%Y-%m-%d %H:%M:%S} UTC: {row['replay_note']}). "
                "Pass --force to replay it again."
            )
        yield Claim(row=row, _conn=conn)
