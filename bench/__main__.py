"""``python -m bench``: run the benchmarks, print the table, write the JSON report."""

from __future__ import annotations

from bench import go_offline

go_offline()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.harness import BenchConfig, run_bench  # noqa: E402
from bench.profile import profile_invoice_flow, write_html  # noqa: E402
from bench.report import DEFAULT_JSON, format_report, write_json  # noqa: E402
from bench.world import BenchError  # noqa: E402
from runtime.errors import PayablesError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the bench, print and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts (seconds; smoke)")
    parser.add_argument("--reps", type=int, help="repetitions per comparison")
    parser.add_argument("--memory-runs", type=int, help="runs in the memory test")
    parser.add_argument("--throughput-seconds", type=float, help="seconds per concurrency level")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="RUNS",
        help="instead of the bench, profile RUNS invoice-flow runs (pyinstrument); writes"
        " reports/bench/profile.html",
    )
    args = parser.parse_args(argv)
    config = BenchConfig.quick() if args.quick else BenchConfig()
    if args.reps is not None:
        config = replace(config, reps=args.reps, approval_reps=args.reps)
    if args.memory_runs is not None:
        config = replace(config, memory_runs=args.memory_runs)
    if args.throughput_seconds is not None:
        config = replace(config, throughput_seconds=args.throughput_seconds)
    logging.basicConfig(level=logging.ERROR)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.profile is not None:
        try:
            tree, page = asyncio.run(profile_invoice_flow(args.profile, log=progress))
        except (ValueError, BenchError, PayablesError) as exc:
            print(f"make bench: {exc}", file=sys.stderr)
            return 1
        print(tree)
        print(f"\nwrote {write_html(page)}")
        return 0
    try:
        report = asyncio.run(run_bench(config, log=progress))
    except (BenchError, PayablesError) as exc:
        print(f"make bench: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    path = write_json(report, args.json)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
