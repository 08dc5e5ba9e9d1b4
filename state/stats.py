"""Run statistics from Postgres, for `payables stats`.

Every figure counts what happened in the window (from ``now() - since`` to now, all time
without ``since``), each by its own clock:

- runs (by status and route, cost per task, containment, escalation reasons): runs whose
  row was created in the window (``runs.created_at``), in their current status as
  `payables threads` shows it (a run whose failure waits as an open dead letter is
  ``failed``, for the dead letter's reason);
- node latency: node executions that started in the window (``step_metrics``, written by
  the budget guard; a node paused for a reviewer and its re-run are two executions; a
  running process writes its rows in batches, within `state.step_metrics.FLUSH_DELAY_S`);
- tool calls: gated calls recorded in the audit chain in the window (``tool_call`` events;
  a call re-run after a crash or a resume that ended the same way is recorded once), of
  runs in the run index (the audit chain outlives a world replaced by `payables seed`,
  which forgets the old world's runs and their step rows);
- approval latency: reviewer decisions taken in the window, each measured from the
  approval request it answers (the latest ``approval_requested`` audit event of its
  thread, for its step, recorded before it).

Cost per task is the estimated model cost of a run's node executions (``step_metrics``),
whenever they ran, for runs that finished: ``successful`` is ``completed``; ``failed`` is
``escalated``, ``failed`` or ``refused``. Containment is the share of finished runs that
completed with no reviewer decision at all. Statistics only read; the audit chain in
particular is append-only.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from guards.redaction import redact_text
from runtime.errors import BadInput
from state.db import Database
from state.routes import FINISHED_STATUSES
from state.runs import SHOWN_STATUS
from state.step_metrics import flush_step_metrics

UNSUCCESSFUL = ("escalated", "failed", "refused")
"""Finished runs that did not complete; their reasons are counted."""

APPROVAL_FLOW_CODES = frozenset({"approval_required", "rejected"})
"""Gate refusals that are the approval process at work, not a tool failing.

An irreversible call is refused until approved (``approval_required``) and refused for
good when a reviewer rejects it (``rejected``); they are counted apart from errors.
"""

MAX_SINCE = timedelta(days=36500)
"""The longest window `parse_since` takes (as `payables prune` takes at most 36500 days)."""

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"\s*(\d{1,6})\s*([smhdw])\s*")


def parse_since(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d`` (units s, m, h, d, w), up to 100 years, as a duration.

    Raises `BadInput` for anything else.
    """
    match = _DURATION.fullmatch(text)
    if match is None or int(match.group(1)) == 0:
        raise BadInput(
            f"--since {text!r} is not a duration: give a whole number above zero and a unit, "
            "s, m, h, d or w (for example 30m, 24h or 7d)."
        )
    window = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if window > MAX_SINCE:
        # Six digits of days or weeks reach before year 1: Postgres or Python cannot hold it.
        raise BadInput(
            f"--since {text!r} is longer than 100 years ({MAX_SINCE.days} days); "
            "leave --since out for all time."
        )
    return window


