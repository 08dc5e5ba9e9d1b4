"""`payables`: the command line for clerks, reviewers and operators.

Exit codes: 0 success (a run paused for approval is a success), 2 bad input (the message
says what to fix), 1 failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from evals.cli import register as register_eval_commands
from guards.redaction import redact, redact_text
from runtime.agent import SHUTDOWN, RunStopped, checked_id, open_agent
from runtime.context import Context
from runtime.errors import BadInput, ConfigError, NotFound, PayablesError, shown
from runtime.logs import configure_logging
from runtime.replay import ReplayResult, replay_dead_letter
from runtime.settings import DEFAULT_RETENTION_DAYS, MAX_RETENTION_DAYS, PROJECT_ROOT, Settings
from state.approvals import REVIEWER_ROLES, ReviewerIn
from state.audit import (
    UnauditedReason,
    VerifyReport,
    audit_tenants,
    format_time,
    timeline,
    verify_chain,
)
from state.db import Database, database_uri, default_database, migrate, redact_uri, schema_status
from state.deadletters import get_dead_letter, list_dead_letters
from state.graph_state import Attachment
from state.retention import PruneReport, pruned_run
from state.retention import prune as prune_checkpoints
from state.runs import list_runs
from state.stats import parse_since, run_stats
from state.world import SAMPLE_WORLD_PATH, SCHEMA_PATH, load_world, read_world, world_json_schema

SAMPLE_INBOX_PATH = PROJECT_ROOT / "data" / "inbox.sample.json"

# Markdown: a docstring's lines join into paragraphs that fit the terminal (rich mode kept
# each source line break, so help read as lines cut in the middle).
app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
db_app = typer.Typer(help="The database: where it is and what schema it has.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _command_name() -> str:
    """How the user can invoke this CLI again: bare `payables` only if it is on PATH."""
    on_path = shutil.which("payables")
    if on_path and Path(on_path).resolve() == Path(sys.argv[0]).resolve():
        return "payables"
    script = Path(sys.prefix) / "bin" / "payables"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _database_uri() -> str:
    """`database_uri`, a bad setting or an embedded server that will not start said plainly."""
    try:
        return database_uri()
    except BadInput as exc:
        _fail(str(exc), 2)
    except PayablesError as exc:
        _fail(str(exc), 1)


def _stop_requested(sig: signal.Signals, loop: asyncio.AbstractEventLoop) -> None:
    """First SIGTERM or Ctrl-C: finish the step in flight, checkpoint, stop. Second: now."""
    SHUTDOWN.request(sig.name)
    loop.remove_signal_handler(sig)
    err.print(
        f"[yellow]{sig.name}:[/] finishing the current step, then stopping "
        "(send it again to stop at once)"
    )


async def _with_stop_signals(coro: Coroutine[Any, Any, Any]) -> Any:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, _stop_requested, sig, loop)
        except (ValueError, RuntimeError, NotImplementedError):
            continue  # not the main thread, or no signals here: the default action stays
        installed.append(sig)
    try:
        return await coro
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine, mapping errors to exit codes (2 bad input, 1 failure).

    SIGTERM (or Ctrl-C) stops a run cleanly: the step in flight finishes and is
    checkpointed, the command says how to continue the thread and exits 0.
    """
    try:
        return asyncio.run(_with_stop_signals(coro))
    except RunStopped as exc:
        if exc.started:
            where = f" before {', '.join(exc.next_steps)}" if exc.next_steps else ""
            err.print(
                f"[yellow]stopped[/] on {exc.reason}: thread {escape(exc.thread_id)} is "
                f"checkpointed{where}. Finish it with: "
                f"{_command_name()} continue {escape(exc.thread_id)}"
            )
        else:
            err.print(f"[yellow]stopped:[/] {escape(str(exc))}")
        raise typer.Exit(0) from None
    except BadInput as exc:
        coro.close()
        _fail(str(exc), 2)
    except PayablesError as exc:
        _fail(str(exc), 1)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _print_view(view: dict[str, Any]) -> None:
    status_style = {
        "completed": "green",
        "interrupted": "yellow",
        "refused": "red",
        "escalated": "magenta",
        "failed": "red",
    }.get(view["status"], "white")
    out.print(f"[bold]thread[/] {view['thread_id']}")
    route = view["route"] or "not yet routed"
    out.print(f"  route   {route}   status [{status_style}]{view['status']}[/]")
    out.print("  models  " + ", ".join(f"{k}={v}" for k, v in view["model_path"].items()))
    if view["plan"]:
        out.print("  plan    " + " → ".join(s["tool"] for s in view["plan"]))
    if view["summary"]:
        out.print(f"  summary {escape(view['summary'])}")
    elif view["reason"]:
        out.print(f"  reason  {escape(view['reason'])}")
    if view.get("note"):
        out.print(f"  [yellow]note[/]    {escape(view['note'])}")
    for approval in view["pending_approvals"]:
        _print_approval(approval)


