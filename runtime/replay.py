"""Replaying a dead letter (`payables deadletters replay ID`).

What a replay does depends on where the thread is now, not only on what failed:

- its latest checkpoint has a next step: `Agent.continue_run` re-runs the failed step from
  that checkpoint; the gate's idempotency keys turn side effects that had already
  committed into replays, so a payment is never made twice;
- it has no checkpoint at all (the start failed before the first one was written):
  `Agent.start` runs the stored input again on the same thread id;
- the approval step failed after the reviewer's answer committed (the checkpoint still
  shows the interrupt, the run index says running): as with a next step, `continue_run`
  finishes the run from the recorded decisions, as `payables continue` would;
- it waits for an approval (a resume failed before the graph took the reviewer's
  decision): nothing is replayed. The stored decision is not re-sent: an approval must
  come from a reviewer, not from whoever runs the replay, and the stored copy is redacted
  (an edited bank account in it is masked). The dead letter is resolved with a note that
  points to `payables resume`;
- it finished by other means (say `payables continue`): nothing is left; resolved.

The run's tenant and policy (thresholds, the currency they are stated in and the FX rates
that convert into it, match tolerances) come from the dead letter (what the run was
started under); how to run it (models, timeouts, retries, budgets) comes from the current
environment, so an operator can fix what made it fail before replaying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.agent import Agent, RunFailed, RunStopped
from runtime.context import POLICY_FIELDS, Context
from runtime.errors import BadInput, PayablesError
from state.deadletters import DeadLetterOutcome, claim_dead_letter
from state.graph_state import Attachment, pending_steps
from state.retention import pruned_run

REPLAYED_CONTEXT_FIELDS = POLICY_FIELDS
"""Context fields a replay keeps from the failed run (the tenant always comes along): the
approval policy, whose thresholds mean other amounts without their currency and rates."""


class ReplayFailed(PayablesError):
    """The replayed run failed again (CLI exit code 1); a new dead letter may hold why."""


@dataclass
class ReplayResult:
    """How a replay ended."""

    dead_letter_id: int
    thread_id: str
    outcome: DeadLetterOutcome
    how: str
    """``continue``, ``start`` or ``nothing``."""
    note: str
    view: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The result as `payables deadletters replay --json` prints it."""
        return {
            "dead_letter_id": self.dead_letter_id,
            "thread_id": self.thread_id,
            "outcome": self.outcome,
            "how": self.how,
            "note": self.note,
            "view": self.view,
        }


def replay_context(dead_letter: dict[str, Any]) -> Context:
    """The context to replay ``dead_letter`` with: its tenant and thresholds, else now's."""
    stored = dead_letter["payload"].get("context") or {}
    kept = {name: stored[name] for name in REPLAYED_CONTEXT_FIELDS if name in stored}
    try:
        return Context(tenant=dead_letter["tenant"], **kept)
    except BadInput as exc:
        raise BadInput(
            f"Dead letter {dead_letter['dead_letter_id']} holds settings this version "
            f"refuses ({exc}); run the request again instead of replaying it."
        ) from exc


async def replay_dead_letter(
    agent: Agent, dead_letter_id: int, *, force: bool = False
) -> ReplayResult:
    """Replay one dead letter and record the outcome on it; see the module docstring.

    Raises `NotFound` for an unknown id and `BadInput` for one already handled (unless
    ``force``), one whose thread was pruned, or one that cannot be replayed safely; all
    leave the dead letter as it was. Raises `ReplayFailed` when the run fails again, after
    marking the dead letter ``failed_again``.
    """
    failure: BaseException | None = None
    async with claim_dead_letter(agent.database, dead_letter_id, force=force) as claim:
        letter = claim.row
        thread_id: str = letter["thread_id"]
        context = replay_context(letter)
        snapshot = await agent.graph.aget_state(Agent.config(thread_id))
        pruned = None if snapshot.values else await pruned_run(agent.database, thread_id)
        if pruned is not None:
            raise BadInput(
                f"Thread {thread_id} of dead letter {dead_letter_id} was pruned on "
                f"{pruned['pruned_at']:%Y-%m-%d}; nothing is left to replay. "
                "Run the request again if it is still needed."
            )
        result = ReplayResult(dead_letter_id, thread_id, "replayed", "nothing", "")
        try:
            waits = await agent.waits_for_answer(thread_id, snapshot)
            if snapshot.values and waits:
                result.outcome = "resolved"
                result.note = (
                    f"not replayed: thread {thread_id} waits for an approval; a reviewer "
                    f"answers it with `payables resume {thread_id}` (the failed decision "
                    "is not re-sent on the reviewer's behalf)"
                )
                result.view = await agent.view(thread_id)
            elif snapshot.values and pending_steps(snapshot):
                result.how = "continue"
                result.view = await agent.continue_run(thread_id, context=context, action="replay")
            elif snapshot.values:
                result.outcome = "resolved"
                status = snapshot.values.get("status") or "completed"
                result.note = f"not replayed: thread {thread_id} already finished ({status})"
                result.view = await agent.view(thread_id)
            else:
                request, user, attachments = _start_input(letter)
                result.how = "start"
                result.view = await agent.start(
                    request,
                    user=user,
                    thread_id=thread_id,
                    attachments=attachments,
                    context=context,
                    action="replay",
                )
        except (BadInput, RunStopped):
            # Refused, or stopped cleanly (SIGTERM) at a checkpoint: not a failure of the
            # run. The claim rolls back and the dead letter stays open.
            raise
        except Exception as exc:
            failure = exc
        if failure is None and result.view is not None and result.how != "nothing":
            status = result.view["status"]
            if status in ("failed", "running"):
                failure = ReplayFailed(f"the replayed run stopped again (status {status})")
            else:
                result.note = f"replayed with `{result.how}`: the run is now {status}"
        if failure is not None:
            newer = failure.dead_letter_id if isinstance(failure, RunFailed) else None
            if newer is not None:
                await claim.link_replay_failure(newer)
            result.outcome = "failed_again"
            result.note = (
                f"replay with `{result.how}` failed again: "
                f"{type(failure).__name__}: {failure}"
                + (f"; see dead letter {newer}" if newer else "")
            )
        await claim.finish(result.outcome, result.note)
    if failure is not None:
        raise ReplayFailed(f"Dead letter {dead_letter_id}: {result.note}.") from failure
    return result


def _start_input(letter: dict[str, Any]) -> tuple[str, str, list[Attachment]]:
    """The stored start input of a dead letter whose thread has no checkpoint."""
    payload = letter["payload"]
    number, thread_id = letter["dead_letter_id"], letter["thread_id"]
    stored = payload.get("input")
    if letter["action"] not in ("start", "replay") or not isinstance(stored, dict):
        raise BadInput(
            f"Thread {thread_id} of dead letter {number} has no checkpoint and the dead "
            f"letter holds no start input (action {letter['action']}); nothing can be "
            "replayed. Run the request again."
        )
    if "input" in (payload.get("redacted") or []):
        raise BadInput(
            f"Dead letter {number}'s request contained account numbers or secrets, which "
            "dead letters store masked; replaying it would run a different request. "
            "Ask the requester to run it again."
        )
    request, user = stored.get("request"), stored.get("user")
    if not isinstance(request, str) or not isinstance(user, str):
        raise BadInput(
            f"Dead letter {number}'s stored input lacks a request or user; run it again."
        )
    attachments = [
        Attachment(name=str(a["name"]), text=str(a["text"]))
        for a in stored.get("attachments") or []
    ]
    return request, user, attachments
