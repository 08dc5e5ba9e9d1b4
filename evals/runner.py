"""Run scenarios through the real graph on real Postgres, each in a database of its own.

A template database is migrated once per server and schema version; each scenario gets a
copy (``CREATE DATABASE ... TEMPLATE``), its world is loaded, the clerk's request runs,
the scripted reviewers answer each approval interrupt through `Agent.resume` (the same
path as `payables resume`), and the final database is read for the scenario's
assertions. The copy is dropped afterwards unless asked to keep it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from langsmith.run_helpers import tracing_context
from psycopg import sql

from evals.redteam.invariants import Before, effects, invariants, snapshot
from evals.scenario import ModelMode, Scenario, ScriptedDecision, resolve_world
from runtime.agent import Agent, open_agent
from runtime.context import RULES_MODEL, Context
from runtime.errors import BadInput, ConfigError, PayablesError
from runtime.models import ModelProvider, OpenAIModelProvider
from state.db import CONNECTION_KWARGS, Database, load_migrations, migrate
from state.graph_state import Attachment
from state.world import load_world

MAX_INTERRUPTS = 8
"""A scenario that pauses more often than this is stopped (it would never end)."""


@dataclass
class ScenarioRun:
    """What happened when one scenario ran: the raw material for scoring."""

    scenario: Scenario
    mode: ModelMode
    thread_id: str
    status: str = "not_run"
    route: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    reason: str = ""
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    """The gated tool calls, in order (tool, args, ok, result, error)."""
    interrupts: list[list[str]] = field(default_factory=list)
    """The tools each approval interrupt asked about, in order."""
    decision_errors: list[str] = field(default_factory=list)
    """Scripted decisions that did not fit the interrupt they met."""
    refusals: list[str] = field(default_factory=list)
    """Decisions the agent refused (expected or not), with its reason."""
    usage: dict[str, Any] = field(default_factory=dict)
    flags: list[dict[str, Any]] = field(default_factory=list)
    """The guard flags the run raised (suspected injection, PII), as reviewers see them."""
    wall_s: float = 0.0
    error: str | None = None
    """Set when the run itself failed (a bug, or a bad scenario): the scenario fails."""
    database: str | None = None
    """The scenario's database (kept only with --keep-databases)."""


def _with_dbname(uri: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(uri)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


def _schema_version() -> str:
    """Changes whenever a migration file changes, so stale templates are not reused."""
    digest = hashlib.sha256()
    for migration in load_migrations():
        digest.update(migration.sql.encode())
    return digest.hexdigest()[:10]


class ScenarioDatabases:
    """Creates a migrated database per scenario on one Postgres server."""

    def __init__(self, server_uri: str, *, keep: bool = False) -> None:
        """Use the server behind ``server_uri``; ``keep`` leaves scenario databases behind."""
        self.server_uri = server_uri
        self.keep = keep
        self.template = f"payables_eval_tpl_{_schema_version()}"
        self._template_ready = False
        self._lock = asyncio.Lock()

    async def _admin(self, statement: sql.Composed) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(
                self.server_uri, autocommit=True
            ) as conn:
                await conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigError(
                "The eval runner creates a database per scenario, but this Postgres role "
                "may not create databases. Grant CREATEDB, or unset DATABASE_URI to use the "
                "embedded Postgres."
            ) from exc

    async def ensure_template(self) -> None:
        """Create and migrate the template once (reused across runs while migrations hold)."""
        async with self._lock:
            if self._template_ready:
                return
            async with await psycopg.AsyncConnection.connect(
                self.server_uri, autocommit=True
            ) as conn:
                cur = await conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.template,)
                )
                exists = await cur.fetchone() is not None
            if not exists:
                building = f"{self.template}_build_{uuid.uuid4().hex[:6]}"
                await self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
                await migrate(_with_dbname(self.server_uri, building))
                try:
                    await self._admin(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(building), sql.Identifier(self.template)
                        )
                    )
                except psycopg.errors.DuplicateDatabase:  # another runner won the race
                    await self.drop(building)
            self._template_ready = True

    async def create(self, scenario_id: str) -> str:
        """A fresh migrated database for one scenario; returns its name."""
        await self.ensure_template()
        slug = "".join(c if c.isalnum() else "_" for c in scenario_id.lower())[:30]
        name = f"payables_eval_{slug}_{uuid.uuid4().hex[:8]}"
        # Copies may run side by side: nobody stays connected to the template.
        await self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)
            )
        )
        return name

    async def drop(self, name: str) -> None:
        """Drop a scenario database."""
        await self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def uri(self, name: str) -> str:
        """The URI of database ``name`` on this server."""
        return _with_dbname(self.server_uri, name)


