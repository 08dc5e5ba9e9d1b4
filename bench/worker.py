"""``python -m bench.worker``: one process of the bench's multi-process throughput leg.

Arguments: the bench database's URI, runs in flight, seconds, pool size, and how many
bench invoices to cycle through. It opens its own agent, warms up, prints ``ready`` and
waits for a line on stdin, so that every process starts at once; then it runs invoice
flows for the given seconds and prints one JSON line: runs, seconds and CPU seconds.
"""

from __future__ import annotations

from bench import go_offline

go_offline()

import asyncio  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from bench.harness import CLERK, run_many  # noqa: E402
from bench.world import clone_invoice_id  # noqa: E402
from runtime.agent import open_agent  # noqa: E402
from state.db import Database  # noqa: E402


async def work(uri: str, concurrency: int, seconds: float, pool: int, invoices: int) -> None:
    """Warm up, say ready, wait for the go, run for ``seconds``, print the figures."""
    cycle = itertools.cycle(range(invoices))
    async with open_agent(database=Database(uri, max_size=pool)) as agent:

        async def validate() -> None:
            invoice = clone_invoice_id(next(cycle))
            view = await agent.start(f"Validate {invoice}", user=CLERK)
            if view["status"] != "completed":
                raise RuntimeError(f"invoice flow on {invoice} ended {view['status']}")

        await run_many(validate, concurrency, concurrency, None)  # pool and caches warm
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        started, cpu = time.perf_counter(), time.process_time()
        runs = await run_many(validate, None, concurrency, started + seconds)
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"runs": runs, "seconds": elapsed, "cpu_s": cpu_s}), flush=True)


if __name__ == "__main__":
    uri, concurrency, seconds, pool, invoices = sys.argv[1:6]
    asyncio.run(work(uri, int(concurrency), float(seconds), int(pool), int(invoices)))