_CODE = re.compile(r"\(([a-z][a-z0-9]*(?:_[a-z0-9]+)+)[:)]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def reason_kind(reason: str) -> str:
    """The kind of a run's end reason, so runs that ended alike count together.

    The guard's stops carry a code (``budget_exhausted``, ``loop_detected``,
    ``tenant_cost_cap``); other reasons are free text, grouped by their first sentence
    with numbers (ids, amounts, counts) blanked to ``#``.
    """
    text = " ".join(reason.split())
    if not text:
        return "(no reason recorded)"
    code = _CODE.search(text)
    if code is not None:
        return code.group(1)
    first = re.split(r"(?<=[.?!])\s", text, maxsplit=1)[0]
    first = _NUMBER.sub("#", first)
    return first if len(first) <= 100 else first[:99] + "…"


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentiles(values: list[float] | None, digits: int) -> dict[str, float | None]:
    p50, p95, p99 = values if values else (None, None, None)
    return {
        "p50": None if p50 is None else round(p50, digits),
        "p95": None if p95 is None else round(p95, digits),
        "p99": None if p99 is None else round(p99, digits),
    }


# The run index as `payables threads` shows it: a run still "running" whose failure waits as
# an open dead letter is failed, with the dead letter's step and message as its reason.
_OPEN_DEAD_LETTER = (
    "(SELECT 'Failed in ' || COALESCE(d.step, 'an unknown step') || ' (dead letter '"
    " || d.dead_letter_id || '): ' || d.message FROM dead_letters AS d"
    " WHERE d.thread_id = runs.thread_id AND d.status = 'open'"
    " ORDER BY d.dead_letter_id DESC LIMIT 1)"
)
_SHOWN_RUNS = (
    f"(SELECT thread_id, route, created_at, {SHOWN_STATUS} AS status,"
    f" CASE WHEN runs.status = 'running' THEN COALESCE({_OPEN_DEAD_LETTER}, runs.reason)"
    " ELSE runs.reason END AS reason FROM runs)"
)

_PERCENTILES = "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {})"
_IN_WINDOW = "(%(cutoff)s::timestamptz IS NULL OR {} >= %(cutoff)s::timestamptz)"


TOOL_CALLS_SQL = (
    "SELECT payload->>'tool' AS tool, (payload->>'ok')::boolean AS ok,"
    " payload->>'error_code' AS code, count(*) AS calls FROM audit_events"
    f" WHERE kind = 'tool_call' AND {_IN_WINDOW.format('created_at')}"
    # The audit chain outlives a reseeded world; the run index does not.
    " AND EXISTS (SELECT 1 FROM runs WHERE runs.thread_id = audit_events.thread_id)"
    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
"""Tool calls in the window by tool, outcome and error code, from the audit chain's rows
(index ``audit_events_tool_calls_created`` finds the window's)."""


async def run_stats(database: Database, *, since: timedelta | None = None) -> dict[str, Any]:
    """Every statistic of runs in the window ``since`` (all time when None) as JSON data.

    Step rows this process still holds (`state.step_metrics`) are written first, so its
    own steps count; other processes' reach the table within
    `state.step_metrics.FLUSH_DELAY_S`.
    """
    await flush_step_metrics(database)
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT now() AS until, now() - %(since)s::interval AS cutoff", {"since": since}
        )
        row = await cur.fetchone()
        assert row is not None
        until: datetime = row["until"]
        window = {"cutoff": row["cutoff"]}

        cur = await conn.execute(
            "SELECT status, COALESCE(route, '') AS route, count(*) AS runs"
            f" FROM {_SHOWN_RUNS} AS runs WHERE {_IN_WINDOW.format('created_at')}"
            " GROUP BY 1, 2 ORDER BY 1, 2",
            window,
        )
        by_status_route = [
            {"status": r["status"], "route": r["route"] or None, "runs": r["runs"]}
            for r in await cur.fetchall()
        ]

        cur = await conn.execute(
            "SELECT node, count(*) AS steps, count(*) FILTER (WHERE NOT ok) AS failed,"
            f" {_PERCENTILES.format('duration_ms')} AS ms FROM step_metrics"
            f" WHERE {_IN_WINDOW.format('started_at')} GROUP BY node ORDER BY node",
            window,
        )
        node_latency = {
            r["node"]: {"steps": r["steps"], "failed": r["failed"], **_percentiles(r["ms"], 1)}
            for r in await cur.fetchall()
        }

        cur = await conn.execute(
            f"WITH finished AS (SELECT thread_id, status FROM {_SHOWN_RUNS} AS runs"
            f"   WHERE status = ANY(%(finished)s) AND {_IN_WINDOW.format('created_at')}),"
            " cost AS (SELECT thread_id, sum(cost_usd) AS cost_usd FROM step_metrics"
            "   WHERE thread_id IN (SELECT thread_id FROM finished) GROUP BY thread_id)"
            " SELECT status = 'completed' AS successful, count(*) AS runs,"
            " COALESCE(sum(cost.cost_usd), 0) AS cost_usd"
            " FROM finished LEFT JOIN cost USING (thread_id) GROUP BY 1",
            {**window, "finished": list(FINISHED_STATUSES)},
        )
        costs = {True: (0, 0.0), False: (0, 0.0)}
        for r in await cur.fetchall():
            costs[bool(r["successful"])] = (r["runs"], float(r["cost_usd"]))

        cur = await conn.execute(TOOL_CALLS_SQL, window)
        tool_rows = await cur.fetchall()

        cur = await conn.execute(
            "WITH waits AS (SELECT EXTRACT(EPOCH FROM d.created_at - asked.created_at)"
            "   ::double precision AS seconds FROM approval_decisions AS d"
            " LEFT JOIN LATERAL (SELECT e.created_at FROM audit_events AS e"
            "   WHERE e.kind = 'approval_requested' AND e.thread_id = d.thread_id"
            "   AND e.created_at <= d.created_at AND e.payload->'actions'"
            "     @> jsonb_build_array(jsonb_build_object('step_id', d.step_id))"
            "   ORDER BY e.created_at DESC LIMIT 1) AS asked ON true"
            f" WHERE {_IN_WINDOW.format('d.created_at')})"
            " SELECT count(*) AS decisions, count(seconds) AS measured,"
            f" {_PERCENTILES.format('seconds')} AS seconds, max(seconds) AS longest"
            " FROM waits",
            window,
        )
        waits = await cur.fetchone()
        assert waits is not None

        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status = ANY(%(finished)s)) AS finished,"
            " count(*) FILTER (WHERE status = 'completed' AND NOT EXISTS"
            "   (SELECT 1 FROM approval_decisions AS d WHERE d.thread_id = r.thread_id))"
            f" AS contained FROM {_SHOWN_RUNS} AS r"
            f" WHERE {_IN_WINDOW.format('r.created_at')}",
            {**window, "finished": list(FINISHED_STATUSES)},
        )
        containment = await cur.fetchone()
        assert containment is not None

        cur = await conn.execute(
            f"SELECT status, reason FROM {_SHOWN_RUNS} AS runs WHERE status = ANY(%(unsuccessful)s)"
            f" AND {_IN_WINDOW.format('created_at')} ORDER BY created_at",
            {**window, "unsuccessful": list(UNSUCCESSFUL)},
        )
        ended = await cur.fetchall()

    return {
        "since": window["cutoff"],
        "until": until,
        "runs": _runs(by_status_route),
        "node_latency_ms": node_latency,
        "cost_per_task_usd": {
            "successful": _cost(*costs[True]),
            "failed": _cost(*costs[False]),
        },
        "tool_calls": _tool_calls(tool_rows),
        "approval_latency_s": {
            "decisions": waits["decisions"],
            "measured": waits["measured"],
            **_percentiles(waits["seconds"], 3),
            "max": None if waits["longest"] is None else round(waits["longest"], 3),
        },
        "containment": {
            "finished": containment["finished"],
            "completed_without_a_human": containment["contained"],
            "rate": _rate(containment["contained"], containment["finished"]),
        },
        "escalation_reasons": _end_reasons(ended),
    }