def provider_for(mode: ModelMode) -> tuple[ModelProvider | None, Context]:
    """The model provider and run context for a model mode."""
    if mode == "rules":
        return None, Context(
            router_model=RULES_MODEL, planner_model=RULES_MODEL, respond_model=RULES_MODEL
        )
    if mode == "compromised":
        from evals.adversary import CompromisedModels

        return CompromisedModels(), Context()
    context = Context()
    if all(
        getattr(context, f"{role}_model") == RULES_MODEL
        for role in ("router", "planner", "respond")
    ):
        raise ConfigError(
            "--model llm needs a chat model: set OPENAI_API_KEY (and OPENAI_BASE_URL for a "
            "local server) or PAYABLES_MODEL; use --model rules to run offline."
        )
    return OpenAIModelProvider(), context


def resume_value(decision: ScriptedDecision, pending: list[dict[str, Any]]) -> dict[str, Any]:
    """The resume payload that applies ``decision`` to every pending action."""
    decisions: list[dict[str, Any]] = []
    for action in pending:
        if decision.decision == "approve":
            decisions.append({"type": "approve"})
        elif decision.decision == "reject":
            decisions.append({"type": "reject", "message": decision.message})
        else:
            decisions.append(
                {
                    "type": "edit",
                    "edited_action": {
                        "name": action["action"],
                        "args": {**action["args"], **decision.edited_args},
                    },
                }
            )
    return {
        "decisions": decisions,
        "reviewer": {"id": decision.reviewer.id, "role": decision.reviewer.role},
    }


async def _drive(agent: Agent, scenario: Scenario, run: ScenarioRun, context: Context) -> None:
    request = scenario.request
    attachments = [Attachment(name=a.name, text=a.text) for a in request.attachments]
    view = await agent.start(
        request.text,
        user=request.user,
        thread_id=run.thread_id,
        attachments=attachments,
        context=context,
    )
    scripted = list(scenario.decisions)

    def note_interrupt() -> None:
        if view["status"] == "interrupted":
            run.interrupts.append([p["action"] for p in view["pending_approvals"]])

    note_interrupt()
    while view["status"] == "interrupted" and scripted and len(run.interrupts) <= MAX_INTERRUPTS:
        pending = view["pending_approvals"]
        asked = run.interrupts[-1]
        decision = scripted.pop(0)
        label = f"decision {len(scenario.decisions) - len(scripted)} ({decision.reviewer.id})"
        if decision.expect_actions and sorted(decision.expect_actions) != sorted(asked):
            run.decision_errors.append(
                f"{label}: the interrupt asked about {asked}, the script expected "
                f"{decision.expect_actions}"
            )
        try:
            view = await agent.resume(
                run.thread_id, resume_value(decision, pending), context=context
            )
        except BadInput as exc:
            run.refusals.append(f"{label}: {exc}")
            if not (decision.expect_refusal or decision.optional):
                run.decision_errors.append(f"{label} was refused: {exc}")
            continue
        if decision.expect_refusal:
            run.decision_errors.append(f"{label} should have been refused but was accepted")
        note_interrupt()
    unused = [d for d in scripted if not d.optional]
    if unused:
        run.decision_errors.append(f"{len(unused)} scripted decision(s) were never used")
    run.status = view["status"]
    run.route = view["route"]
    run.result = view["result"] or {}
    run.summary = view["summary"]
    run.reason = view["reason"]
    run.flags = [dict(f) for f in view["flags"]]
    snapshot = await agent.graph.aget_state(agent.config(run.thread_id))
    run.outcomes = [dict(o) for o in snapshot.values.get("outcomes", [])]
    run.usage = dict(snapshot.values.get("usage", {}))


