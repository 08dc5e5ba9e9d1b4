"""The measurements: each a median of repeated runs, comparisons taken side by side.

One process, one event loop, one private database (`bench.world.fresh_database`). For the
invoice flow (``Validate INV-…``: a clean match, staged, no approval) and the approval flow
(``Pay INV-…``: run to the approval interrupt, then resume with an approval) every
repetition runs the agent, the bare graph on the same path (`bench.bare_graph`) and the
floor (plain psycopg commits, a row per checkpoint of the agent's run, the same bytes) one
after the other, in rotating order, so the machine's load at that moment weighs on all of
them alike.

Figures:

- wall time per run and per graph step, agent and bare; ratios agent/bare, agent/floor;
- for the invoice flow, the state replay (`bench.bare_graph.build_state_replay_graph`): the
  bare graph writing the agent's recorded state, which splits agent - bare into the cost of
  the agent's state and the cost of its nodes;
- for the invoice flow, the agent with router and respond served by models that answer at
  once (`bench.models.LatentModels`: real `ChatOpenAI` clients answered in process): the
  CPU a model call costs the agent, client included;
- checkpoint bytes per run and per step (checkpoint rows, channel blobs, pending writes);
- checkpoint growth for runs of 5, 20 and 50 planned steps (`bench.models.ReadPlanner`):
  bytes per step at each length and the growth exponent (1 = linear, 2 = quadratic);
- throughput: completed invoice runs per second with 1, 4, 16, 64 concurrent runs (threads,
  in LangGraph's sense) on one event loop sharing one pool, and where it stops scaling;
- the same with 1 and 2 worker processes (`bench.worker`), each with its own pool;
- the same levels with runs that wait on a model (`bench.models.LatentModels`: router and
  respond answer after a fixed latency, as a hosted model does): how far one process
  overlaps runs when most of a run is waiting;
- resume latency: `Agent.resume` from the call to the completion it runs to;
- memory: the process's resident set over a long series of runs, and its growth per run.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import psycopg
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command

from bench.bare_graph import (
    BareContext,
    build_bare_graph,
    build_state_replay_graph,
    recorded_updates,
)
from bench.models import LATENT_ROLES, LatentModels, ReadPlanModels
from bench.world import clone_invoice_id, fresh_database
from graphs.payables import build_graph
from nodes.deps import NodeDeps
from runtime.agent import AFTER_APPROVAL_DURABILITY, START_DURABILITY, Agent, open_agent
from runtime.context import Context
from runtime.settings import PROJECT_ROOT
from state.audit import verify_chain
from state.db import CONNECTION_KWARGS, Database

DURABILITY = {"start": START_DURABILITY, "resume": AFTER_APPROVAL_DURABILITY}
"""What `runtime.agent.Agent` runs each leg with; the bare graph runs its legs the same."""

APPROVE = {"decisions": [{"type": "approve"}], "reviewer": {"id": "bench-rev", "role": "approver"}}
"""The reviewer's answer in the approval flow (one action, no special role needed)."""

CLERK = "bench-clerk"


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure; the defaults fit `make bench` into a few minutes on 2 cores."""

    reps: int = 15
    """Repetitions of each side-by-side comparison (the medians' sample size)."""
    warmup: int = 3
    """Runs of each kind made first and not counted (caches, pool, JIT-free Python paths)."""
    approval_reps: int = 10
    growth_steps: tuple[int, ...] = (5, 20, 50)
    growth_reps: int = 3
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    throughput_seconds: float = 8.0
    """How long each concurrency level keeps starting runs."""
    processes: tuple[int, ...] = (1, 2)
    """Worker processes in the multi-process leg (one per core scales a CPU-bound run)."""
    process_concurrency: int = 8
    """Runs in flight in each worker process (one process is at its CPU ceiling by then)."""
    model_latency_s: float = 0.25
    """How long each model call takes in the model-latency throughput leg. Hosted models
    take 0.5 to several seconds for a structured reply; a shorter wait leaves less to
    overlap, so this is the harder case for scaling, and keeps the leg short."""
    memory_runs: int = 1000
    memory_concurrency: int = 16
    memory_samples: int = 10
    pool_size: int = 32
    """The agent's connection pool (`PAYABLES_POOL_MAX_SIZE` in production): two per run at
    16 concurrent runs, since a run's step and its checkpoint write overlap. With 20, runs
    queue for connections at 16 and the waiting costs CPU (42 against 33 ms per run)."""
    validate_invoices: int = 100
    """Bench invoices the validation runs cycle through (re-validating is the same path)."""

    @property
    def approval_invoices(self) -> int:
        """Invoices the approval flow pays, one each (an invoice is paid once)."""
        return self.warmup + self.approval_reps

    @property
    def clones(self) -> int:
        """Bench invoices the world needs."""
        return max(self.validate_invoices + self.approval_invoices, max(self.growth_steps))

    @classmethod
    def quick(cls) -> BenchConfig:
        """Tiny counts: every figure, in seconds (the smoke test, `--quick`)."""
        return cls(
            reps=2,
            warmup=1,
            approval_reps=2,
            growth_steps=(2, 4, 8),
            growth_reps=1,
            concurrency=(1, 2, 4),
            throughput_seconds=0.5,
            process_concurrency=2,
            model_latency_s=0.02,
            memory_runs=12,
            memory_concurrency=4,
            memory_samples=3,
            pool_size=6,
            validate_invoices=8,
        )


# --- statistics ---------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median, p90, min and max of ``values`` (milliseconds or bytes), and how many."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no measurements to summarise")
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median": statistics.median(ordered),
        "p90": p90,
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is zero."""
    return numerator / denominator if denominator else None


def growth_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(bytes) on log(steps): 1 is linear, 2 quadratic."""
    import math

    usable = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(usable) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in usable)
    mean_y = statistics.fmean(y for _, y in usable)
    spread = sum((x - mean_x) ** 2 for x, _ in usable)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in usable) / spread


