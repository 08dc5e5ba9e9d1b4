"""Recording reviewer decisions directly, for tests of what the gate does with them."""

from __future__ import annotations

from typing import Any

import psycopg

from tools.contract import args_hash


async def grant(
    conn: psycopg.AsyncConnection[Any],
    *,
    step_id: str,
    tool: str,
    args: dict[str, Any],
    reviewer: str,
    role: str,
    thread_id: str = "t",
) -> None:
    """Record ``reviewer``'s approval of exactly ``tool(args)`` at ``step_id``."""
    await conn.execute(
        "INSERT INTO approval_decisions (thread_id, step_id, tool, args_hash, reviewer_id,"
        " reviewer_role, decision) VALUES (%s, %s, %s, %s, %s, %s, 'approve')",
        (thread_id, step_id, tool, args_hash(tool, args), reviewer, role),
    )