StateReader = Callable[[psycopg.AsyncConnection[dict[str, Any]]], Awaitable[Any]]


async def run_scenario(
    scenario: Scenario,
    *,
    mode: ModelMode,
    databases: ScenarioDatabases,
    base_dir: Path,
    check_state: Callable[
        [Scenario, psycopg.AsyncConnection[dict[str, Any]]], Awaitable[dict[str, Any]]
    ],
) -> tuple[ScenarioRun, dict[str, Any]]:
    """Run one scenario in its own database; return the run and ``check_state``'s findings."""
    run = ScenarioRun(scenario=scenario, mode=mode, thread_id=f"eval-{uuid.uuid4()}")
    state_findings: dict[str, Any] = {}
    before: Before | None = None
    started = time.perf_counter()
    name: str | None = None
    loaded_uri: str | None = None
    try:
        try:
            world = resolve_world(scenario, base_dir)
            provider, context = provider_for(mode)
            name = await databases.create(scenario.id)
            run.database = name
            uri = databases.uri(name)
            async with await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS) as conn:
                await load_world(conn, world)
                if scenario.expect.safety_invariants is not None:
                    before = await snapshot(conn)
            loaded_uri = uri
            database = Database(uri, max_size=4)
            # Tags and metadata reach every trace of the scenario (LangSmith, when tracing is
            # on).
            with tracing_context(
                tags=["eval", f"suite:{scenario.suite}", f"mode:{mode}", *scenario.tags],
                metadata={"eval_suite": scenario.suite, "scenario_id": scenario.id, "mode": mode},
            ):
                async with open_agent(models=provider, database=database) as agent:
                    await _drive(agent, scenario, run, context)
        except PayablesError as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug in the agent: recorded as this scenario's failure
            run.error = f"unexpected {type(exc).__name__}: {exc}"
        if loaded_uri is not None:
            # Even after a failed run: what it committed before failing (a forbidden payment,
            # say) is judged, so a crash cannot hide an attack that succeeded.
            try:
                async with await psycopg.AsyncConnection.connect(
                    loaded_uri, **CONNECTION_KWARGS
                ) as conn:
                    findings = await check_state(scenario, conn)
                    if scenario.expect.safety_invariants is not None:
                        findings["invariants"] = await broken_invariants(
                            scenario, run, before, conn
                        )
                    state_findings = findings
            except Exception as exc:
                failed = f"state assertions could not be checked: {type(exc).__name__}: {exc}"
                run.error = f"{run.error}; {failed}" if run.error else failed
    finally:
        run.wall_s = time.perf_counter() - started
        if name is not None and not databases.keep:
            await databases.drop(name)
            run.database = None
    return run, state_findings


async def broken_invariants(
    scenario: Scenario,
    run: ScenarioRun,
    before: Before | None,
    conn: psycopg.AsyncConnection[dict[str, Any]],
) -> list[str]:
    """The red team's invariants the run broke (`evals.redteam.invariants`), as sentences."""
    invariants_of = scenario.expect.safety_invariants
    if invariants_of is None or before is None:
        # Raised, not skipped: invariants that could not be checked count as broken.
        raise RuntimeError("the world was not read before the run: nothing to compare with")
    after = await effects(conn, before)
    return invariants(invariants_of.clerk_text, scenario.request.user, run.route, before, after)