def _print_approval(approval: dict[str, Any]) -> None:
    req = approval["requirement"]
    out.print(
        f"  [yellow]awaiting approval[/] {approval['action']} "
        f"{json.dumps(approval['args'], default=str)}"
    )
    out.print(f"    interrupt {approval['interrupt_id']}")
    out.print(
        f"    needs {req['min_approvers']} approver(s)"
        + (f", one with role {req['required_role']}" if req["required_role"] else "")
        + (
            f"; approved so far by {', '.join(a['id'] for a in req['approved_by'])}"
            if req["approved_by"]
            else ""
        )
    )
    for reason in req["reasons"]:
        out.print(f"    - {escape(reason)}")
    evidence = approval["evidence"]
    if "match_table" in evidence:
        table = Table(
            "line",
            "description",
            "ordered",
            "received",
            "billed",
            "PO price",
            "billed price",
            "variance %",
            box=None,
            padding=(0, 1),
        )
        for line in evidence["match_table"]:
            table.add_row(
                str(line["line_no"]),
                escape(clip(line["description"], 40)),
                line["ordered_quantity"] or "-",
                line["received_quantity"] or "-",
                line["billed_quantity"],
                line["po_unit_price"] or "-",
                line["billed_unit_price"],
                line["price_variance_pct"] or "-",
            )
        out.print(table)
        inv = evidence["invoice"]
        out.print(
            f"    {inv['invoice_id']} {inv['vendor_name']} total {inv['total']} "
            f"{inv['currency']}, verdict {evidence['verdict']}, pays to vendor master "
            f"{inv['vendor_master_account']}"
        )
        for exc in evidence["exceptions"]:
            out.print(f"    ! {exc['code']}: {escape(exc['detail'])}")
    if "vendor" in evidence:
        v = evidence["vendor"]
        change = f" → {evidence['proposed_account']}" if evidence.get("proposed_account") else ""
        out.print(
            f"    {v['vendor_id']} {v['name']} <{v['contact_email']}>: "
            f"account {v['current_account']}{change}"
        )
    if approval.get("error"):
        out.print(f"    [red]last resume refused:[/] {escape(approval['error'])}")


# --- db -------------------------------------------------------------------------------


@db_app.command("url")
def db_url() -> None:
    """Print the Postgres URI in use (starting the embedded server if needed)."""
    sys.stdout.write(redact_uri(_database_uri()) + "\n")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations and the checkpointer's setup."""
    applied = _run(migrate(_database_uri()))
    out.print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


@db_app.command("status")
def db_status(as_json: JsonOpt = False) -> None:
    """Show the server version and applied / pending migrations."""
    uri = _database_uri()
    status = _run(schema_status(uri))
    status["uri"] = redact_uri(uri)
    settings = Settings.from_env()
    status["embedded"] = settings.database_uri is None
    status["uri_from"] = settings.database_uri_from
    if as_json:
        _print_json(status)
        return
    out.print(f"uri       {status['uri']} ({status['uri_from'] or 'embedded'})")
    out.print(f"server    PostgreSQL {status['server_version']}")
    out.print(f"applied   {', '.join(status['applied']) or '-'}")
    out.print(f"pending   {', '.join(status['pending']) or '-'}")


# --- world ----------------------------------------------------------------------------


@asynccontextmanager
async def _migrated_database() -> AsyncIterator[Database]:
    """The process database, migrated, closed on exit (for commands that need no graph)."""
    database = default_database()
    await migrate(database.uri)
    try:
        yield database
    finally:
        await database.close()


async def _seed(world_path: Path, *, protect_history: bool = False) -> dict[str, int]:
    world = read_world(world_path)
    tenant = Context().tenant  # the seed is recorded in the operator's tenant chain
    async with _migrated_database() as database, database.connection() as conn:
        return await load_world(conn, world, protect_history=protect_history, tenant=tenant)