def _runs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: Counter[str] = Counter()
    by_route: Counter[str] = Counter()
    for r in rows:
        by_status[r["status"]] += r["runs"]
        by_route[r["route"] or "(not routed)"] += r["runs"]
    return {
        "total": sum(by_status.values()),
        "by_status": dict(sorted(by_status.items())),
        "by_route": dict(sorted(by_route.items())),
        "by_status_and_route": rows,
    }


def _cost(runs: int, total: float) -> dict[str, Any]:
    return {
        "runs": runs,
        "total_usd": round(total, 8),
        "per_task_usd": round(total / runs, 8) if runs else None,
    }


def _tool_calls(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    tools: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = tools.setdefault(
            r["tool"],
            {"calls": 0, "ok": 0, "errors": 0, "approval_flow": 0, "errors_by_code": {}},
        )
        entry["calls"] += r["calls"]
        if r["ok"]:
            entry["ok"] += r["calls"]
        elif r["code"] in APPROVAL_FLOW_CODES:
            entry["approval_flow"] += r["calls"]
        else:
            entry["errors"] += r["calls"]
            code = r["code"] or "(no code)"
            entry["errors_by_code"][code] = entry["errors_by_code"].get(code, 0) + r["calls"]
    for entry in tools.values():
        # Calls held for or refused by a reviewer are not the tool's failures.
        entry["error_rate"] = _rate(entry["errors"], entry["ok"] + entry["errors"])
    return tools


def _end_reasons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        # respond stores reasons redacted; redacting again costs little and keeps a row
        # written by anything else from printing an account number.
        reason = redact_text(r["reason"])
        kind = reason_kind(reason)
        group = groups.setdefault(
            (r["status"], kind),
            {"status": r["status"], "reason": kind, "runs": 0, "example": reason[:300]},
        )
        group["runs"] += 1
    return sorted(groups.values(), key=lambda g: (-g["runs"], g["status"], g["reason"]))
