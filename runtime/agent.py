"""Running the graph from a process.

Open the database, compile with the Postgres checkpointer, drive runs, and turn a
thread's checkpoint into the view the CLI and tests print.

Every run that drives a thread (start, resume, continue) first takes the thread's lock: a
session-level Postgres advisory lock on a connection of its own, held until the run
returns and released by Postgres if the process dies. A second process gets a clear
refusal instead of a second writer on the same checkpoint. Runs of the LangGraph server take
the same lock (`graphs.payables.served_graph`), so a CLI run, resume or continue on a thread
a server run is executing is refused the same way.

Durability is chosen per leg of a run. A new request runs with ``durability="async"``:
each step's checkpoint is written while the next step runs (in order), and the run
returns only once every checkpoint is on disk. That leg cannot move money: an
irreversible or destructive call needs an approval, and approvals only arrive with a
resume. Resuming and continuing run with ``"sync"``: each checkpoint is on disk before
the next step starts, around the payments and bank changes an approval lets through.
Either way a crash loses no side effect and repeats none: the gate commits each one with
its ledger row in one transaction, and a step re-run from an older checkpoint replays it
by its idempotency key; async only means a crash may re-run a few more steps.

A stop request (`SHUTDOWN`, which the CLI sets on SIGTERM) lets the step in flight finish
and checkpoint, then ends the run with `RunStopped`; `payables continue` picks it up.
A run that fails unexpectedly is recorded as a dead letter (`state.deadletters`) and
ends with `RunFailed`, which names it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphDrained
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import RunControl
from langgraph.types import Command, Durability, Interrupt, StateSnapshot
from langsmith import Client

from graphs.payables import TRANSIENT_DB_RETRY, build_graph, is_transient_db_error
from guards.input_checks import unstorable_reason
from guards.redaction import redact, redact_text
from nodes.approval import answering_reviewer, decision_rows, validated_edits
from nodes.deps import NodeDeps
from runtime.context import Context
from runtime.errors import BadInput, NotFound, PayablesError, ResumeError, shown
from runtime.models import ModelProvider, OpenAIModelProvider
from runtime.tracing import traced
from state.approvals import ANSWERED_BY, ApprovalRequest, ResumeIn, parse_resume
from state.audit import record_refused_answer
from state.checkpointer import ThreadLockedSaver
from state.db import (
    Database,
    ThreadLock,
    ThreadLockLost,
    default_database,
    migrate,
    thread_lock_held,
)
from state.deadletters import DeadLetterAction, record_dead_letter
from state.graph_state import Attachment, pending_steps
from state.retention import pruned_run
from state.routes import FINISHED_STATUSES
from state.runs import list_runs, reused_after_seed, reused_thread, used_before_seed
from tools.gate import ToolGate

log = logging.getLogger(__name__)


def _answer_committed(run: dict[str, Any] | None) -> bool:
    """Whether an answer to the thread's pending interrupt committed before its checkpoint.

    The approval node's answer transaction sets the run index to ``running`` with its
    decisions; only the next approval round sets ``interrupted`` again, before it pauses.
    So a checkpoint that still shows an interrupt while the index says ``running`` is an
    answer whose step died before it was checkpointed: the approval node, run again, goes
    on from the recorded decisions and ignores any resume value.
    """
    return run is not None and run["status"] == "running"


def _answers(rows: Sequence[dict[str, Any]]) -> str:
    """Recorded decisions as ``reviewer: decision; ...`` (``unknown`` when none is found)."""
    return "; ".join(f"{r['reviewer_id']}: {r['decision']}" for r in rows) or "unknown"


def _context_of(run: dict[str, Any] | None) -> Context:
    """The context to go on with a thread in: its own tenant, from its run index row.

    Its audit rows, costs and daily cap belong to the tenant it was started in, whoever
    answers it and whatever ``PAYABLES_TENANT`` says here; the other settings are this
    process's.
    """
    return Context(tenant=run["tenant"]) if run is not None else Context()


START_DURABILITY: Durability = "async"
"""Checkpoints of a new request's leg: written behind the next step (no money moves yet)."""
AFTER_APPROVAL_DURABILITY: Durability = "sync"
"""Checkpoints of resumed and continued legs, where approved irreversible actions run."""

