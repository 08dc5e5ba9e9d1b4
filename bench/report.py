"""The bench's report: a plain-text table for people, the full figures as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.settings import PROJECT_ROOT

DEFAULT_JSON = PROJECT_ROOT / "reports" / "bench" / "bench.json"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1024 * 1024:
        return f"{value / 1024 / 1024:.2f} MiB"
    if value >= 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value:.0f} B"


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in rows)
    return [f"  {label.ljust(width)}  {value}" for label, value in rows]


def _level(level: dict[str, Any]) -> str:
    """One throughput level: runs per second, gain over one run, CPU and load."""
    busy = level["machine_cpu_busy"]
    return (
        f"{level['runs_per_s']:.2f} runs/s  ({_x(level['speedup'])}, {level['runs']} runs; "
        f"{_ms(level['cpu_ms_per_run'])} CPU/run, process {level['process_cpu_share']:.0%} of "
        f"a core, machine {'-' if busy is None else f'{busy:.0%}'} busy)"
    )


def _stops_scaling(figures: dict[str, Any]) -> tuple[str, str]:
    """The row saying at which concurrency a throughput leg stopped scaling."""
    level = figures["stops_scaling_at"]
    found = "did not stop within the levels measured" if level is None else f"{level} concurrent"
    return ("stops scaling at", found)


def format_report(report: dict[str, Any]) -> str:
    """The figures as a table, with the ratios and the targets."""
    machine = report["machine"]
    invoice = report["invoice_flow"]
    approval = report["approval_flow"]
    growth = report["checkpoint_growth"]
    throughput = report["throughput"]
    waiting = report["model_latency_throughput"]
    processes = report["processes"]
    memory = report["memory"]
    audit = report["audit_verify"]
    lines = [
        f"payables bench, {report['started_at']} ({report['duration_s']:.0f} s)",
        f"  {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, "
        f"{machine['os']}, Python {machine['python']}, PostgreSQL {machine.get('postgres')}, "
        f"langgraph {machine['packages'].get('langgraph')}; load average "
        f"{machine['load_average_1m']:.2f} -> {machine['load_average_1m_after']:.2f}",
        f"  medians; durability: new requests {report['durability']['start']!r}, resumed "
        f"{report['durability']['resume']!r} (agent and bare alike); pool "
        f"{throughput['pool_size']}",
        "",
        f"Invoice flow ({invoice['request']}, {invoice['steps']} steps, "
        f"n={invoice['agent_ms']['n']})",
        *_rows(
            [
                (
                    "agent",
                    f"{_ms(invoice['agent_ms']['median'])}/run  "
                    f"{_ms(invoice['agent_ms_per_step'])}/step  "
                    f"(p90 {_ms(invoice['agent_ms']['p90'])})",
                ),
                (
                    "bare LangGraph",
                    f"{_ms(invoice['bare_ms']['median'])}/run  "
                    f"{_ms(invoice['bare_ms_per_step'])}/step",
                ),
                (
                    "floor (psycopg)",
                    f"{_ms(invoice['floor_ms']['median'])}/run  "
                    f"{_ms(invoice['floor_ms_per_step'])}/step",
                ),
                (
                    "bare + agent's state",
                    f"{_ms(invoice['state_replay_ms']['median'])}/run  (bare nodes writing the"
                    " agent's recorded state)",
                ),
                ("agent / bare", _x(invoice["ratio_agent_bare"])),
                ("agent / floor", _x(invoice["ratio_agent_floor"])),
                (
                    "agent - bare",
                    f"{_ms(invoice['state_ms'] + invoice['nodes_ms'])}/run: its state "
                    f"{_ms(invoice['state_ms'])}, its nodes {_ms(invoice['nodes_ms'])}",
                ),
                (
                    "process CPU",
                    f"agent {_ms(invoice['agent_cpu_ms'])}/run, bare "
                    f"{_ms(invoice['bare_cpu_ms'])}/run, bare + agent's state "
                    f"{_ms(invoice['state_replay_cpu_ms'])}/run",
                ),
                (
                    "agent, models serving",
                    f"{_ms(invoice['with_models_ms']['median'])}/run, CPU "
                    f"{_ms(invoice['with_models_cpu_ms'])}/run (router and respond by "
                    "ChatOpenAI, answered at once in process): "
                    f"{_ms(invoice['cpu_ms_per_model_call'])} CPU per model call",
                ),
                (
                    "checkpoint bytes",
                    f"{_bytes(invoice['checkpoint_bytes_per_run'])}/run  "
                    f"{_bytes(invoice['checkpoint_bytes_per_step'])}/step  "
                    f"(bare {_bytes(invoice['bare_checkpoint_bytes_per_run'])}/run)",
                ),
            ]
        ),
        "",
        f"Approval flow ({approval['request']}, {approval['steps']} steps, "
        f"n={approval['agent_ms']['n']})",
        *_rows(
            [
                (
                    "agent",
                    f"{_ms(approval['agent_ms']['median'])}/run  "
                    f"{_ms(approval['agent_ms_per_step'])}/step  (to interrupt "
                    f"{_ms(approval['agent_start_ms']['median'])}, resume "
                    f"{_ms(approval['agent_resume_ms']['median'])})",
                ),
                (
                    "bare LangGraph",
                    f"{_ms(approval['bare_ms']['median'])}/run  "
                    f"{_ms(approval['bare_ms_per_step'])}/step  (resume "
                    f"{_ms(approval['bare_resume_ms']['median'])})",
                ),
                ("floor (psycopg)", f"{_ms(approval['floor_ms']['median'])}/run"),
                ("agent / bare", _x(approval["ratio_agent_bare"])),
                ("agent / floor", _x(approval["ratio_agent_floor"])),
                (
                    "resume latency",
                    f"{_ms(approval['agent_resume_ms']['median'])} "
                    f"(bare {_ms(approval['bare_resume_ms']['median'])}, "
                    f"{_x(approval['resume_ratio_agent_bare'])})",
                ),
                (
                    "checkpoint bytes",
                    f"{_bytes(approval['checkpoint_bytes_per_run'])}/run  "
                    f"{_bytes(approval['checkpoint_bytes_per_step'])}/step",
                ),
            ]
        ),
        "",
        "Checkpoint growth (instant scripted planner, get_invoice reads)",
        *_rows(
            [
                (
                    f"{p['plan_steps']} plan steps",
                    f"{p['graph_steps']} graph steps  {_bytes(p['checkpoint_bytes'])}/run  "
                    f"{_bytes(p['bytes_per_step'])}/step  {_ms(p['ms_per_step'])}/step",
                )
                for p in growth["runs"]
            ]
            + [
                (
                    "growth exponent",
                    f"{growth['growth_exponent']:.2f} (1 linear, 2 quadratic): "
                    + ("linear" if growth["linear"] else "NOT linear"),
                )
            ]
        ),
        "",
        "Throughput (invoice flow, concurrent runs on one event loop, one pool)",
        *_rows(
            [
                (f"{level['concurrency']} concurrent", _level(level))
                for level in throughput["levels"]
            ]
            + [
                (
                    "bare LangGraph",
                    " / ".join(f"{level['bare_runs_per_s']:.2f}" for level in throughput["levels"])
                    + " runs/s  ("
                    + " / ".join(_x(level["bare_speedup"]) for level in throughput["levels"])
                    + "; the same levels, nodes doing nothing)",
                ),
                (
                    "CPU ceiling",
                    "-"
                    if throughput["cpu_ceiling_runs_per_s"] is None
                    else f"{throughput['cpu_ceiling_runs_per_s']:.1f} runs/s (one core at the "
                    "agent's CPU per run)",
                ),
                _stops_scaling(throughput),
            ]
        ),
        "",
        f"Throughput with model latency (invoice flow; router and respond models answer in "
        f"{waiting['model_latency_s'] * 1000:.0f} ms, {waiting['model_calls_per_run']} calls "
        "per run)",
        *_rows(
            [(f"{level['concurrency']} concurrent", _level(level)) for level in waiting["levels"]]
            + [
                _stops_scaling(waiting),
            ]
        ),
        "",
        f"Processes (invoice flow, {processes['concurrency_per_process']} in flight per process,"
        " each its own pool)",
        *_rows(
            [
                (
                    f"{level['processes']} process" + ("es" if level["processes"] > 1 else ""),
                    f"{level['runs_per_s']:.2f} runs/s  ({_x(level['speedup'])}, "
                    f"{level['runs']} runs; {_ms(level['cpu_ms_per_run'])} CPU/run, machine "
                    + (
                        "-"
                        if level["machine_cpu_busy"] is None
                        else f"{level['machine_cpu_busy']:.0%}"
                    )
                    + " busy)",
                )
                for level in processes["levels"]
            ]
        ),
        "",
        f"Memory ({memory['runs']} invoice runs, {memory['concurrency']} concurrent)",
        *_rows(
            [
                (
                    "resident set",
                    f"{memory['rss_mb_before']:.0f} MiB before -> "
                    f"{memory['rss_mb_after']:.0f} MiB after; peak {memory['peak_rss_mb']:.0f} MiB",
                ),
                (
                    "growth per run",
                    "-"
                    if memory["growth_kb_per_run"] is None
                    else f"{memory['growth_kb_per_run']:.2f} KiB/run (after the first sample)",
                ),
            ]
        ),
        "",
        "Audit verify (everything the runs above wrote; process CPU)",
        *_rows(
            [
                (
                    "payables audit verify",
                    f"{audit['events']} audit rows, {audit['ledger_rows']} ledger rows, "
                    f"{audit['invoices']} invoices: {audit['ms'] / 1000:.2f} s "
                    f"(CPU {audit['cpu_ms'] / 1000:.2f} s), "
                    + (
                        "-"
                        if audit["us_per_event"] is None
                        else f"{audit['us_per_event']:.0f} us per audit row"
                    ),
                ),
            ]
        ),
        "",
        "Targets",
        *_rows(
            [
                (
                    ("met     " if t["met"] else "NOT met ") + t["target"],
                    "-" if t["value"] is None else f"{t['value']:.2f}",
                )
                for t in report["targets"]
            ]
        ),
    ]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path = DEFAULT_JSON) -> Path:
    """Write the report as JSON to ``path`` (directories created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return path
