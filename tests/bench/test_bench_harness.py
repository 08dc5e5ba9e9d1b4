"""The bench harness: its arithmetic, its world and planner, and a tiny end-to-end run.

No timing is asserted here: speed belongs in `make bench`, not in tests on a shared machine.
The smoke run checks that every figure the report promises is there and consistent.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import psycopg
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver

from bench import harness
from bench.bare_graph import recorded_updates
from bench.harness import (
    Bench,
    BenchConfig,
    Floor,
    Invoices,
    checkpoint_bytes,
    graph_path,
    growth_exponent,
    ratio,
    rotations,
    run_bench,
    stops_scaling_at,
    summary,
)
from bench.models import (
    LATENT_TOKENS,
    STEPS_PER_PHASE,
    LatentModels,
    ReadPlanModels,
    phase_of,
    read_plan_reply,
)
from bench.profile import profile_invoice_flow, write_html
from bench.report import format_report, write_json
from bench.world import BenchError, bench_world, clone_invoice_id, fresh_database
from nodes.respond import Summary
from runtime.agent import open_agent
from runtime.context import Context
from runtime.models import call_structured, tokens_of
from runtime.rules_model import RouteDecision
from state.db import Database


def test_summary_takes_the_median_and_the_p90() -> None:
    stats = summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats["median"] == 3.0
    assert stats["min"] == 1.0
    assert stats["max"] == 5.0
    assert stats["p90"] == 5.0
    assert stats["n"] == 5
    with pytest.raises(ValueError, match="no measurements"):
        summary([])


def test_ratio_refuses_a_zero_denominator() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None


def test_growth_exponent_tells_linear_from_quadratic() -> None:
    steps = [10, 28, 67]
    linear = growth_exponent([(s, 900.0 * s) for s in steps])
    quadratic = growth_exponent([(s, 40.0 * s * s) for s in steps])
    assert linear is not None and math.isclose(linear, 1.0)
    assert quadratic is not None and math.isclose(quadratic, 2.0)
    assert growth_exponent([(10, 100.0)]) is None


def test_scaling_stops_at_the_first_level_that_adds_under_ten_percent() -> None:
    levels = [
        {"concurrency": 1, "runs_per_s": 10.0},
        {"concurrency": 4, "runs_per_s": 30.0},
        {"concurrency": 16, "runs_per_s": 32.0},
        {"concurrency": 64, "runs_per_s": 20.0},
    ]
    assert stops_scaling_at(levels) == 16
    assert stops_scaling_at(levels[:2]) is None


def test_rotations_put_each_kind_first_in_turn() -> None:
    assert list(rotations(4, 3)) == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_bench_world_adds_clean_clones_with_their_own_ids() -> None:
    world = bench_world(3)
    clones = [i for i in world.invoices if i.invoice_id.startswith("INV-7")]
    assert [i.invoice_id for i in clones] == [clone_invoice_id(n) for n in range(3)]
    assert len({i.invoice_number for i in clones}) == 3
    assert len({i.po_number for i in clones}) == 3
    po_numbers = {p.po_number for p in world.purchase_orders}
    receipts = {r.po_number for r in world.goods_receipts}
    for invoice in clones:
        assert invoice.po_number in po_numbers
        assert invoice.po_number in receipts
        assert invoice.invoice_number in invoice.document_text


def test_read_planner_splits_a_plan_into_phases() -> None:
    steps = 2 * STEPS_PER_PHASE + 3
    first = read_plan_reply(steps, 1).tool_calls[0]["args"]
    last = read_plan_reply(steps, 3).tool_calls[0]["args"]
    assert len(first["steps"]) == STEPS_PER_PHASE
    assert first["final"] is False
    assert len(last["steps"]) == 3
    assert last["final"] is True
    read = [s["args"]["invoice_id"] for s in first["steps"]]
    assert len(set(read)) == len(read)


def test_read_planner_reads_the_phase_from_the_prompt() -> None:
    messages = [SystemMessage("plan"), HumanMessage("Request: x\nPhase: 2\nResults so far:")]
    assert phase_of(messages) == 2
    with pytest.raises(ValueError, match="no phase"):
        phase_of([HumanMessage("no phase here")])
    models = ReadPlanModels(5)
    assert models.chat("router", Context()) is None
    served = models.chat("planner", Context())
    assert served is not None and served[0] == "bench-read-planner-5"


async def test_latent_models_are_openai_clients_answered_in_process_after_the_latency() -> None:
    models = LatentModels(0.05)
    assert models.chat("planner", Context()) is None  # the rules model plans
    routed = models.chat("router", Context())
    summarised = models.chat("respond", Context())
    assert routed is not None and routed[0] == "bench-latent-router"
    assert summarised is not None and summarised[0] == "bench-latent-respond"
    assert isinstance(routed[1], ChatOpenAI)
    loop = asyncio.get_running_loop()
    started = loop.time()
    route, summary = await asyncio.gather(
        call_structured(
            routed[1], RouteDecision, [SystemMessage("route"), HumanMessage("Validate INV-1002")]
        ),
        call_structured(
            summarised[1], Summary, [HumanMessage(json.dumps({"status": "escalated"}))]
        ),
    )
    assert loop.time() - started >= 0.05  # the replies came after the latency
    assert models.server.requests == 2
    assert isinstance(route.parsed, RouteDecision)
    assert route.parsed.invoice_ids == ["INV-1002"]
    assert isinstance(summary.parsed, Summary)
    assert summary.parsed.summary == "The run ended escalated."
    assert tokens_of(route.raw) == LATENT_TOKENS


def test_recorded_updates_are_the_steps_writes_without_input_or_routing() -> None:
    writes = [
        ("c0", "__start__", "request", "Validate INV-1"),
        ("c0", "__start__", "branch:to:router", None),
        ("c1", "router", "route", "invoice_processing"),
        ("c1", "router", "branch:to:executor", None),
        ("c2", "executor", "cursor", 1),
        ("c3", "executor", "cursor", 2),
    ]
    path = ("router", "executor", "executor")

    assert recorded_updates(writes, path) == (
        {"route": "invoice_processing"},
        {"cursor": 1},
        {"cursor": 2},
    )
    with pytest.raises(ValueError, match="not the path"):
        recorded_updates(writes, ("router", "executor"))


@pytest.mark.integration
async def test_the_state_replay_ends_in_the_agents_state(server_uri: str) -> None:
    config = BenchConfig.quick()
    async with fresh_database(config.clones, server_uri) as uri:
        database = Database(uri, max_size=config.pool_size)
        floor = await Floor.open(uri)
        try:
            async with open_agent(database=database) as agent:
                bench = Bench(agent, database, floor, config, Invoices(config), log=lambda _: None)
                view = await bench.validate()
                path = await graph_path(agent, view["thread_id"])
                replayed = await bench.replay_run(
                    await bench.recorded_updates(view["thread_id"], path)
                )
                agent_state = await agent.graph.aget_state(agent.config(view["thread_id"]))
                replay_state = await bench.replay.aget_state(
                    {"configurable": {"thread_id": replayed}}
                )
                replay_history = [
                    h
                    async for h in bench.replay.aget_state_history(
                        {"configurable": {"thread_id": replayed}}
                    )
                ]
        finally:
            await floor.close()

    def own(values: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in values.items() if k not in ("request", "position")}

    assert agent_state.values["outcomes"]  # the run called tools: there is state to replay
    assert own(replay_state.values) == own(agent_state.values)
    assert len(replay_history) == len(path) + 2  # the input, one per step, the end


@pytest.mark.integration
async def test_quick_bench_produces_every_figure(server_uri: str, tmp_path: Path) -> None:
    config = BenchConfig.quick()
    report = await run_bench(config, log=lambda _: None, server=server_uri)

    for flow in ("invoice_flow", "approval_flow"):
        figures = report[flow]
        assert figures["steps"] == len(figures["path"]) > 0
        for key in ("agent_ms", "bare_ms", "floor_ms"):
            assert figures[key]["n"] == (
                config.reps if flow == "invoice_flow" else config.approval_reps
            )
            assert figures[key]["median"] > 0
        assert figures["ratio_agent_bare"] > 0
        assert figures["ratio_agent_floor"] > 0
        assert figures["checkpoint_bytes_per_run"] > 0
        assert figures["checkpoint_bytes_per_step"] > 0
    invoice = report["invoice_flow"]
    assert invoice["agent_cpu_ms"] > 0
    assert invoice["bare_cpu_ms"] > 0
    assert invoice["state_replay_cpu_ms"] > 0
    assert invoice["state_replay_ms"]["n"] == config.reps
    assert invoice["state_replay_ms"]["median"] > 0
    assert invoice["with_models_ms"]["n"] == config.reps
    assert invoice["with_models_cpu_ms"] > 0
    assert report["throughput"]["cpu_ceiling_runs_per_s"] > 0
    assert "approval" in report["approval_flow"]["path"]
    assert "approval" not in report["invoice_flow"]["path"]
    assert report["resume_latency"]["agent_ms"]["median"] > 0

    growth = report["checkpoint_growth"]
    assert [r["plan_steps"] for r in growth["runs"]] == list(config.growth_steps)
    graph_steps = [r["graph_steps"] for r in growth["runs"]]
    assert graph_steps == sorted(graph_steps) and len(set(graph_steps)) == len(graph_steps)
    assert growth["growth_exponent"] is not None

    levels = report["throughput"]["levels"]
    assert [level["concurrency"] for level in levels] == list(config.concurrency)
    assert all(level["runs"] > 0 and level["runs_per_s"] > 0 for level in levels)
    assert all(level["bare_runs_per_s"] > 0 for level in levels)
    assert levels[0]["speedup"] == levels[0]["bare_speedup"] == 1.0
    assert all(level["cpu_ms_per_run"] > 0 for level in levels)
    assert all(0 <= level["machine_cpu_busy"] <= 1 for level in levels)  # Linux /proc/stat

    waiting = report["model_latency_throughput"]
    assert waiting["model_latency_s"] == config.model_latency_s
    assert [level["concurrency"] for level in waiting["levels"]] == list(config.concurrency)
    assert all(level["runs"] > 0 and level["cpu_ms_per_run"] > 0 for level in waiting["levels"])
    assert waiting["levels"][0]["speedup"] == 1.0

    processes = report["processes"]
    assert [level["processes"] for level in processes["levels"]] == list(config.processes)
    assert all(level["runs"] > 0 and level["cpu_ms_per_run"] > 0 for level in processes["levels"])
    assert processes["levels"][0]["speedup"] == 1.0

    memory = report["memory"]
    assert memory["runs"] == config.memory_runs
    assert len(memory["samples"]) == config.memory_samples
    assert memory["peak_rss_mb"] >= memory["rss_mb_after"] > 0
    assert memory["growth_kb_per_run"] is not None

    audit = report["audit_verify"]  # verify found everything intact, or the bench raised
    assert audit["events"] > audit["ledger_rows"] > 0 and audit["ms"] > 0

    assert [t["target"] for t in report["targets"]] == [
        "agent / bare LangGraph <= 1.5x (invoice flow)",
        "checkpoint bytes per step bounded by a constant (5 -> 50 steps)",
        "throughput with 16 concurrent runs >= 3x one",
        "the same, runs waiting on a model (20 ms per call)",
        "no memory growth per run (< 1 KiB/run after warm-up)",
    ]
    table = format_report(report)
    for heading in (
        "process CPU",
        "CPU ceiling",
        "the same levels, nodes doing nothing",
        "Invoice flow",
        "Approval flow",
        "Checkpoint growth",
        "Throughput",
        "Throughput with model latency",
        "Processes",
        "Memory",
        "Audit verify",
        "Targets",
        "agent / bare",
        "agent / floor",
        "bare + agent's state",
        "agent - bare",
        "agent, models serving",
        "CPU per model call",
        "resume latency",
    ):
        assert heading in table
    written = write_json(report, tmp_path / "bench.json")
    assert (
        json.loads(written.read_text())["invoice_flow"]["steps"] == report["invoice_flow"]["steps"]
    )

    # The bench's database is dropped afterwards: nothing of this process is left.
    with psycopg.connect(server_uri, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"payables_bench_{os.getpid()}_%",),
        ).fetchall()
    assert left == []


async def test_an_unreachable_server_is_named_with_what_to_do(tmp_path: Path) -> None:
    server = f"host={tmp_path} dbname=nowhere"
    with pytest.raises(BenchError, match=r"cannot reach Postgres.*unset it"):
        await run_bench(BenchConfig.quick(), log=lambda _: None, server=server)


@pytest.mark.integration
async def test_the_profile_shows_the_agents_own_frames(server_uri: str, tmp_path: Path) -> None:
    tree, page = await profile_invoice_flow(2, log=lambda _: None, server=server_uri)
    assert tree.startswith("2 invoice-flow runs:") and "ms CPU per run" in tree
    assert "guarded" in tree and "runtime/budgets.py" in tree  # the guard wraps every node
    written = write_html(page, tmp_path / "profile.html")
    assert "pyinstrument" in written.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="at least one run"):
        await profile_invoice_flow(0, log=lambda _: None, server=server_uri)


def _bare_only_bench() -> Bench:
    """A `Bench` whose bare graph runs on an in-memory saver (no agent, no database)."""
    agent = SimpleNamespace(graph=SimpleNamespace(checkpointer=InMemorySaver()))
    config = BenchConfig.quick()
    return Bench(cast(Any, agent), cast(Any, None), cast(Any, None), config, Invoices(config))


async def test_a_bare_run_measures_the_run_alone() -> None:
    # Its wall time, the CPU the bench takes around it and the throughput leg's runs must
    # cover the same work: the run, not a state read after it (the agent's run makes none).
    bench = _bare_only_bench()

    async def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bare run read its state back after running")

    bench.bare.aget_state = no_read
    path = ("router", "planner", "executor", "approval", "executor", "verifier", "respond")
    first, resumed = await bench.bare_run(path, resumes=1)
    assert first > 0 and resumed > 0
    await bench.bare_run(("router", "planner", "executor", "verifier", "respond"))


async def test_a_bare_run_that_stops_early_is_refused() -> None:
    bench = _bare_only_bench()
    with pytest.raises(RuntimeError, match="stopped early"):
        await bench.bare_run(("router", "approval", "respond"))  # no resume: stops at approval


class CountingFloor(Floor):
    """The floor, remembering what it was asked to commit."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.commits: list[tuple[int, int]] = []

    async def commit_rows(self, rows: int, row_bytes: int) -> float:
        self.commits.append((rows, row_bytes))
        return await super().commit_rows(rows, row_bytes)


