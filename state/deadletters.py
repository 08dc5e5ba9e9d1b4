"""Dead letters: runs that failed unexpectedly or exhausted their retries, kept to replay.

A row holds the thread, the node that failed, the error's class and message, how many
attempts were made, and a payload with what a replay needs (the action, the run's input or
resume value, the last checkpoint id, the tenant). Messages and payloads are redacted
before they are stored: a dead letter must not become a side channel for account numbers.
"""

from __future__ import annotations

from typing import Any, Literal

from psycopg.types.json import Jsonb

from guards.redaction import redact, redact_text
from state.db import Database

DeadLetterAction = Literal["start", "resume", "continue", "replay"]


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
                Jsonb(redact(payload)),
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
    status: Literal["replayed", "failed_again"],
    note: str,
) -> None:
    """Record the outcome of a replay."""
    async with database.connection() as conn:
        await conn.execute(
            "UPDATE dead_letters SET status = %s, replayed_at = now(), replay_note = %s"
            " WHERE dead_letter_id = %s",
            (status, redact_text(note)[:4000], dead_letter_id),
        )