def stops_scaling_at(levels: Sequence[dict[str, Any]], gain: float = 1.1) -> int | None:
    """The first concurrency level that adds less than ``gain``× over the one before it."""
    for before, level in itertools.pairwise(levels):
        if level["runs_per_s"] < gain * before["runs_per_s"]:
            return int(level["concurrency"])
    return None


def add_speedups(levels: Sequence[dict[str, Any]], rate: str, speedup: str) -> None:
    """Set each level's ``speedup``: its ``rate`` over the first level's."""
    base = levels[0][rate]
    for level in levels:
        level[speedup] = ratio(level[rate], base)


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """Milliseconds ``call`` took, and what it returned."""
    started = time.perf_counter()
    result = await call()
    return (time.perf_counter() - started) * 1000, result


def rotations(count: int, kinds: int) -> Iterator[list[int]]:
    """Orders of ``kinds`` measurements per repetition, rotating so none is always first."""
    for rep in range(count):
        yield [(rep + k) % kinds for k in range(kinds)]


# --- the process --------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident set of the process now, in MiB (Linux /proc; else the peak)."""
    return _proc_status("VmRSS") or peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set of the process, in MiB."""
    from_proc = _proc_status("VmHWM")
    if from_proc:
        return from_proc
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all the machine's cores (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [float(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """Share of all cores busy between two `cpu_times` readings (any process)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def machine() -> dict[str, Any]:
    """Where the figures came from: CPU, cores, memory, OS, Python, library versions, load."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    memory_gb = None
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            kb = next(int(line.split()[1]) for line in info if line.startswith("MemTotal:"))
            memory_gb = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    versions: dict[str, str | None] = {}
    for package in (
        "langgraph",
        "langgraph-checkpoint",
        "langgraph-checkpoint-postgres",
        "psycopg",
        "psycopg-pool",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


# --- the database -------------------------------------------------------------------------


CHECKPOINT_BYTES_SQL = """
SELECT
  (SELECT coalesce(sum(octet_length(checkpoint::text) + octet_length(metadata::text)), 0)
     FROM checkpoints WHERE thread_id = %(t)s) AS checkpoints,
  (SELECT coalesce(sum(octet_length(blob)), 0)
     FROM checkpoint_blobs WHERE thread_id = %(t)s) AS blobs,
  (SELECT coalesce(sum(octet_length(blob)), 0)
     FROM checkpoint_writes WHERE thread_id = %(t)s) AS writes,
  (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) AS count
"""


async def checkpoint_bytes(database: Database, thread_id: str) -> dict[str, int]:
    """Bytes a thread's checkpoints hold: rows, channel blobs and pending writes."""
    async with database.connection() as conn:
        cur = await conn.execute(CHECKPOINT_BYTES_SQL, {"t": thread_id})
        row = await cur.fetchone()
    assert row is not None
    parts = {k: int(row[k]) for k in ("checkpoints", "blobs", "writes")}
    return {**parts, "total": sum(parts.values()), "checkpoints_count": int(row["count"])}


def floor_rows(sizes: dict[str, int]) -> tuple[int, int]:
    """(rows, bytes per row) for the floor of a run `checkpoint_bytes` measured as ``sizes``.

    One row per checkpoint the run wrote (its input's, then one after each graph step:
    more than its steps), together as many bytes as its checkpoints, blobs and writes.
    """
    rows = max(sizes["checkpoints_count"], 1)
    return rows, sizes["total"] // rows