async def _checkpoints_of_runs(database: Database, request: str) -> set[tuple[int, int]]:
    """(checkpoint rows, bytes) of every agent run whose request starts with ``request``."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT thread_id FROM runs WHERE request LIKE %s", (request + " %",)
        )
        threads = [row["thread_id"] for row in await cur.fetchall()]
    assert threads
    found = set()
    for thread in threads:
        sizes = await checkpoint_bytes(database, thread)
        found.add((sizes["checkpoints_count"], sizes["total"]))
    return found


@pytest.mark.integration
async def test_the_floor_commits_a_row_per_checkpoint_the_agent_wrote(server_uri: str) -> None:
    # The floor is "the same number of checkpoint-sized rows": a run writes a checkpoint
    # for its input and one after each step, more rows than it has graph steps.
    config = replace(BenchConfig.quick(), reps=1, approval_reps=1)
    async with fresh_database(config.clones, server_uri) as uri:
        database = Database(uri, max_size=config.pool_size)
        floor = await CountingFloor.open(uri)
        try:
            async with open_agent(database=database) as agent:
                bench = Bench(agent, database, floor, config, Invoices(config), log=lambda _: None)
                for flow, request in (
                    (bench.invoice_flow, "Validate"),
                    (bench.approval_flow, "Pay"),
                ):
                    figures = await flow()
                    runs = await _checkpoints_of_runs(database, request)
                    checkpoints = {count for count, _ in runs}
                    assert len(checkpoints) == 1  # every run of the flow took the same path
                    [count] = checkpoints
                    assert count > figures["steps"]
                    assert floor.commits
                    for rows, row_bytes in floor.commits:
                        assert rows == count
                        assert any(0 <= total - rows * row_bytes < rows for _, total in runs)
                    floor.commits.clear()
        finally:
            await floor.close()


FAKE_WORKER = """
import json, pathlib, sys
marks = pathlib.Path(sys.argv[1])
(marks / "ready").touch()  # imports, pool, warm-up done
print("ready", flush=True)
sys.stdin.readline()
(marks / "done").touch()  # the timed runs done
print(json.dumps({"runs": 4, "seconds": 1.0, "cpu_s": 0.5}), flush=True)
"""


async def test_the_process_legs_machine_load_covers_the_timed_runs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker spends seconds of CPU importing and warming up before it says ready; the
    # machine's busy share must be read from the go to the figures, not over the start.
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(harness, "WORKER_COMMAND", (str(script),))
    readings: list[tuple[bool, bool]] = []

    def cpu_times() -> tuple[float, float]:
        readings.append(((tmp_path / "ready").exists(), (tmp_path / "done").exists()))
        return float(len(readings)), 2.0 * len(readings)

    monkeypatch.setattr(harness, "cpu_times", cpu_times)
    config = replace(BenchConfig.quick(), processes=(1,))
    bench = SimpleNamespace(
        config=config, database=SimpleNamespace(uri=str(tmp_path)), log=lambda _: None
    )
    figures = await Bench.processes(cast(Any, bench))

    [level] = figures["levels"]
    assert level["runs"] == 4 and level["runs_per_s"] == 4.0
    assert level["machine_cpu_busy"] == 0.5
    assert readings == [(True, False), (True, True)]
