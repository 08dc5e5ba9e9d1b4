"""``python -m bench --profile N``: where N invoice-flow runs spend their time (pyinstrument).

The same world, agent and request as the bench's invoice flow, on a private database.
Writes an HTML call tree (open it in a browser) and returns the text tree, trimmed to the
frames that took at least ``MIN_SHARE`` of the time. The statistical profiler samples the
event loop's thread; time a run spends awaiting Postgres shows under the call that awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import CLERK, BenchConfig, Invoices
from bench.world import fresh_database
from runtime.agent import open_agent
from runtime.settings import PROJECT_ROOT
from state.db import Database

DEFAULT_HTML = PROJECT_ROOT / "reports" / "bench" / "profile.html"

MIN_SHARE = 0.02
"""Frames below this share of the profiled time are left out of the text tree."""

WARMUP = 5


async def profile_invoice_flow(
    runs: int, *, log: Callable[[str], None] = print, server: str | None = None
) -> tuple[str, str]:
    """Profile ``runs`` invoice-flow runs after a warm-up: (the text tree, the HTML page).

    ``server`` as in `bench.world.fresh_database` (the embedded Postgres when None).
    """
    from pyinstrument import Profiler

    if runs < 1:
        raise ValueError(f"--profile needs at least one run, got {runs}")
    config = BenchConfig(validate_invoices=min(runs + WARMUP, 100), approval_reps=0, warmup=0)
    invoices = Invoices(config)
    async with fresh_database(config.clones, server) as uri:
        database = Database(uri, max_size=config.pool_size)
        async with open_agent(database=database) as agent:

            async def run() -> None:
                invoice = invoices.to_validate()
                view = await agent.start(f"Validate {invoice}", user=CLERK)
                if view["status"] != "completed":
                    raise RuntimeError(f"invoice flow on {invoice} ended {view['status']}")

            for _ in range(WARMUP):
                await run()
            log(f"profiling {runs} invoice-flow runs ...")
            profiler = Profiler(async_mode="enabled")
            started, cpu = time.perf_counter(), time.process_time()
            profiler.start()
            for _ in range(runs):
                await run()
            profiler.stop()
            wall_ms = (time.perf_counter() - started) * 1000 / runs
            cpu_ms = (time.process_time() - cpu) * 1000 / runs
    header = f"{runs} invoice-flow runs: {wall_ms:.1f} ms wall, {cpu_ms:.1f} ms CPU per run"
    tree = profiler.output_text(unicode=False, color=False, show_all=False, time="percent_of_total")
    kept = [line for line in tree.splitlines() if _share(line) in (None, True)]
    return "\n".join([header, *kept]), profiler.output_html()


def write_html(page: str, path: Path = DEFAULT_HTML) -> Path:
    """Write the profile's HTML page; returns where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _share(line: str) -> bool | None:
    """Whether a tree line's leading percentage reaches `MIN_SHARE` (None: not a frame)."""
    text = line.lstrip(" |`-")
    number = text.split("%", 1)[0] if "%" in text[:8] else None
    if number is None:
        return None
    try:
        return float(number) >= MIN_SHARE * 100
    except ValueError:
        return None