@app.command()
def seed(
    world: Annotated[
        Path, typer.Option(help="World file (JSON); see state/world.schema.json.")
    ] = SAMPLE_WORLD_PATH,
    discard_history: Annotated[
        bool,
        typer.Option(
            "--discard-history",
            help="Replace the world even though the agent has made payments, bank changes or"
            " emails in it (they are erased with it; the audit chain stays).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replace the AP world (vendors, POs, receipts, invoices, payments, policy) from a file.

    The old world goes, and every thread with it, in one transaction; a bad file changes
    nothing, and neither does a seed while a run is in progress, nor (without
    --discard-history) one over a world the agent has made payments, bank changes or
    emails in.
    """
    counts = _run(_seed(world, protect_history=not discard_history))
    if as_json:
        _print_json({"world": str(world), "loaded": counts})
    else:
        out.print(f"loaded {world}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@app.command("world-schema")
def world_schema(
    write: Annotated[bool, typer.Option(help="Rewrite state/world.schema.json.")] = False,
) -> None:
    """Print (or rewrite) the JSON Schema of world files."""
    text = json.dumps(world_json_schema(), indent=2) + "\n"
    if write:
        SCHEMA_PATH.write_text(text)
        out.print(f"wrote {SCHEMA_PATH}")
    else:
        sys.stdout.write(text)


# --- runs -----------------------------------------------------------------------------


@app.command()
def run(
    request: Annotated[str, typer.Argument(help="What to do, e.g. 'Validate INV-1001'.")],
    thread: Annotated[str | None, typer.Option(help="Thread id (default: a new UUID).")] = None,
    user: Annotated[str, typer.Option(help="Who is asking.")] = "clerk",
    attach: Annotated[
        list[Path] | None,
        typer.Option(
            help="A vendor document (text) to forward with the request; repeatable. "
            "Treated as data, never as instructions."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a request to completion or to its next approval."""
    # A requester's id has a reviewer id's shape; an empty one was recorded as "anonymous".
    _check_person_flag("--user", user, "who is asking", "clerk-ana")
    attachments = [_read_attachment(path) for path in attach or []]
    if len(attachments) > MAX_ATTACHMENTS:
        _fail(f"At most {MAX_ATTACHMENTS} attachments per request, got {len(attachments)}.", 2)

    # Named before anything runs: a process killed before the request reached the run
    # index (its first step records it) left a thread no `payables threads` lists.
    try:
        thread_id = checked_id(thread, "thread id") if thread else str(uuid.uuid4())
    except BadInput as exc:
        _fail(str(exc), 2)
    err.print(f"thread {thread_id}", highlight=False)

    async def go() -> dict[str, Any]:
        async with open_agent() as agent:
            return await agent.start(
                request, user=user, thread_id=thread_id, attachments=attachments
            )

    view = _run(go())
    _print_json(view) if as_json else _print_view(view)
    if view["status"] == "failed":
        raise typer.Exit(1)


def _check_person_flag(flag: str, value: str, what: str, example: str) -> None:
    """Exit 2 naming ``flag`` unless ``value`` is a person's id (`ReviewerIn`'s shape)."""
    try:
        ReviewerIn(id=value, role="clerk")
    except ValidationError:
        given = f"'{shown(value)}'" if value else "nothing"
        _fail(
            f"{flag} must be {what}: one word of up to 128 printable characters, such as "
            f"{flag} {example}; got {given}.",
            2,
        )


MAX_ATTACHMENTS = 5
MAX_ATTACHMENT_BYTES = 100_000


def _read_attachment(path: Path) -> Attachment:
    try:
        data = path.read_bytes()
    except OSError as exc:
        _fail(f"Cannot read attachment {path}: {exc.strerror}.", 2)
    if len(data) > MAX_ATTACHMENT_BYTES:
        _fail(f"Attachment {path} is {len(data)} bytes; the limit is {MAX_ATTACHMENT_BYTES}.", 2)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        _fail(f"Attachment {path} is not UTF-8 text; paste its text into a .txt file.", 2)
    return Attachment(name=path.name, text=text)


@app.command()
def approvals(as_json: JsonOpt = False) -> None:
    """List every pending approval across threads."""

    async def go() -> list[dict[str, Any]]:
        async with open_agent() as agent:
            return await agent.pending_everywhere()

    pending = _run(go())
    if as_json:
        _print_json({"pending_approvals": pending})
        return
    if not pending:
        out.print("no pending approvals")
        return
    for approval in pending:
        out.print(f"[bold]{approval['thread_id']}[/]  {escape(approval['request'])}")
        _print_approval(approval)


_OPTION_NAME = re.compile(r"--[a-z][a-z-]*")
"""What an option looks like on this command line (a value that is one was a slip)."""


def _decisions_from(
    approve: bool, reject: str | None, edit: str | None, actions: int
) -> list[dict[str, Any]]:
    chosen = [flag for flag in (approve, reject is not None, edit is not None) if flag]
    if len(chosen) != 1:
        raise BadInput("Give exactly one of --approve, --reject REASON or --edit JSON.")
    if approve:
        return [{"type": "approve"}] * actions
    if reject is not None:
        return [{"type": "reject", "message": reject}] * actions
    assert edit is not None
    try:
        parsed = json.loads(edit)
    except json.JSONDecodeError as exc:
        raise BadInput(f"--edit must be JSON ({exc.msg} at column {exc.colno}).") from exc
    if isinstance(parsed, list):
        if not all(isinstance(item, dict) for item in parsed):
            raise BadInput(
                "--edit as a JSON list takes one decision object per pending action, e.g. "
                '[{"type": "edit", "edited_action": {"name": "...", "args": {...}}}].'
            )
        return parsed
    if not isinstance(parsed, dict):
        raise BadInput(
            "--edit takes the edited args of the first pending action as a JSON "
            "object, or a JSON list with one decision per pending action."
        )
    return [{"type": "edit", "edited_action": {"name": "", "args": parsed}}] + [
        {"type": "approve"}
    ] * (actions - 1)


@app.command()
def resume(
    thread: Annotated[str, typer.Argument(help="Thread id with a pending approval.")],
    reviewer: Annotated[str, typer.Option(help="Your reviewer id.")],
    approve: Annotated[
        bool, typer.Option("--approve", help="Approve every pending action.")
    ] = False,
    reject: Annotated[str | None, typer.Option("--reject", help="Reject, with the reason.")] = None,
    edit: Annotated[
        str | None,
        typer.Option(
            "--edit",
            help="The first pending action's whole argument set, edited (JSON object: "
            "start from the args `payables approvals` shows); the rest are approved. Or a "
            "JSON list of decisions, one per action.",
        ),
    ] = None,
    role: Annotated[
        str, typer.Option(help=f"Your role: {', '.join(REVIEWER_ROLES)}.")
    ] = "approver",
    interrupt: Annotated[str | None, typer.Option(help="Answer this interrupt id only.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve, edit or reject a pending approval, then continue the run."""
    for option, value in (("--reviewer", reviewer), ("--reject", reject)):
        if value is not None and _OPTION_NAME.fullmatch(value):
            # `--reject --json` takes "--json" as the reason: a rejection on record with a
            # reason nobody wrote, and the output not what was asked for.
            _fail(
                f"{option} takes a value, got the option {shown(value)}. Put the value right "
                f"after {option} (quoted if it has spaces), e.g. {option} 'text'.",
                2,
            )
    if role not in REVIEWER_ROLES:
        _fail(
            f"--role must be one of {', '.join(sorted(REVIEWER_ROLES))}, got {shown(role)} "
            "(a server token's reviewer role signs as approver).",
            2,
        )
    # Checked here, not only in the resume value, so the message names the flag instead of
    # the resume JSON the flags are turned into.
    _check_person_flag("--reviewer", reviewer, "your reviewer id", "ana.lee")

    async def go() -> dict[str, Any]:
        async with open_agent() as agent:
            pending = await agent.pending(thread)
            actions = pending[0][1]["action_requests"] if pending else []
            decisions = _decisions_from(approve, reject, edit, max(len(actions), 1))
            for decision, action in zip(decisions, actions, strict=False):
                edited = decision.get("edited_action")
                if isinstance(edited, dict) and not edited.get("name"):
                    edited["name"] = action["name"]
            value = {"decisions": decisions, "reviewer": {"id": reviewer, "role": role}}
            return await agent.resume(thread, value, interrupt_id=interrupt)

    view = _run(go())
    _print_json(view) if as_json else _print_view(view)


@app.command("continue")
def continue_(
    thread: Annotated[str, typer.Argument(help="Thread id that stopped mid-run.")],
    as_json: JsonOpt = False,
) -> None:
    """Finish a run that stopped between steps (crash, kill); side effects are not repeated."""

    async def go() -> dict[str, Any]:
        async with open_agent() as agent:
            return await agent.continue_run(thread)

    view = _run(go())
    _print_json(view) if as_json else _print_view(view)
    if view["status"] == "failed":
        raise typer.Exit(1)


@app.command()
def threads(
    as_json: JsonOpt = False, limit: Annotated[int, typer.Option(min=1, max=1000)] = 50
) -> None:
    """List recent threads with their status."""

    async def go() -> list[dict[str, Any]]:
        async with _migrated_database() as database:
            return await list_runs(database, limit=limit)

    rows = _run(go())
    if as_json:
        _print_json({"threads": rows})
        return
    out.print(threads_listing(rows, out.width))


def threads_listing(rows: list[dict[str, Any]], width: int) -> RenderableType:
    """The `payables threads` table, or where it does not fit in ``width``, two lines a run.

    Thread ids stay whole either way (`show`, `resume` and `audit show` take them). A table
    squeezed into 80 columns wrapped every other cell to a word per line, four letters wide.
    """
    widest = max((len(row["thread_id"]) for row in rows), default=6)
    table = Table(
        Column("thread", no_wrap=True, min_width=widest),
        Column("status", no_wrap=True),
        Column("route", no_wrap=True),
        Column("requester", no_wrap=True),
        Column("request", min_width=30),
        Column("updated", no_wrap=True),
    )
    for row in rows:
        table.add_row(
            escape(row["thread_id"]),
            row["status"],
            row["route"] or "-",
            escape(row["requester"]),
            escape(clip(row["request"], 60)),
            _updated(row),
        )
    # The table when every column but the request keeps its width, and the request has 30.
    if not rows or Console(width=10_000).measure(table).minimum <= width:
        return table
    # First line: what to act on (id, status, and when, if it fits); second, indented: what
    # the run is.
    status_width = max(len("status"), *(len(row["status"]) for row in rows))
    when_first = widest + status_width + len("  ") * 2 + len(_updated(rows[0])) <= width
    heading = f"{'thread':<{widest}}  {'status':<{status_width}}"
    lines = [Text(heading + ("  updated" if when_first else ""), style="bold")]
    for row in rows:
        first = f"{row['thread_id']:<{widest}}  {row['status']:<{status_width}}"
        about = [row["route"] or "not yet routed", row["requester"], row["request"]]
        if when_first:
            first += f"  {_updated(row)}"
        else:
            about.insert(0, _updated(row))
        lines.append(Text(first.rstrip()))
        lines.append(Text("  " + clip(" · ".join(about), max(width - 2, 20)), no_wrap=True))
    return Group(*lines)


def _updated(row: dict[str, Any]) -> str:
    return str(row["updated_at"].strftime("%Y-%m-%d %H:%M"))


@app.command()
def show(
    thread: Annotated[str, typer.Argument(help="Thread id.")],
    history: Annotated[bool, typer.Option("--history", help="Also list checkpoints.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a thread's state, result and pending approvals."""

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with open_agent() as agent:
            try:
                view = await agent.view(thread)
            except NotFound:
                pruned = await pruned_run(agent.database, thread)
                if pruned is None:
                    raise
                return _pruned_view(pruned), []
            return view, (await agent.history(thread) if history else [])

    view, checkpoints = _run(go())
    if history:
        view["history"] = checkpoints
    if as_json:
        _print_json(view)
        return
    if view.get("pruned_at"):
        _print_pruned(view)
        return
    _print_view(view)
    if view.get("result"):
        out.print_json(json.dumps(view["result"], default=str))
    for cp in checkpoints:
        out.print(
            f"  step {cp['step']:>3} {cp['source']:<6} next={','.join(cp['next']) or '-'} "
            f"{cp['created_at']}"
        )


@app.command()
def stats(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only the last DURATION, e.g. 30m, 24h, 7d (default: all time)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run statistics: runs by status and route, node latency, cost, tool errors, approvals."""

    async def go() -> dict[str, Any]:
        window = parse_since(since) if since is not None else None
        async with _migrated_database() as database:
            return await run_stats(database, since=window)

    report: dict[str, Any] = _run(go())
    if as_json:
        _print_json(report)
        return
    _print_stats(report)


PCTS = ("p50", "p95", "p99")


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a word's end, marked with "…".

    A cut inside a word could leave part of a masked account ("****4811" as "****4"),
    which reads as another account.
    """
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    word_end = cut.rfind(" ")
    if word_end >= limit // 2:
        cut = cut[:word_end]
    return cut.rstrip(" ,;:-") + "…"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_stats(report: dict[str, Any]) -> None:
    since = format_time(report["since"]) if report["since"] else "the beginning"
    runs = report["runs"]
    out.print(f"[bold]runs[/] from {since} to {format_time(report['until'])}: {runs['total']}")
    table = Table("status", "route", "runs", title="runs by status and route")
    for row in runs["by_status_and_route"]:
        table.add_row(row["status"], row["route"] or "-", str(row["runs"]))
    out.print(table)
    table = Table("node", "steps", "failed", "p50 ms", "p95 ms", "p99 ms", title="node latency")
    for node, lat in report["node_latency_ms"].items():
        table.add_row(node, str(lat["steps"]), str(lat["failed"]), *(f"{lat[p]:.1f}" for p in PCTS))
    out.print(table)
    cost = report["cost_per_task_usd"]
    for outcome in ("successful", "failed"):
        c = cost[outcome]
        out.print(
            f"cost per {outcome} task: {_money(c['per_task_usd'])} "
            f"({c['runs']} run{'' if c['runs'] == 1 else 's'}, {_money(c['total_usd'])} in all)"
        )
    table = Table(
        "tool",
        "calls",
        "ok",
        "errors",
        "error rate",
        "approval flow",
        "errors by code",
        title="tool calls (approval flow: held for or rejected by a reviewer; not errors)",
    )
    for tool, t in report["tool_calls"].items():
        codes = ", ".join(f"{code} {n}" for code, n in t["errors_by_code"].items())
        table.add_row(
            tool,
            str(t["calls"]),
            str(t["ok"]),
            str(t["errors"]),
            _share(t["error_rate"]),
            str(t["approval_flow"]),
            codes or "-",
        )
    out.print(table)
    wait = report["approval_latency_s"]
    if wait["measured"]:
        out.print(
            f"approval latency over {wait['measured']} decision(s): "
            + ", ".join(f"{p} {wait[p]:.1f}s" for p in (*PCTS, "max"))
        )
    else:
        out.print(f"approval latency: no measured decisions ({wait['decisions']} decision(s))")
    contained = report["containment"]
    out.print(
        f"containment: {_share(contained['rate'])} "
        f"({contained['completed_without_a_human']} of {contained['finished']} finished runs "
        "completed without a human)"
    )
    if report["escalation_reasons"]:
        table = Table("status", "runs", "reason", title="why runs did not complete")
        for group in report["escalation_reasons"]:
            table.add_row(group["status"], str(group["runs"]), escape(group["reason"]))
        out.print(table)


# --- audit ----------------------------------------------------------------------------

audit_app = typer.Typer(
    help="The tamper-evident audit chain: verify it, or read one run.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")


_UNAUDITED_HEADINGS: dict[UnauditedReason, str] = {
    "no_event": "[red]MISSING EVENTS[/]: records committed with an audit event that the chain "
    "no longer holds (its newest rows dropped, or all of them):",
    "ledger_edited": "[red]EDITED LEDGER ROWS[/]: gated calls whose stored result is not the "
    "one their audit event recorded:",
    "unapproved": "[red]NOT APPROVED AS DONE[/]: irreversible or destructive calls without the "
    "approvals of their arguments they always need, or payments to another account than "
    "their approvers were shown:",
    "outside_gate": "[red]WRITTEN PAST THE GATE[/]: payments, bank changes, emails, "
    "exceptions, invoices or vendors no gated call (nor the seed) wrote:",
    "differs": "[red]EDITED RECORDS[/]: decisions, payments, bank changes, emails, "
    "exceptions, invoices or vendors that say other than their event, gated calls or seed:",
}


@audit_app.command("verify")
def audit_verify(
    as_json: JsonOpt = False,
    tenant: Annotated[str | None, typer.Option(help="Verify only this tenant's chain.")] = None,
) -> None:
    """Recompute every hash and link; check every gated write, decision and payment is vouched for.

    Exit 1 at the first broken link of any chain, or at a record the chain does not vouch
    for: a ledger row or decision without its event or unlike it, a call without the
    approvals it always needs, a payment to an account its approvers were not shown, or a
    payment, bank change, email, exception, invoice or vendor written or edited past the gate.
    """

    async def go() -> VerifyReport:
        async with _migrated_database() as database, database.connection() as conn:
            report = await verify_chain(conn, tenant)
            if tenant is not None and not report.chains[0].rows:
                # A mistyped tenant would otherwise read as a verified, intact chain.
                known = ", ".join(await audit_tenants(conn)) or "none"
                raise BadInput(
                    f"Tenant '{shown(tenant)}' has no audit rows, so there is nothing to "
                    f"verify (tenants with rows: {known}). Check the name; if it is right and "
                    "its chain had rows, compare with the chain heads you keep outside the "
                    "database."
                )
            return report

    report: VerifyReport = _run(go())
    if as_json:
        _print_json(report.as_dict())
    else:
        if not report.chains:
            out.print("no audit events" + (f" for tenant {escape(tenant)}" if tenant else ""))
        for chain in report.chains:
            head = f"head seq {chain.head_seq} {chain.head_hash}" if chain.head_hash else "empty"
            state = "[green]intact[/]" if chain.broken is None else "[red]BROKEN[/]"
            out.print(f"tenant {escape(chain.tenant)}: {chain.rows} rows, {state}, {head}")
            if chain.broken is not None:
                b = chain.broken
                out.print(f"  first broken link: seq {b.seq}, id {b.id}, {b.reason}: {b.detail}")
        for reason, heading in _UNAUDITED_HEADINGS.items():
            records = [u for u in report.unaudited if u.reason == reason]
            if records:
                out.print(heading)
            for u in records:
                where = f"thread {escape(u.thread_id)}" if u.thread_id else "no thread"
                out.print(f"  {u.table} on {where}: {escape(u.detail)}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("show")
def audit_show(
    thread: Annotated[str, typer.Argument(help="Thread id.")],
    as_json: JsonOpt = False,
) -> None:
    """One run's audit events in order: time, kind and a one-line summary."""

    async def go() -> list[dict[str, Any]]:
        checked_id(thread, "thread id")
        async with _migrated_database() as database, database.connection() as conn:
            return await timeline(conn, thread)

    events = _run(go())
    if not events:
        _fail(f"No audit events for thread {shown(thread)}; `payables threads` lists runs.", 2)
    if as_json:
        _print_json({"thread_id": thread, "events": events})
        return
    table = Table("time (UTC)", "seq", "kind", "summary", box=None, padding=(0, 1))
    for event in events:
        table.add_row(
            format_time(event["created_at"]),
            str(event["seq"]),
            event["kind"],
            escape(event["summary"]),
        )
    out.print(f"[bold]thread[/] {escape(thread)} (tenant {escape(events[0]['tenant'])})")
    out.print(table)


# --- demo -----------------------------------------------------------------------------


@app.command()
def demo(
    world: Annotated[Path, typer.Option(help="World file to seed.")] = SAMPLE_WORLD_PATH,
    inbox: Annotated[Path, typer.Option(help="Requests to run (JSON list).")] = SAMPLE_INBOX_PATH,
    as_json: JsonOpt = False,
) -> None:
    """Seed the sample world, run the sample inbox, and show what needs a person.

    The embedded database is the demo's own: its world is replaced whatever was done in
    it. A database you configured (PAYABLES_DATABASE_URI) is treated as `payables seed`
    treats it: a world the agent has made payments, bank changes or emails in is kept.
    """
    try:
        requests = json.loads(inbox.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"Cannot read inbox {inbox}: {exc}", 2)
    if not isinstance(requests, list) or not all(
        isinstance(r, dict) and isinstance(r.get("request"), str) for r in requests
    ):
        _fail(f'{inbox} must be a JSON list of {{"request": ..., "user": ...}} objects.', 2)

    async def go() -> list[dict[str, Any]]:
        counts = await _seed(world, protect_history=Settings.from_env().database_uri is not None)
        err.print(
            f"[bold]seeded[/] {world.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
        )
        views = []
        async with open_agent() as agent:
            for index, item in enumerate(requests, start=1):
                shown = escape(redact_text(item["request"]))  # accounts to their last four
                err.print(f"[dim]({index}/{len(requests)})[/] {shown}")
                view = await agent.start(item["request"], user=item.get("user", "clerk"))
                err.print(f"    → {view['route']}: [bold]{view['status']}[/]")
                views.append(view)
        return views

    views = _run(go())
    if as_json:
        _print_json({"runs": views})
        return
    table = Table("#", "request", "route", "status", "outcome", title="payables demo")
    for index, view in enumerate(views, start=1):
        outcome = (
            f"awaiting {', '.join(a['action'] for a in view['pending_approvals'])}"
            if view["pending_approvals"]
            else view["summary"] or view["reason"]
        )
        table.add_row(
            str(index),
            escape(clip(view["request"], 48)),
            view["route"],
            view["status"],
            escape(clip(outcome, 110)),
        )
    out.print(table)
    paused = [v for v in views if v["pending_approvals"]]
    if paused:
        cmd = _command_name()
        out.print("\n[bold]Paused for approval[/] (the requester may not approve their own):")
        for view in paused:
            tid = view["thread_id"]
            needs = max(
                (a["requirement"] for a in view["pending_approvals"]),
                key=lambda r: r["min_approvers"],
            )
            role = needs["required_role"] or "approver"
            out.print(f"  {escape(view['request'])}")
            out.print(f"    {cmd} resume {tid} --approve --reviewer rev-1 --role {role}")
            if needs["min_approvers"] > 1:
                out.print(
                    f"    {cmd} resume {tid} --approve --reviewer rev-2 --role approver"
                    "   # dual control: a second, different reviewer"
                )
            out.print(f"    {cmd} resume {tid} --reject 'reason' --reviewer rev-1 --role {role}")
            out.print(f"    {cmd} show {tid}")
        out.print(f"\nAll pending approvals: [bold]{cmd} approvals[/]")


# --- dead letters and retention -------------------------------------------------------

deadletters_app = typer.Typer(
    help="Runs that failed unexpectedly or ran out of retries: list, inspect, replay.",
    no_args_is_help=True,
)
app.add_typer(deadletters_app, name="deadletters")

DeadLetterId = Annotated[
    int, typer.Argument(metavar="ID", help="Dead letter id (`payables deadletters list`).")
]


@deadletters_app.command("list")
def deadletters_list(
    show_all: Annotated[
        bool, typer.Option("--all", help="Also list replayed and resolved ones.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters, newest first (only open ones unless --all)."""

    async def go() -> list[dict[str, Any]]:
        async with _migrated_database() as database:
            return await list_dead_letters(
                database, status=None if show_all else "open", limit=limit
            )

    rows = _run(go())
    if as_json:
        _print_json({"dead_letters": rows})
        return
    if not rows:
        out.print("no dead letters" if show_all else "no open dead letters")
        return
    # One entry per dead letter, not a table: thread ids must stay whole to be copied.
    for row in rows:
        out.print(
            f"[bold]{row['dead_letter_id']}[/] {row['status']:<12} "
            f"{format_time(row['created_at'])}  thread {row['thread_id']}  "
            f"{row['action']} at {row['step'] or '?'}, {row['attempts']} attempt(s)"
        )
        error = f"{row['error_class'].rsplit('.', 1)[-1]}: {row['message']}"
        out.print(f"    {escape(clip(error, 200))}")


@deadletters_app.command("show")
def deadletters_show(dead_letter: DeadLetterId, as_json: JsonOpt = False) -> None:
    """One dead letter in full, with the (redacted) payload a replay uses."""

    async def go() -> dict[str, Any] | None:
        async with _migrated_database() as database:
            return await get_dead_letter(database, dead_letter)

    row = _run(go())
    if row is None:
        _fail(f"No dead letter {dead_letter}; `payables deadletters list --all` lists them.", 2)
    row = redact(row)
    if as_json:
        _print_json(row)
        return
    out.print(f"[bold]dead letter[/] {row['dead_letter_id']}  status {row['status']}")
    out.print(f"  thread   {row['thread_id']} (tenant {escape(row['tenant'])})")
    out.print(
        f"  action   {row['action']}, step {row['step'] or '-'}, {row['attempts']} attempt(s)"
    )
    out.print(f"  error    {row['error_class']}: {escape(row['message'])}")
    out.print(f"  created  {format_time(row['created_at'])}")
    if row["replayed_at"]:
        out.print(f"  handled  {format_time(row['replayed_at'])}: {escape(row['replay_note'])}")
    out.print_json(json.dumps(row["payload"], default=str))


@deadletters_app.command("replay")
def deadletters_replay(
    dead_letter: DeadLetterId,
    force: Annotated[
        bool, typer.Option("--force", help="Replay even if it was replayed or resolved before.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay a dead letter: finish the run from its last checkpoint (or start it again).

    Side effects that had committed are not repeated (idempotency keys). A thread that
    waits for an approval is not replayed: a reviewer answers it with `payables resume`;
    one whose answer was recorded before the failure is finished from that answer.
    """

    async def go() -> ReplayResult:
        async with open_agent() as agent:
            return await replay_dead_letter(agent, dead_letter, force=force)

    result: ReplayResult = _run(go())
    if as_json:
        _print_json(result.as_dict())
        return
    out.print(f"[bold]dead letter[/] {dead_letter}: {result.outcome} ({escape(result.note)})")
    if result.view is not None:
        _print_view(result.view)


def _pruned_view(run: dict[str, Any]) -> dict[str, Any]:
    """What `payables show` prints for a thread whose checkpoints were pruned."""
    return {
        "thread_id": run["thread_id"],
        "status": run["status"],
        "route": run["route"],
        "request": redact_text(run["request"]),
        "user": run["requester"],
        "summary": redact_text(run["summary"]),
        "pending_approvals": [],
        "pruned_at": run["pruned_at"],
        "note": (
            f"checkpoints pruned by retention on {format_time(run['pruned_at'])}; "
            f"the audit trail remains (`payables audit show {run['thread_id']}`)"
        ),
    }


def _print_pruned(view: dict[str, Any]) -> None:
    out.print(f"[bold]thread[/] {view['thread_id']}")
    out.print(f"  route   {view['route']}   status {view['status']}   [dim]pruned[/]")
    out.print(f"  request {escape(view['request'])}")
    if view["summary"]:
        out.print(f"  summary {escape(view['summary'])}")
    out.print(f"  {escape(view['note'])}")


@app.command()
def prune(
    older_than: Annotated[
        int | None,
        typer.Option(
            "--older-than",
            min=1,
            max=MAX_RETENTION_DAYS,
            help="Days since a thread finished (default: PAYABLES_RETENTION_DAYS, else "
            f"{DEFAULT_RETENTION_DAYS}).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be pruned; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete the checkpoints of threads that finished long ago; keep their history.

    Only finished threads lose their checkpoints: a thread waiting for an approval, one
    that can still be continued, or one with an open dead letter is kept. The run list,
    the audit chain, approval decisions and the tool-call ledger stay as they are.
    """

    async def go() -> PruneReport:
        days = older_than or Settings.from_env().retention_days
        async with open_agent() as agent:
            return await prune_checkpoints(
                agent.database,
                agent.graph,
                older_than_days=days,
                dry_run=dry_run,
                lock=lambda thread: agent.thread_lock(thread, f"Thread {thread} is busy."),
            )

    report: PruneReport = _run(go())
    if as_json:
        _print_json(report.as_dict())
        return
    totals = report.totals()
    verb = "would prune" if report.dry_run else "pruned"
    out.print(
        f"{verb} {totals['threads']} thread(s) finished before {format_time(report.cutoff)}: "
        f"{totals['checkpoints']} checkpoints, {totals['writes']} writes, "
        f"{totals['blobs']} blobs"
    )
    for thread in report.pruned:
        out.print(f"  {verb} {thread.thread_id} ({thread.status})")
    for thread in report.kept:
        reason = escape(thread.kept_because or "")
        out.print(f"  kept {thread.thread_id} ({thread.status}): {reason}")


register_eval_commands(app)


def main() -> None:
    """Console-script entry point."""
    try:
        configure_logging()
    except ConfigError as exc:
        # Before typer runs, so `_fail`'s typer.Exit would not be turned into an exit code.
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    app()


if __name__ == "__main__":
    main()