class Floor:
    """Plain psycopg on the same Postgres: commit N rows of B bytes, one commit each.

    The payload is random bytes, so Postgres cannot compress it (checkpoint JSON and
    msgpack compress a little): a conservative floor.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Use ``conn`` (autocommit), which the caller owns."""
        self.conn = conn

    @classmethod
    async def open(cls, uri: str) -> Floor:
        """Connect and create the floor's table."""
        conn = await psycopg.AsyncConnection.connect(uri, **CONNECTION_KWARGS)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor (id BIGSERIAL PRIMARY KEY,"
            " thread_id TEXT NOT NULL, payload BYTEA NOT NULL)"
        )
        return cls(conn)

    async def commit_rows(self, rows: int, row_bytes: int) -> float:
        """Milliseconds to insert and commit ``rows`` rows of ``row_bytes`` each."""
        thread_id = uuid.uuid4().hex
        payloads = [os.urandom(max(row_bytes, 1)) for _ in range(rows)]
        started = time.perf_counter()
        for payload in payloads:
            await self.conn.execute(
                "INSERT INTO bench_floor (thread_id, payload) VALUES (%s, %s)",
                (thread_id, payload),
            )
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        """Close the connection."""
        await self.conn.close()


# --- flows --------------------------------------------------------------------------------


async def graph_path(agent: Agent, thread_id: str) -> tuple[str, ...]:
    """The nodes a finished run executed, in order (from its checkpoint history)."""
    history = await agent.history(thread_id)
    return tuple(n for h in history for n in h["next"] if n != "__start__")


async def run_many(
    run: Callable[[], Awaitable[Any]], count: int | None, concurrency: int, until: float | None
) -> int:
    """``run`` with ``concurrency`` runs in flight: ``count`` runs, or until ``until``."""
    done = 0
    budget = itertools.count() if count is None else iter(range(count))

    async def worker() -> None:
        nonlocal done
        while True:
            if until is not None and time.perf_counter() >= until:
                return
            if next(budget, None) is None:
                return
            await run()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def throughput_level(
    run: Callable[[], Awaitable[Any]], concurrency: int, seconds: float
) -> dict[str, Any]:
    """Completed ``run``s per second with ``concurrency`` in flight for ``seconds``.

    One run per slot goes first, uncounted, so the pool has grown to this level.
    """
    await run_many(run, concurrency, concurrency, None)
    started = time.perf_counter()
    cpu = time.process_time()
    machine_before = cpu_times()
    runs = await run_many(run, None, concurrency, started + seconds)
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu
    return {
        "concurrency": concurrency,
        "runs": runs,
        "seconds": elapsed,
        "runs_per_s": runs / elapsed,
        "process_cpu_share": cpu_s / elapsed,
        "machine_cpu_busy": busy_share(machine_before, cpu_times()),
        "cpu_ms_per_run": cpu_s * 1000 / runs if runs else None,
        "ms_per_run_latency": elapsed * 1000 * concurrency / runs if runs else None,
    }