VIEW_KEYS = (
    "route",
    "status",
    "request",
    "user",
    "plan",
    "model_path",
    "reason",
    "summary",
    "result",
    "flags",
)
"""The state channels `Agent.view` shows; a leg returns them (`Agent._drive`)."""

_INTERRUPTED = "__interrupt__"
"""The key of a leg's output that lists its interrupts (LangGraph's ``ainvoke``, v1)."""

_TASK_NOTE = re.compile(r"During task with name '([^']+)'")


class RunStopped(PayablesError):
    """The run stopped at a step boundary because the process was asked to stop.

    Nothing is lost: the last finished step is checkpointed and ``payables continue``
    resumes the thread from there. A stop requested before the run began (``started``
    false) ran nothing at all.
    """

    def __init__(
        self, thread_id: str, reason: str, next_steps: list[str], *, started: bool = True
    ) -> None:
        """Name the thread, why it stopped, and the steps that will run next."""
        self.thread_id = thread_id
        self.reason = reason
        self.next_steps = next_steps
        self.started = started
        if started:
            where = f" before {', '.join(next_steps)}" if next_steps else ""
            message = (
                f"Stopped on {reason}{where}; thread {thread_id} is checkpointed. "
                f"Finish it with `payables continue {thread_id}`."
            )
        else:
            message = (
                f"Stopped on {reason} before the run on thread {thread_id} began; nothing "
                "was changed. Run the command again."
            )
        super().__init__(message)


class RunFailed(PayablesError):
    """A run failed unexpectedly; it is recorded as a dead letter when the database allows."""

    def __init__(self, message: str, *, thread_id: str, dead_letter_id: int | None) -> None:
        """Keep the thread and the dead letter's id (None if it could not be stored)."""
        self.thread_id = thread_id
        self.dead_letter_id = dead_letter_id
        super().__init__(message)


class Shutdown:
    """A process-wide stop request: runs in flight stop at their next step boundary.

    Each run gets its own LangGraph `RunControl`; a request drains every run in flight, and
    a run that starts after the request does not start at all.
    """

    def __init__(self) -> None:
        """Nothing requested yet."""
        self.reason: str | None = None
        self._controls: set[RunControl] = set()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self.reason is not None

    def request(self, reason: str) -> None:
        """Ask every run in flight to stop after its current step (signal-handler safe)."""
        self.reason = self.reason or reason
        for control in self._controls:
            control.request_drain(self.reason)

    def clear(self) -> None:
        """Forget a request (for processes that serve many runs, and for tests)."""
        self.reason = None

    @contextmanager
    def control(self) -> Iterator[RunControl]:
        """A `RunControl` for one run, drained when a stop is requested."""
        control = RunControl()
        if self.reason is not None:
            control.request_drain(self.reason)
        self._controls.add(control)
        try:
            yield control
        finally:
            self._controls.discard(control)


SHUTDOWN = Shutdown()
"""The stop request of this process; the CLI sets it on SIGTERM."""


def context_payload(context: Context) -> dict[str, Any]:
    """``context`` as plain JSON (tuples become lists), as a dead letter stores it."""
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(context), default=str))
    return data


def failed_node(error: BaseException) -> str | None:
    """The graph node ``error`` escaped from, from the note LangGraph adds to it."""
    for note in getattr(error, "__notes__", ()):
        found = _TASK_NOTE.search(note)
        if found:
            return found.group(1)
    return None


MAX_ID_LENGTH = 200


ID_LISTS = {
    "thread id": "`payables threads` lists thread ids",
    "interrupt id": "`payables approvals` lists interrupt ids",
}
"""Where a user finds the ids `checked_id` checks, by what they name."""


def checked_id(value: str, what: str, error: type[BadInput] = BadInput) -> str:
    """``value`` if it can name a thread or interrupt; otherwise `BadInput` saying why.

    Ids reach Postgres, logs and terminals: NUL and bytes that are not UTF-8 cannot be
    stored, and control or bidi characters would garble what a reviewer reads.
    """
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise error(
            f"'{shown(value)}' is not a valid {what}: use 1 to {MAX_ID_LENGTH} printable "
            f"characters ({ID_LISTS.get(what, 'see `payables threads`')})."
        )
    reason = unstorable_reason(value, what)
    if reason is not None:
        raise error(reason)
    return value


