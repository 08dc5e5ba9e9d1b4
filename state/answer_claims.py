"""One answer at a time per approval request, for resumes sent through the LangGraph server.

The server queues a reviewer's resume behind the runs already on its thread. Two reviewers
answering one request at once were both accepted, and the second answer, when its turn
came, found the run finished (and changed nothing, silently: its reviewer was never told) or
a changed request (and was refused only then). Now the server's auth handler claims the
request for the first answer it accepts (`claim_answer`, in the transaction that checks the
resume), and refuses the second at once, naming whose answer is being applied. The approval
node releases the claim with the answer it made, recorded or refused
(`release_answer_claim`). A run that ends without the node taking its answer (cancelled, or
sent for an interrupt no longer pending, which LangGraph drops without a word) releases its
reviewer's claims on the thread as it ends (`release_claims_of`, from the served graph); a
claim whose process died first stops counting after `ANSWER_CLAIM_TTL`.

The CLI's `payables resume` runs the graph in its own process and claims nothing: it holds
the thread's lock while it runs, and its answer releases a server claim like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

ANSWER_CLAIM_TTL = timedelta(minutes=2)
"""How long an accepted answer holds its request if its process dies before its run ends.
A resume's run waits for a free worker and behind the runs on its thread, and those are
few: other reviewers' answers to the request are refused while it is claimed, and a clerk
cannot start another run on a thread that holds a request."""


@dataclass(frozen=True)
class AnswerClaim:
    """Another reviewer's answer, accepted and not yet applied."""

    reviewer: str
    claimed_at: datetime

    @property
    def expires_at(self) -> datetime:
        """When the claim stops counting if its run has not reached the approval node."""
        return self.claimed_at + ANSWER_CLAIM_TTL


async def claim_answer(
    conn: psycopg.AsyncConnection[Any],
    *,
    tenant: str,
    request_key: str,
    thread_id: str,
    reviewer: str,
) -> AnswerClaim | None:
    """Claim ``request_key`` for ``reviewer``'s answer; another reviewer's live claim if held.

    None means claimed. A reviewer's own claim is renewed (an answer sent twice queues twice,
    as before). Call it inside the transaction whose checks accept the answer, so a refusal
    after it rolls the claim back. The conflicting row stays locked to the end of that transaction
    (ON CONFLICT DO UPDATE locks it even when its WHERE is false), so the claim read here is
    the one that refused this answer.
    """
    params = {
        "tenant": tenant,
        "key": request_key,
        "thread": thread_id,
        "reviewer": reviewer,
        "ttl": ANSWER_CLAIM_TTL,
    }
    cur = await conn.execute(
        "INSERT INTO answer_claims (tenant, request_key, thread_id, reviewer)"
        " VALUES (%(tenant)s, %(key)s, %(thread)s, %(reviewer)s)"
        " ON CONFLICT (tenant, request_key) DO UPDATE"
        " SET reviewer = EXCLUDED.reviewer, thread_id = EXCLUDED.thread_id, claimed_at = now()"
        " WHERE answer_claims.reviewer = EXCLUDED.reviewer"
        " OR answer_claims.claimed_at <= now() - %(ttl)s"
        " RETURNING reviewer",
        params,
    )
    if await cur.fetchone() is not None:
        return None
    held = await conn.cursor(row_factory=dict_row).execute(
        "SELECT reviewer, claimed_at FROM answer_claims"
        " WHERE tenant = %(tenant)s AND request_key = %(key)s",
        params,
    )
    row = await held.fetchone()
    assert row is not None, "a claim that refused an answer is locked until this commits"
    return AnswerClaim(reviewer=row["reviewer"], claimed_at=row["claimed_at"])


async def release_answer_claim(
    conn: psycopg.AsyncConnection[Any], *, tenant: str, request_key: str
) -> None:
    """Release ``request_key`` for other answers: the approval node has made this one."""
    await conn.execute(
        "DELETE FROM answer_claims WHERE tenant = %s AND request_key = %s",
        (tenant, request_key),
    )


async def release_claims_of(
    conn: psycopg.AsyncConnection[Any], *, thread_id: str, reviewer: str
) -> None:
    """Release what ``reviewer``'s answers claim on ``thread_id``: their run has ended.

    What the approval node took is already released; this frees a request whose answer the
    run never delivered to it. A second answer of the same reviewer still queued loses its
    claim too and is bound to its request like any other (`server.auth.bind_resume`).
    """
    await conn.execute(
        "DELETE FROM answer_claims WHERE thread_id = %s AND reviewer = %s",
        (thread_id, reviewer),
    )