async def _run_workers(count: int, args: list[str]) -> tuple[list[dict[str, Any]], float | None]:
    """Start ``count`` `bench.worker` processes, release them together; their figures.

    And the share of the machine busy from their release to their answers (`busy_share`),
    not over their start, which spends seconds of CPU importing and warming up.
    """
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            *WORKER_COMMAND,
            *args,
            cwd=PROJECT_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            ready = await asyncio.wait_for(worker.stdout.readline(), WORKER_START_S)
            if ready != b"ready\n":
                _, errors = await worker.communicate()
                raise RuntimeError(f"a bench worker failed to start: {errors.decode()[-2000:]}")
        released = cpu_times()
        outputs = await asyncio.gather(*(worker.communicate(b"go\n") for worker in workers))
        machine_busy = busy_share(released, cpu_times())
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    results = []
    for worker, (out, errors) in zip(workers, outputs, strict=True):
        if worker.returncode != 0:
            raise RuntimeError(f"a bench worker failed: {errors.decode()[-2000:]}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results, machine_busy


WORKER_COMMAND: tuple[str, ...] = ("-m", "bench.worker")
"""What the interpreter runs as a worker (its arguments follow)."""

WORKER_START_S = 120.0
"""How long a worker may take to import, connect and warm up before it is given up on."""


class Invoices:
    """Bench invoices handed out: a cycle for validation, each once for payment."""

    def __init__(self, config: BenchConfig) -> None:
        """Split the clones: validation first, then the ones to pay."""
        self._validate = itertools.cycle(range(config.validate_invoices))
        self._pay = iter(
            range(config.validate_invoices, config.validate_invoices + config.approval_invoices)
        )

    def to_validate(self) -> str:
        """An invoice to validate (the same clean match every time)."""
        return clone_invoice_id(next(self._validate))

    def to_pay(self) -> str:
        """An invoice never paid before."""
        try:
            return clone_invoice_id(next(self._pay))
        except StopIteration:
            raise RuntimeError("the bench world has no unpaid bench invoice left") from None


@dataclass
class Bench:
    """The agent, the bare graph and the floor on one private database."""

    agent: Agent
    database: Database
    floor: Floor
    config: BenchConfig
    invoices: Invoices
    bare: Any = None
    log: Callable[[str], None] = print
    path: tuple[str, ...] = ()
    """The invoice flow's steps, as `invoice_flow` recorded them (the bare graph follows)."""

    replay: Any = None

    def __post_init__(self) -> None:
        saver = self.agent.graph.checkpointer
        self.bare = build_bare_graph(saver)
        self.replay = build_state_replay_graph(saver)

    async def validate(self, agent: Agent | None = None) -> dict[str, Any]:
        """One invoice-flow run (by the bench's agent, or ``agent``); it must complete."""
        invoice = self.invoices.to_validate()
        view = await (agent or self.agent).start(f"Validate {invoice}", user=CLERK)
        if view["status"] != "completed":
            raise RuntimeError(
                f"invoice flow on {invoice} ended {view['status']}: {view['reason']}"
            )
        return view

    def served_by_models(self, latency_s: float) -> Agent:
        """The bench's agent with router and respond served by `bench.models.LatentModels`.

        Same gate, database and checkpointer; each model call is answered after
        ``latency_s``.
        """
        gate = self.agent.gate
        graph = build_graph(
            NodeDeps(gate=gate, models=LatentModels(latency_s)),
            checkpointer=self.agent.graph.checkpointer,
        )
        return Agent(graph=graph, database=self.database, gate=gate)

    async def validate_with_models(self, agent: Agent) -> dict[str, Any]:
        """One invoice-flow run of ``agent`` (`served_by_models`); the models must serve."""
        view = await self.validate(agent)
        served = view["result"].get("model_path", {})
        if not all(str(served.get(role, "")).startswith("model:") for role in LATENT_ROLES):
            raise RuntimeError(f"the latent models did not serve the run: {served}")
        return view

    async def bare_run(self, path: tuple[str, ...], resumes: int = 0) -> tuple[float, float]:
        """One bare run along ``path``: (ms to the first stop, ms of the resumes).

        Whether it reached the end is read from its output, not from its checkpoint: a
        state read after the run would count in the CPU taken around it and in the
        throughput leg's runs, which the agent's runs do not pay.
        """
        config: Any = {"configurable": {"thread_id": f"bare-{uuid.uuid4()}"}}
        context = BareContext(path=path)
        first, output = await timed(
            lambda: self.bare.ainvoke(
                {"request": "bench", "position": 0},
                config,
                context=context,
                durability=START_DURABILITY,
            )
        )
        resumed = 0.0
        for _ in range(resumes):
            elapsed, output = await timed(
                lambda: self.bare.ainvoke(
                    Command(resume={"type": "approve"}),
                    config,
                    context=context,
                    durability=AFTER_APPROVAL_DURABILITY,
                )
            )
            resumed += elapsed
        if output.get("__interrupt__") or output.get("position") != len(path):
            raise RuntimeError(f"bare run stopped early at step {output.get('position')}")
        return first, resumed

    async def replay_run(self, context: BareContext) -> str:
        """One state-replay run along ``context.path``, writing ``context.updates``; its thread."""
        thread_id = f"replay-{uuid.uuid4()}"
        await self.replay.ainvoke(
            {"request": "bench", "user": CLERK, "position": 0},
            {"configurable": {"thread_id": thread_id}},
            context=context,
            durability=START_DURABILITY,
        )
        return thread_id

    async def recorded_updates(self, thread_id: str, path: tuple[str, ...]) -> BareContext:
        """The replay's context: ``path`` and the state updates the agent's run wrote."""
        saver = self.agent.graph.checkpointer
        assert isinstance(saver, BaseCheckpointSaver)  # the agent always has one
        serde = saver.serde
        async with self.database.connection() as conn:
            cur = await conn.execute(
                "SELECT checkpoint_id, task_path, channel, type, blob FROM checkpoint_writes"
                " WHERE thread_id = %s AND checkpoint_ns = '' ORDER BY checkpoint_id, task_id, idx",
                (thread_id,),
            )
            rows = await cur.fetchall()
        writes = [
            (
                row["checkpoint_id"],
                row["task_path"].rsplit(", ", 1)[-1],
                row["channel"],
                serde.loads_typed((row["type"], row["blob"])),
            )
            for row in rows
        ]
        return BareContext(path=path, updates=recorded_updates(writes, path))

    async def invoice_flow(self) -> dict[str, Any]:
        """Invoice flow: agent vs bare vs floor, side by side."""
        config = self.config
        for _ in range(config.warmup):
            view = await self.validate()
        path = self.path = await graph_path(self.agent, view["thread_id"])
        sizes = await checkpoint_bytes(self.database, view["thread_id"])
        steps = len(path)
        replay = await self.recorded_updates(view["thread_id"], path)
        modelled = self.served_by_models(0.0)
        for _ in range(config.warmup):
            await self.bare_run(path)
            await self.replay_run(replay)
            await self.validate_with_models(modelled)
        agent_ms: list[float] = []
        bare_ms: list[float] = []
        floor_ms: list[float] = []
        replay_ms: list[float] = []
        bytes_per_run: list[int] = []
        agent_cpu_ms: list[float] = []
        bare_cpu_ms: list[float] = []
        replay_cpu_ms: list[float] = []
        modelled_ms: list[float] = []
        modelled_cpu_ms: list[float] = []
        for order in rotations(config.reps, 5):
            for kind in order:
                if kind == 0:
                    cpu = time.process_time()
                    elapsed, view = await timed(self.validate)
                    agent_cpu_ms.append((time.process_time() - cpu) * 1000)
                    agent_ms.append(elapsed)
                    sizes = await checkpoint_bytes(self.database, view["thread_id"])
                    bytes_per_run.append(sizes["total"])
                elif kind == 1:
                    cpu = time.process_time()
                    elapsed, _ = await self.bare_run(path)
                    bare_cpu_ms.append((time.process_time() - cpu) * 1000)
                    bare_ms.append(elapsed)
                elif kind == 2:
                    cpu = time.process_time()
                    elapsed, _ = await timed(functools.partial(self.replay_run, replay))
                    replay_cpu_ms.append((time.process_time() - cpu) * 1000)
                    replay_ms.append(elapsed)
                elif kind == 3:
                    floor_ms.append(await self.floor.commit_rows(*floor_rows(sizes)))
                else:
                    cpu = time.process_time()
                    with_models = functools.partial(self.validate_with_models, modelled)
                    elapsed, _ = await timed(with_models)
                    modelled_cpu_ms.append((time.process_time() - cpu) * 1000)
                    modelled_ms.append(elapsed)
        bare_bytes = await self._last_bare_thread_bytes()
        agent = summary(agent_ms)
        bare = summary(bare_ms)
        floor = summary(floor_ms)
        state = summary(replay_ms)
        run_bytes = summary(bytes_per_run)
        return {
            "request": "Validate INV-<clean match>",
            "path": list(path),
            "steps": steps,
            "agent_ms": agent,
            "bare_ms": bare,
            "floor_ms": floor,
            "agent_ms_per_step": agent["median"] / steps,
            "bare_ms_per_step": bare["median"] / steps,
            "floor_ms_per_step": floor["median"] / steps,
            "ratio_agent_bare": ratio(agent["median"], bare["median"]),
            "ratio_agent_floor": ratio(agent["median"], floor["median"]),
            "state_replay_ms": state,
            "state_ms": state["median"] - bare["median"],
            "nodes_ms": agent["median"] - state["median"],
            "agent_cpu_ms": statistics.median(agent_cpu_ms),
            "bare_cpu_ms": statistics.median(bare_cpu_ms),
            "state_replay_cpu_ms": statistics.median(replay_cpu_ms),
            "with_models_ms": summary(modelled_ms),
            "with_models_cpu_ms": statistics.median(modelled_cpu_ms),
            "cpu_ms_per_model_call": (
                statistics.median(modelled_cpu_ms) - statistics.median(agent_cpu_ms)
            )
            / len(LATENT_ROLES),
            "checkpoint_bytes_per_run": run_bytes["median"],
            "checkpoint_bytes_per_step": run_bytes["median"] / steps,
            "bare_checkpoint_bytes_per_run": bare_bytes,
        }

    async def _last_bare_thread_bytes(self) -> int:
        async with self.database.connection() as conn:
            cur = await conn.execute(
                "SELECT thread_id FROM checkpoints WHERE thread_id LIKE 'bare-%%'"
                " ORDER BY checkpoint_id DESC LIMIT 1"
            )
            row = await cur.fetchone()
        if row is None:
            return 0
        return (await checkpoint_bytes(self.database, row["thread_id"]))["total"]

    async def pay(self) -> tuple[float, float, str]:
        """One approval-flow run: (ms to the interrupt, ms of the resume, thread)."""
        invoice = self.invoices.to_pay()
        start_ms, view = await timed(lambda: self.agent.start(f"Pay {invoice}", user=CLERK))
        if view["status"] != "interrupted":
            raise RuntimeError(
                f"approval flow on {invoice} ended {view['status']} before "
                f"approval: {view['reason']}"
            )
        thread_id = view["thread_id"]
        resume_ms, done = await timed(lambda: self.agent.resume(thread_id, APPROVE))
        if done["status"] != "completed" or done["pending_approvals"]:
            raise RuntimeError(
                f"approval flow on {invoice} ended {done['status']} after "
                f"approval: {done['reason']}"
            )
        return start_ms, resume_ms, thread_id

    async def approval_flow(self) -> dict[str, Any]:
        """Approval flow (interrupt, then resume): agent vs bare vs floor, side by side."""
        config = self.config
        for _ in range(config.warmup):
            _, _, thread_id = await self.pay()
        path = await graph_path(self.agent, thread_id)
        sizes = await checkpoint_bytes(self.database, thread_id)
        steps = len(path)
        interrupt_at = path.index("approval") + 1
        for _ in range(config.warmup):
            await self.bare_run(path, resumes=1)
        agent_start: list[float] = []
        agent_resume: list[float] = []
        bare_start: list[float] = []
        bare_resume: list[float] = []
        floor_ms: list[float] = []
        bytes_per_run: list[int] = []
        for order in rotations(config.approval_reps, 3):
            for kind in order:
                if kind == 0:
                    start_ms, resume_ms, thread_id = await self.pay()
                    agent_start.append(start_ms)
                    agent_resume.append(resume_ms)
                    sizes = await checkpoint_bytes(self.database, thread_id)
                    bytes_per_run.append(sizes["total"])
                elif kind == 1:
                    first, resumed = await self.bare_run(path, resumes=1)
                    bare_start.append(first)
                    bare_resume.append(resumed)
                else:
                    floor_ms.append(await self.floor.commit_rows(*floor_rows(sizes)))
        totals = [a + b for a, b in zip(agent_start, agent_resume, strict=True)]
        bare_totals = [a + b for a, b in zip(bare_start, bare_resume, strict=True)]
        agent = summary(totals)
        bare = summary(bare_totals)
        floor = summary(floor_ms)
        resume = summary(agent_resume)
        bare_resume_s = summary(bare_resume)
        run_bytes = summary(bytes_per_run)
        return {
            "request": "Pay INV-<clean match>, then approve",
            "path": list(path),
            "steps": steps,
            "steps_before_interrupt": interrupt_at,
            "agent_ms": agent,
            "agent_start_ms": summary(agent_start),
            "agent_resume_ms": resume,
            "bare_ms": bare,
            "bare_start_ms": summary(bare_start),
            "bare_resume_ms": bare_resume_s,
            "floor_ms": floor,
            "agent_ms_per_step": agent["median"] / steps,
            "bare_ms_per_step": bare["median"] / steps,
            "ratio_agent_bare": ratio(agent["median"], bare["median"]),
            "ratio_agent_floor": ratio(agent["median"], floor["median"]),
            "resume_ratio_agent_bare": ratio(resume["median"], bare_resume_s["median"]),
            "checkpoint_bytes_per_run": run_bytes["median"],
            "checkpoint_bytes_per_step": run_bytes["median"] / steps,
        }

    async def checkpoint_growth(self) -> dict[str, Any]:
        """Checkpoint bytes and time for runs of each planned length."""
        gate = self.agent.gate
        context = Context(max_tool_calls=500, max_steps=1000)
        points: list[dict[str, Any]] = []
        for planned in self.config.growth_steps:
            graph = build_graph(
                NodeDeps(gate=gate, models=ReadPlanModels(planned)),
                checkpointer=self.agent.graph.checkpointer,
            )
            long_runs = Agent(graph=graph, database=self.database, gate=gate)
            timings: list[float] = []
            sizes: dict[str, int] = {}
            steps = 0
            for _ in range(self.config.growth_reps):
                elapsed, view = await timed(
                    functools.partial(
                        long_runs.start,
                        f"Validate {clone_invoice_id(0)}",
                        user=CLERK,
                        context=context,
                    )
                )
                if view["status"] != "completed":
                    raise RuntimeError(
                        f"{planned}-step run ended {view['status']}: {view['reason']}"
                    )
                timings.append(elapsed)
                sizes = await checkpoint_bytes(self.database, view["thread_id"])
                steps = len(await graph_path(long_runs, view["thread_id"]))
            ms = statistics.median(timings)
            points.append(
                {
                    "plan_steps": planned,
                    "graph_steps": steps,
                    "checkpoint_bytes": sizes["total"],
                    "bytes_per_step": sizes["total"] / steps,
                    "bytes_by_kind": {k: sizes[k] for k in ("checkpoints", "blobs", "writes")},
                    "ms": ms,
                    "ms_per_step": ms / steps,
                }
            )
        exponent = growth_exponent([(p["graph_steps"], p["checkpoint_bytes"]) for p in points])
        first, last = points[0], points[-1]
        return {
            "runs": points,
            "growth_exponent": exponent,
            "per_step_ratio_longest_vs_shortest": ratio(
                last["bytes_per_step"], first["bytes_per_step"]
            ),
            "linear": exponent is not None and exponent < 1.25,
        }

    async def _run_many(self, count: int | None, concurrency: int, until: float | None) -> int:
        """`run_many` of this bench's invoice flow."""
        return await run_many(self.validate, count, concurrency, until)

    async def throughput(self) -> dict[str, Any]:
        """Completed invoice runs per second at each concurrency level, agent and bare.

        The bare graph (on the path `invoice_flow` recorded) runs the same levels right
        after the agent: how far LangGraph itself scales on one event loop here.
        """
        if not self.path:
            raise RuntimeError("throughput needs the invoice flow's path: run invoice_flow first")
        path = self.path

        async def bare() -> None:
            await self.bare_run(path)

        seconds = self.config.throughput_seconds
        levels: list[dict[str, Any]] = []
        for concurrency in self.config.concurrency:
            level = await throughput_level(self.validate, concurrency, seconds)
            bare_level = await throughput_level(bare, concurrency, seconds)
            level["bare_runs_per_s"] = bare_level["runs_per_s"]
            levels.append(level)
            self.log(
                f"  throughput x{concurrency}: {level['runs_per_s']:.2f} runs/s "
                f"(bare {bare_level['runs_per_s']:.2f})"
            )
        add_speedups(levels, "runs_per_s", "speedup")
        add_speedups(levels, "bare_runs_per_s", "bare_speedup")
        return {
            "levels": levels,
            "pool_size": self.config.pool_size,
            "stops_scaling_at": stops_scaling_at(levels),
        }

    async def model_latency_throughput(self) -> dict[str, Any]:
        """Completed invoice runs per second at each level when runs wait on a model.

        Router and respond are served by `bench.models.LatentModels`, answered after
        `BenchConfig.model_latency_s` (the planner stays on the rules model), so most of a
        run is waiting; one event loop overlaps the waits of concurrent runs until the
        process's CPU is used up. The model calls are metered and charged like a hosted
        model's (`bench.models.LATENT_TOKENS`).
        """
        latency = self.config.model_latency_s
        waiting = self.served_by_models(latency)

        async def run() -> None:
            await self.validate_with_models(waiting)

        levels: list[dict[str, Any]] = []
        for concurrency in self.config.concurrency:
            level = await throughput_level(run, concurrency, self.config.throughput_seconds)
            levels.append(level)
            self.log(f"  with model latency x{concurrency}: {level['runs_per_s']:.2f} runs/s")
        add_speedups(levels, "runs_per_s", "speedup")
        return {
            "model_latency_s": latency,
            "model_calls_per_run": len(LATENT_ROLES),
            "levels": levels,
            "stops_scaling_at": stops_scaling_at(levels),
        }

    async def processes(self) -> dict[str, Any]:
        """Completed invoice runs per second with 1, 2, ... worker processes at once.

        Each worker (`bench.worker`) opens its own agent and pool on this bench's database,
        warms up, and starts when all are ready. Runs before the single-process throughput
        leg, while this process holds few connections (each worker holds up to two per run
        in flight plus one lock connection per run).
        """
        config = self.config
        levels: list[dict[str, Any]] = []
        for count in config.processes:
            results, machine_busy = await _run_workers(
                count,
                [
                    self.database.uri,
                    str(config.process_concurrency),
                    str(config.throughput_seconds),
                    str(2 * config.process_concurrency),
                    str(config.validate_invoices),
                ],
            )
            runs = sum(r["runs"] for r in results)
            rate = sum(r["runs"] / r["seconds"] for r in results)
            levels.append(
                {
                    "processes": count,
                    "runs": runs,
                    "runs_per_s": rate,
                    "cpu_ms_per_run": sum(r["cpu_s"] for r in results) * 1000 / runs
                    if runs
                    else None,
                    "machine_cpu_busy": machine_busy,
                }
            )
            self.log(f"  {count} process(es): {rate:.2f} runs/s")
        add_speedups(levels, "runs_per_s", "speedup")
        return {"levels": levels, "concurrency_per_process": config.process_concurrency}

    @staticmethod
    def cpu_ceiling(cpu_ms_per_run: float) -> float | None:
        """Runs per second one process can finish at most: one core, ``cpu_ms`` each."""
        return ratio(1000.0, cpu_ms_per_run)

    async def memory(self) -> dict[str, Any]:
        """Resident memory over `BenchConfig.memory_runs` invoice runs, sampled evenly."""
        config = self.config
        per_sample = max(1, config.memory_runs // config.memory_samples)
        samples: list[dict[str, float]] = []
        runs = 0
        gc.collect()
        start_mb = rss_mb()
        while runs < config.memory_runs:
            batch = min(per_sample, config.memory_runs - runs)
            runs += await self._run_many(batch, config.memory_concurrency, None)
            gc.collect()
            samples.append({"runs": runs, "rss_mb": rss_mb()})
        # Growth is measured after the first sample: pools, caches and the allocator settle.
        steady = samples[1:] if len(samples) > 2 else samples
        slope = None
        if len(steady) >= 2:
            xs = [s["runs"] for s in steady]
            ys = [s["rss_mb"] for s in steady]
            mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
            spread = sum((x - mean_x) ** 2 for x in xs)
            if spread:
                slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
                slope /= spread
        return {
            "runs": runs,
            "concurrency": config.memory_concurrency,
            "rss_mb_before": start_mb,
            "rss_mb_after": samples[-1]["rss_mb"],
            "peak_rss_mb": peak_rss_mb(),
            "growth_kb_per_run": slope * 1024 if slope is not None else None,
            "samples": samples,
        }

    async def audit_verify(self) -> dict[str, Any]:
        """`payables audit verify` over everything the bench's runs wrote, timed once.

        Every run here went through the gate and its approvals, so verify must find the
        chain and every record intact; anything it names is an error, not a figure.
        """
        async with self.database.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM audit_events) AS events,"
                " (SELECT count(*) FROM tool_calls) AS ledger_rows,"
                " (SELECT count(*) FROM invoices) AS invoices"
            )
            counts = await cur.fetchone()
            started = time.process_time()
            ms, report = await timed(lambda: verify_chain(conn))
            cpu_ms = (time.process_time() - started) * 1000
        assert counts is not None
        if not report.ok:
            raise RuntimeError(f"audit verify found the bench's records not intact: {report}")
        return {
            **counts,
            "ms": ms,
            "cpu_ms": cpu_ms,
            "us_per_event": ms * 1000 / counts["events"] if counts["events"] else None,
        }