def check_run_input(request: str, user: str, attachments: list[Attachment]) -> None:
    """Refuse, before anything is written, text the checkpoint could not store."""
    texts = [(request, "request"), (user, "user id")]
    texts += [(a["name"], "attachment name") for a in attachments]
    texts += [(a["text"], f"attachment '{shown(a['name'])}'") for a in attachments]
    for text, what in texts:
        reason = unstorable_reason(text, what)
        if reason is not None:
            raise BadInput(reason)


@dataclass
class Agent:
    """A compiled graph bound to a Postgres checkpointer and the app database."""

    graph: CompiledStateGraph[Any, Any, Any, Any]
    database: Database
    gate: ToolGate
    tracing_client: Client | None = None
    """LangSmith client for this agent's runs (default: a redacting one when tracing is on)."""
    shutdown: Shutdown = dataclasses.field(default_factory=lambda: SHUTDOWN)
    """Where stop requests come from (the process-wide one unless a test gives its own)."""
    _holding: set[str] = dataclasses.field(default_factory=set, repr=False)
    """Threads whose lock this agent holds now (its own runs are not another process's)."""

    @staticmethod
    def config(thread_id: str) -> RunnableConfig:
        """The run config for a thread (refusing an id Postgres or a terminal cannot take)."""
        return {"configurable": {"thread_id": checked_id(thread_id, "thread id")}}

    @staticmethod
    def traced_config(
        thread_id: str, context: Context, *, actor: str, action: str
    ) -> RunnableConfig:
        """Run config whose name, tags and metadata join LangSmith traces to the thread."""
        return {
            "configurable": {"thread_id": thread_id},
            "run_name": f"payables:{action}",
            "tags": ["payables", action],
            "metadata": {
                "thread_id": thread_id,
                "actor": actor,
                "tenant": context.tenant,
                "prompt_version": context.prompt_version,
            },
        }

    @asynccontextmanager
    async def thread_lock(self, thread_id: str, busy: str) -> AsyncIterator[None]:
        """Hold the thread's lock for the block, or raise `ResumeError` with ``busy``.

        The lock lives on a connection of its own (`Database.lock_connection`, never one
        the run's steps borrow), which releases it when the block ends; the process dying
        closes the connection, and that releases it too. The graph's steps check it
        (`state.db.ThreadLock.check`): a run whose lock died stops with `ThreadLockLost`.
        """
        lock = ThreadLock(self.database, thread_id)
        try:
            taken = await lock.take()
        except psycopg.OperationalError as exc:
            raise RunFailed(
                f"Cannot reach Postgres to lock thread {thread_id}: {exc}. Nothing was "
                "run; try again when the database is back.",
                thread_id=thread_id,
                dead_letter_id=None,
            ) from exc
        if not taken:
            raise ResumeError(busy)
        # Unlocked as the block ends, before the connection goes back to the pool, so a
        # back-to-back run of this thread on another connection finds it free.
        self._holding.add(thread_id)
        try:
            async with lock.held():
                yield
        finally:
            self._holding.discard(thread_id)

    async def _run_elsewhere(self, thread_id: str) -> bool:
        """Whether another run (another process, a server run) is executing the thread now."""
        if thread_id in self._holding:
            return False
        async with self.database.connection() as conn:
            return await thread_lock_held(conn, thread_id)

    async def _drive(
        self,
        thread_id: str,
        graph_input: Any,
        *,
        context: Context,
        actor: str,
        action: DeadLetterAction,
        replay_input: Any,
        durability: Durability,
    ) -> dict[str, Any] | None:
        """Run the graph on ``thread_id`` until it ends, pauses, stops or fails.

        Returns the state's `VIEW_KEYS` as the leg left them, with ``__interrupt__`` when
        it paused (None when the leg emitted no state). A stop request ends it with
        `RunStopped` after the step in flight has checkpointed; an unexpected failure is
        recorded as a dead letter and ends it with `RunFailed`. ``durability`` is the
        leg's (see the module docs).
        """
        if self.shutdown.requested:
            raise RunStopped(thread_id, self.shutdown.reason or "shutdown", [], started=False)
        config = self.traced_config(thread_id, context, actor=actor, action=action)
        with self.shutdown.control() as control, traced(self.tracing_client):
            try:
                output: dict[str, Any] | None = await self.graph.ainvoke(
                    graph_input,
                    config,
                    context=context,
                    durability=durability,
                    control=control,
                    output_keys=VIEW_KEYS,
                )
                return output
            except GraphDrained as drained:
                snapshot = await self.graph.aget_state(self.config(thread_id))
                raise RunStopped(thread_id, drained.reason, list(pending_steps(snapshot))) from None
            except (BadInput, ThreadLockLost):
                raise  # a lost lock: another process may be running the thread now
            except Exception as exc:
                raise await self._dead_letter(
                    thread_id, exc, context=context, action=action, replay_input=replay_input
                ) from exc

    async def _dead_letter(
        self,
        thread_id: str,
        error: Exception,
        *,
        context: Context,
        action: DeadLetterAction,
        replay_input: Any,
    ) -> RunFailed:
        """Record ``error`` as a dead letter and return the error that names it."""
        node = failed_node(error)
        step = node
        checkpoint_id: str | None = None
        next_steps: list[str] = []
        saved: bool | None = None  # whether the thread has a checkpoint; None: unknown
        unanswered = False  # a resume failed before the reviewer's answer was recorded
        try:
            snapshot = await self.graph.aget_state(self.config(thread_id))
            saved = bool(snapshot.values)
            if action == "resume":
                unanswered = await self.waits_for_answer(thread_id, snapshot)
            checkpoint_id = snapshot.config.get("configurable", {}).get("checkpoint_id")
            next_steps = list(pending_steps(snapshot))
            if step is None:
                failed = [t.name for t in snapshot.tasks if t.error] or next_steps
                step = failed[0] if failed else None
        except Exception as exc:  # the database may be what failed; the row still helps
            log.warning("could not read thread %s after its failure: %s", thread_id, exc)
        # A transient database error that escaped a node has used up the node's retries.
        attempts = (
            TRANSIENT_DB_RETRY.max_attempts
            if node is not None and is_transient_db_error(error)
            else 1
        )
        summary = (
            f"Run {thread_id} failed in {step or 'the graph'} after {attempts} attempt(s): "
            f"{type(error).__name__}: {redact_text(str(error))[:500]}."
        )
        payload = {
            "action": action,
            "input": replay_input,
            "checkpoint_id": checkpoint_id,
            "next": next_steps,
            "context": context_payload(context),
        }
        try:
            dead_letter_id = await record_dead_letter(
                self.database,
                thread_id=thread_id,
                tenant=context.tenant,
                action=action,
                step=step,
                error=error,
                attempts=attempts,
                payload=payload,
            )
        except Exception as exc:
            log.error("could not record the dead letter of thread %s: %s", thread_id, exc)
            if saved is False:
                then = "Nothing of the run was saved; run the request again."
            else:
                then = (
                    f"`payables show {thread_id}` says where it stopped; `payables continue "
                    f"{thread_id}` finishes it once the cause is fixed."
                )
            return RunFailed(
                f"{summary} It could not be recorded as a dead letter ({type(exc).__name__}: "
                f"{exc}). {then}",
                thread_id=thread_id,
                dead_letter_id=None,
            )
        if unanswered:
            # A replay never answers for a reviewer (`runtime.replay`): the answer is theirs.
            then = (
                "Your answer was not recorded: the approval is still pending. Once the cause "
                f"is fixed, answer it again with `payables resume {thread_id}`."
            )
        else:
            then = (
                f"The thread stays at its last checkpoint. Once the cause is fixed, "
                f"`payables deadletters replay {dead_letter_id}` finishes it."
            )
        return RunFailed(
            f"{summary} Recorded as dead letter {dead_letter_id}. {then}",
            thread_id=thread_id,
            dead_letter_id=dead_letter_id,
        )

    async def start(
        self,
        request: str,
        *,
        user: str,
        thread_id: str | None = None,
        attachments: list[Attachment] | None = None,
        context: Context | None = None,
        action: Literal["start", "replay"] = "start",
    ) -> dict[str, Any]:
        """Run a new request to completion or to its first interrupt; return the view.

        ``action`` names the run in traces and in a dead letter if it fails (``replay``
        when a dead letter's replay starts it again).
        """
        chosen = thread_id is not None  # a fresh uuid4 cannot name an existing thread
        thread_id = checked_id(thread_id or str(uuid.uuid4()), "thread id")
        check_run_input(request, user, attachments or [])
        busy = f"Thread {thread_id} is being started by another process right now."
        async with self.thread_lock(thread_id, busy):
            if chosen and (await self.graph.aget_state(self.config(thread_id))).values:
                raise BadInput(
                    f"Thread {thread_id} already exists; start a new request without "
                    "--thread, or answer its approval with `payables resume`."
                )
            pruned = await pruned_run(self.database, thread_id) if chosen else None
            if pruned is not None:
                # Refused before the graph writes the input into a checkpoint of the id.
                raise reused_thread(thread_id, pruned["pruned_at"])
            if chosen and await used_before_seed(self.database, thread_id):
                raise reused_after_seed(thread_id)
            context = context or Context()
            run_input: dict[str, Any] = {"request": request, "user": user}
            if attachments:  # an empty list would still be a checkpoint blob
                run_input["attachments"] = attachments
            output = await self._drive(
                thread_id,
                run_input,
                context=context,
                actor=user,
                action=action,
                replay_input=run_input,
                durability=START_DURABILITY,
            )
            return await self.view_after(thread_id, output)

    async def pending(self, thread_id: str) -> list[tuple[str, ApprovalRequest]]:
        """The thread's pending approval interrupts as ``(interrupt_id, request)``."""
        snapshot = await self.graph.aget_state(self.config(thread_id))
        return [(i.id, i.value) for i in snapshot.interrupts]

    async def resume(
        self,
        thread_id: str,
        value: dict[str, Any],
        *,
        interrupt_id: str | None = None,
        context: Context | None = None,
    ) -> dict[str, Any]:
        """Answer the thread's pending approval with ``value``; refuse anything else.

        Only one process resolves an interrupt: a rival that arrives while it runs is told
        the thread is being run, one that arrives after is told it was resolved.
        """
        checked_id(thread_id, "thread id")
        if interrupt_id is not None:
            checked_id(interrupt_id, "interrupt id", ResumeError)
        busy = (
            f"Thread {thread_id} is being run by another process right now (another "
            "reviewer's answer, a `payables continue`, or a server run); nothing was recorded. "
            f"`payables show {thread_id}` prints the outcome once it finishes."
        )
        async with self.thread_lock(thread_id, busy):
            # Read under the lock: a rival may have resolved the interrupt meanwhile.
            snapshot = await self.graph.aget_state(self.config(thread_id))
            if not snapshot.values:
                raise await self._no_checkpoint(thread_id)
            interrupts = list(snapshot.interrupts)
            if not interrupts and pending_steps(snapshot):
                raise ResumeError(
                    f"Thread {thread_id} has no pending approval: it was answered, and the "
                    f"run stopped before it finished. `payables continue {thread_id}` "
                    "finishes it."
                )
            if not interrupts:
                status = snapshot.values.get("status") or "completed"
                raise ResumeError(
                    f"Thread {thread_id} has no pending approval (status: {status}); "
                    "it was already resolved. `payables show` prints its result."
                )
            if interrupt_id is not None:
                interrupts = [i for i in interrupts if i.id == interrupt_id]
                if not interrupts:
                    raise ResumeError(
                        f"Interrupt {interrupt_id} is not pending on {thread_id}; "
                        "it was already resolved or never existed."
                    )
            target = interrupts[0]
            run = await self._run_index_row(thread_id)
            try:
                resume = parse_resume(value, target.value)
                answered = await self._answered_before(thread_id, run, target.value, resume)
                if answered is not None:
                    raise ResumeError(
                        f"Thread {thread_id}'s approval was already answered ({answered}) "
                        "before this answer arrived, and the run stopped before it went on; "
                        f"this answer was not recorded. `payables continue {thread_id}` "
                        "finishes the run (it asks again if an approval is still missing)."
                    )
                # Refuse here what the approval node would refuse, so the caller gets an
                # error (exit 2) instead of a run that pauses again with an error in its
                # payload.
                validated_edits(self.gate, snapshot.values.get("route") or "", target.value, resume)
            except ResumeError as exc:
                # As the approval step and the server do: the attempt stays on record.
                async with self.database.connection() as conn:
                    await record_refused_answer(
                        conn, thread_id, reviewer=answering_reviewer(value), reason=str(exc)
                    )
                raise
            context = context or _context_of(run)
            # Judged as the reviewer its body names whenever the node reads it, also in a
            # later run of someone else (`state.approvals.ANSWERED_BY`).
            value = {**value, ANSWERED_BY: None}
            output = await self._drive(
                thread_id,
                Command(resume={target.id: value}),
                context=context,
                actor=resume.reviewer.id,
                action="resume",
                replay_input={"interrupt_id": target.id, "value": value},
                durability=AFTER_APPROVAL_DURABILITY,
            )
            return await self.view_after(thread_id, output)

    async def continue_run(
        self,
        thread_id: str,
        *,
        context: Context | None = None,
        action: Literal["continue", "replay"] = "continue",
    ) -> dict[str, Any]:
        """Finish a run that stopped between checkpoints (a crash, a kill, a lost database).

        The graph re-runs the interrupted step from its last checkpoint; the gate's
        idempotency keys turn any side effect that had already committed into a replay.
        ``action`` names the run in traces and in a dead letter if it fails again.
        """
        checked_id(thread_id, "thread id")
        busy = f"Thread {thread_id} is being run by another process right now."
        async with self.thread_lock(thread_id, busy):
            snapshot = await self.graph.aget_state(self.config(thread_id))
            if not snapshot.values:
                raise await self._no_checkpoint(thread_id)
            run = await self._run_index_row(thread_id)
            if snapshot.interrupts and not _answer_committed(run):
                raise ResumeError(
                    f"Thread {thread_id} is waiting for approval; use `payables resume`."
                )
            if not pending_steps(snapshot):
                status = snapshot.values.get("status", "completed")
                raise ResumeError(f"Thread {thread_id} already finished (status: {status}).")
            context = context or _context_of(run)
            output = await self._drive(
                thread_id,
                None,
                context=context,
                actor="recovery",
                action=action,
                replay_input=None,
                durability=AFTER_APPROVAL_DURABILITY,
            )
            return await self.view_after(thread_id, output)

    async def _run_index_row(self, thread_id: str) -> dict[str, Any] | None:
        """The thread's run index row, or None if it has none.

        Its status and tenant, and ``open_dead_letter``: the first of the thread's dead
        letters still open (None when none is).
        """
        async with self.database.connection() as conn:
            cur = await conn.execute(
                "SELECT status, tenant, (SELECT min(d.dead_letter_id) FROM dead_letters AS d"
                "   WHERE d.thread_id = runs.thread_id AND d.status = 'open')"
                " AS open_dead_letter FROM runs WHERE thread_id = %s",
                (thread_id,),
            )
            return await cur.fetchone()

    async def _answered_before(
        self,
        thread_id: str,
        run: dict[str, Any] | None,
        request: ApprovalRequest,
        resume: ResumeIn,
    ) -> str | None:
        """Who answered ``request`` already, if an answer other than ``resume`` committed.

        None when nothing committed, or when ``resume`` is that answer given again (the
        same reviewer, the same decision on every step): it changes nothing and finishes
        the run as before.
        """
        if not _answer_committed(run):
            return None
        steps = [s["step_id"] for s in request["steps"]]
        rows = await decision_rows(self.database, thread_id, steps)
        recorded = {(r["step_id"], r["reviewer_id"], r["decision"]) for r in rows}
        mine = {
            (step, resume.reviewer.id, decision.type)
            for step, decision in zip(steps, resume.decisions, strict=True)
        }
        if mine <= recorded:
            return None
        return _answers(rows)

    async def answer_committed(self, thread_id: str) -> bool:
        """Whether the answer to the thread's pending interrupt committed before its checkpoint.

        The crash window of an approval: the decisions are recorded and the run index says
        running, but the checkpoint still shows the interrupt. `continue_run` finishes such
        a run from the recorded decisions; a different answer is refused (`resume`).
        """
        return _answer_committed(await self._run_index_row(thread_id))

    async def waits_for_answer(self, thread_id: str, snapshot: StateSnapshot) -> bool:
        """Whether ``snapshot`` (the thread's latest) waits for an approval nobody answered.

        An interrupt whose answer committed before the step failed is not waiting: the
        reviewer's decisions are recorded, and `continue_run` goes on from them.
        """
        return bool(snapshot.interrupts) and not await self.answer_committed(thread_id)

    async def _recorded_answer(self, thread_id: str, interrupts: Sequence[Interrupt]) -> str:
        """The decisions recorded for the steps ``interrupts`` ask about, for messages."""
        steps = [s["step_id"] for i in interrupts for s in i.value["steps"]]
        return _answers(await decision_rows(self.database, thread_id, steps))

    async def _no_checkpoint(self, thread_id: str) -> NotFound:
        """The error for a thread with no checkpoint: unknown, or pruned."""
        pruned = await pruned_run(self.database, thread_id)
        if pruned is None:
            return NotFound(f"No thread {thread_id}; `payables threads` lists them.")
        return NotFound(
            f"Thread {thread_id} finished ({pruned['status']}) and was pruned on "
            f"{pruned['pruned_at']:%Y-%m-%d}: its checkpoints are gone, so nothing is left to "
            f"resume or continue. `payables show {thread_id}` prints what was kept."
        )

    async def view_after(self, thread_id: str, output: dict[str, Any] | None) -> dict[str, Any]:
        """`view` of a thread whose leg just returned ``output`` (see `_drive`).

        A leg that ran to the end left nothing pending, so its output is the view's whole
        source and the checkpoint need not be read back; a paused leg's view is read.
        """
        if not output or _INTERRUPTED in output:
            return await self.view(thread_id)
        return self._view_of(thread_id, output, [], status=output.get("status", "completed"))

    async def view(self, thread_id: str) -> dict[str, Any]:
        """The thread as the CLI's ``--json`` prints it.

        The checkpoint is the source of truth; the run index is read too, to explain a
        thread a crash left between a database write and its checkpoint (``note``): an
        approval answered but not yet acted on, or a final status recorded by respond
        whose result was never checkpointed. Both are finished by `continue_run`. A thread
        whose lock another process holds (a run executing it now) says so instead.
        """
        snapshot = await self.graph.aget_state(self.config(thread_id))
        if not snapshot.values:
            raise NotFound(f"No thread {thread_id}; `payables threads` lists them.")
        values = snapshot.values
        interrupts: Sequence[Interrupt] = snapshot.interrupts
        run = await self._run_index_row(thread_id)
        note = ""
        if interrupts and _answer_committed(run):
            # Not pending any more: `threads` and `approvals` say so, and so does `show`.
            answers = await self._recorded_answer(thread_id, interrupts)
            interrupts, status = (), "running"
            note = (
                f"The approval was answered ({answers}) and the process stopped before the "
                f"run went on; the answer is recorded and stands (another is refused). "
                f"`payables continue {thread_id}` finishes the run from it."
            )
        elif interrupts:
            status = "interrupted"
        elif pending_steps(snapshot):
            status = "failed" if any(t.error for t in snapshot.tasks) else "running"
            if run is not None and run["status"] in FINISHED_STATUSES:
                note = (
                    f"The run index says this run ended ({run['status']}): its final status "
                    "was recorded and the process stopped before the last checkpoint, so its "
                    f"result was not saved. `payables continue {thread_id}` finishes it and "
                    "writes the result (nothing is done twice)."
                )
            elif status == "failed":
                note = (
                    f"A step failed (`payables deadletters list` shows why). Once the cause "
                    f"is fixed, `payables continue {thread_id}` finishes the run."
                )
            else:
                note = (
                    f"The run stopped between steps: `payables continue {thread_id}` "
                    "finishes it (side effects that committed are replayed, not repeated)."
                )
        else:
            status = values.get("status", "completed")
        dead_letter = run["open_dead_letter"] if run is not None else None
        if note and dead_letter is not None:
            # As `payables threads` lists it (`state.runs.SHOWN_STATUS`).
            status = "failed"
            note = (
                f"The run failed and is dead letter {dead_letter} (`payables deadletters show "
                f"{dead_letter}` says why). {note}"
            )
        if note and await self._run_elsewhere(thread_id):
            # Every run holds its thread's lock (CLI and server alike): this one is going on.
            status = "running"
            note = (
                "A run is executing this thread now (another process holds its lock), so "
                f"none of this is final: `payables show {thread_id}` again shows where it got "
                "to."
            )
        return self._view_of(thread_id, values, interrupts, status=status, note=note)

    @staticmethod
    def _view_of(
        thread_id: str,
        values: dict[str, Any],
        interrupts: Sequence[Interrupt],
        *,
        status: str,
        note: str = "",
    ) -> dict[str, Any]:
        pending = [
            {
                "interrupt_id": i.id,
                "action": action["name"],
                "args": action["args"],
                "description": action["description"],
                "evidence": evidence,
                "requirement": step,
                "requester": i.value["requester"],
                "error": i.value.get("error"),
            }
            for i in interrupts
            for action, evidence, step in zip(
                i.value["action_requests"], i.value["evidence"], i.value["steps"], strict=True
            )
        ]
        plan = values.get("plan")
        return {
            "thread_id": thread_id,
            "status": status,
            "route": values.get("route"),
            "request": redact_text(values.get("request", "")),
            "user": values.get("user"),
            "plan": [
                {
                    "step_id": s["step_id"],
                    "tool": s["tool"],
                    "args": redact(s["args"]),
                    "why": redact_text(s["why"]),
                }
                for s in (plan["steps"] if plan else [])
            ],
            "plan_source": plan["source"] if plan else None,
            "model_path": values.get("model_path", {}),
            "pending_approvals": pending,
            "reason": values.get("reason", ""),
            "summary": values.get("summary", ""),
            "result": values.get("result"),
            "flags": values.get("flags", []),
            "note": note,
        }

    async def history(self, thread_id: str) -> list[dict[str, Any]]:
        """Every checkpoint of a thread, oldest first."""
        steps = []
        async for snap in self.graph.aget_state_history(self.config(thread_id)):
            steps.append(
                {
                    "checkpoint_id": snap.config["configurable"].get("checkpoint_id"),
                    "step": snap.metadata.get("step") if snap.metadata else None,
                    "source": snap.metadata.get("source") if snap.metadata else None,
                    "next": list(snap.next),
                    "created_at": snap.created_at,
                    "interrupts": [i.id for i in snap.interrupts],
                }
            )
        return list(reversed(steps))

    async def pending_everywhere(self) -> list[dict[str, Any]]:
        """Pending approvals across every thread that the run index says is interrupted."""
        rows = await list_runs(self.database, status="interrupted", limit=None)
        found = []
        for row in rows:
            try:
                view = await self.view(row["thread_id"])
            except NotFound:
                # Deleted through the server API (or a thread-less server run): the index
                # still says interrupted, but no approval is left to answer. One such thread
                # must not hide every other thread's approvals.
                log.warning(
                    "thread %s is interrupted in the run index but has no checkpoint (deleted "
                    "through the server API?); it has no approval to answer",
                    row["thread_id"],
                )
                continue
            for approval in view["pending_approvals"]:
                found.append(
                    {
                        "thread_id": row["thread_id"],
                        "request": row["request"],
                        "route": view["route"],
                        **approval,
                    }
                )
        return found


@asynccontextmanager
async def open_agent(
    models: ModelProvider | None = None,
    database: Database | None = None,
    tracing_client: Client | None = None,
) -> AsyncIterator[Agent]:
    """Migrate (once per process), open the pool, and yield an `Agent`."""
    database = database or default_database()
    await migrate(database.uri)
    gate = ToolGate(database)
    saver = ThreadLockedSaver(await database.pool())
    graph = build_graph(
        NodeDeps(gate=gate, models=models or OpenAIModelProvider()), checkpointer=saver
    )
    try:
        yield Agent(graph=graph, database=database, gate=gate, tracing_client=tracing_client)
    finally:
        await database.close()