# --- the whole bench ----------------------------------------------------------------------


async def run_bench(
    config: BenchConfig, *, log: Callable[[str], None] = print, server: str | None = None
) -> dict[str, Any]:
    """Every measurement on a fresh database; returns the report (see `bench.report`)."""
    started = time.perf_counter()
    begun = datetime.now(UTC)
    machine_info = machine()
    log(f"bench database: {config.clones} bench invoices on a fresh database")
    async with fresh_database(config.clones, server) as uri:
        database = Database(uri, max_size=config.pool_size)
        floor = await Floor.open(uri)
        try:
            async with open_agent(database=database) as agent:
                async with database.connection() as conn:
                    cur = await conn.execute("SHOW server_version")
                    row = await cur.fetchone()
                    machine_info["postgres"] = row["server_version"] if row else None
                bench = Bench(agent, database, floor, config, Invoices(config), log=log)
                log("invoice flow (agent | bare | floor) ...")
                invoice = await bench.invoice_flow()
                log("approval flow (interrupt, resume) ...")
                approval = await bench.approval_flow()
                log("checkpoint growth ...")
                growth = await bench.checkpoint_growth()
                log("processes ...")
                processes = await bench.processes()
                log("throughput ...")
                throughput = await bench.throughput()
                log("throughput with model latency ...")
                waiting = await bench.model_latency_throughput()
                log("memory ...")
                memory = await bench.memory()
                log("audit verify ...")
                audit = await bench.audit_verify()
        finally:
            await floor.close()
    report: dict[str, Any] = {
        "started_at": begun.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started,
        "machine": {**machine_info, "load_average_1m_after": os.getloadavg()[0]},
        "config": asdict(config),
        "durability": DURABILITY,
        "invoice_flow": invoice,
        "approval_flow": approval,
        "resume_latency": {
            "agent_ms": approval["agent_resume_ms"],
            "bare_ms": approval["bare_resume_ms"],
            "ratio_agent_bare": approval["resume_ratio_agent_bare"],
        },
        "checkpoint_growth": growth,
        "throughput": {
            **throughput,
            "cpu_ceiling_runs_per_s": Bench.cpu_ceiling(invoice["agent_cpu_ms"]),
        },
        "model_latency_throughput": waiting,
        "processes": processes,
        "memory": memory,
        "audit_verify": audit,
    }
    report["targets"] = targets(report)
    return report


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    invoice = report["invoice_flow"]
    growth = report["checkpoint_growth"]
    levels = {level["concurrency"]: level for level in report["throughput"]["levels"]}
    single = levels.get(1)
    sixteen = levels.get(16)
    speedup = ratio(sixteen["runs_per_s"], single["runs_per_s"]) if single and sixteen else None
    waiting = report["model_latency_throughput"]
    waiting_levels = {level["concurrency"]: level for level in waiting["levels"]}
    waiting_speedup = waiting_levels[16]["speedup"] if 16 in waiting_levels else None
    memory = report["memory"]
    growth_kb = memory["growth_kb_per_run"]
    return [
        {
            "target": "agent / bare LangGraph <= 1.5x (invoice flow)",
            "value": invoice["ratio_agent_bare"],
            "met": invoice["ratio_agent_bare"] is not None and invoice["ratio_agent_bare"] <= 1.5,
        },
        {
            "target": "checkpoint bytes per step bounded by a constant (5 -> 50 steps)",
            "value": growth["per_step_ratio_longest_vs_shortest"],
            "met": growth["linear"],
        },
        {
            "target": "throughput with 16 concurrent runs >= 3x one",
            "value": speedup,
            "met": speedup is not None and speedup >= 3,
        },
        {
            "target": "the same, runs waiting on a model "
            f"({waiting['model_latency_s'] * 1000:.0f} ms per call)",
            "value": waiting_speedup,
            "met": waiting_speedup is not None and waiting_speedup >= 3,
        },
        {
            "target": "no memory growth per run (< 1 KiB/run after warm-up)",
            "value": growth_kb,
            "met": growth_kb is not None and growth_kb < 1.0,
        },
    ]
