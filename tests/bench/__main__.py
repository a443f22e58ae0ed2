"""``python -m tests.bench [--quick] [--out bench.json]``: run the benchmark, print the table.

Exit status: 0 when every server was measured (whether or not the targets were met), 1 when
one could not be (it did not start, its answers were wrong, a tool is missing) or the run
went past its time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.array import report_lines as array_report
from tests.bench.harness import BenchTimeout, Terminated, clear_limits, install_limits, machine_info
from tests.bench.index_cost import report_lines as index_cost_report
from tests.bench.model_ready import report_lines as model_ready_report
from tests.bench.report import comparisons, document, machine_line, table
from tests.bench.run import SCENARIOS, Bench, Plan
from tests.bench.shared import scenario_lines as shared_report
from tests.bench.workers import report_lines as workers_report

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="storage-manager vs nginx, docker-registry, curl, oras-py and skopeo",
    )
    parser.add_argument("--quick", action="store_true", help="sizes / 4, 3 s load runs")
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument(
        "--workdir", type=Path, help="where the temporary files go (default: the system's)"
    )
    parser.add_argument("--duration", type=float, help="seconds of each load run")
    parser.add_argument(
        "--only",
        help=f"comma-separated scenarios to run (of: {', '.join(SCENARIOS)}); default: all",
    )
    parser.add_argument(
        "--time-limit",
        type=int,
        help="stop (and exit 1) after this many seconds (default: 2400, --quick 900)",
    )
    return parser.parse_args(argv)


def run_line(bench: Bench) -> str:
    """How the figures were taken, for the line under the machine's."""
    p = bench.plan
    processes = bench.setup.get("proxy_processes")
    workers = f"auto: {processes} processes" if processes else "auto"
    if os.environ.get("NEKKO_WORKERS"):
        workers = f"NEKKO_WORKERS={os.environ['NEKKO_WORKERS']}"
    mode = "buffered (the default)"
    if os.environ.get("NEKKO_DIRECT_WRITES", "0").lower() in ("1", "true", "yes"):
        mode = "O_DIRECT (NEKKO_DIRECT_WRITES=1 in the environment)"
    parts = [
        f"{'`--quick`' if p.quick else 'full run'}, {time.strftime('%Y-%m-%d')}",
        f"storage-manager `--workers` {workers}, writes {mode}",
        "nginx 2 workers, sendfile",
        f"machine {bench.setup.get('cpu_busy_before_start', 0):.0%} busy before the run",
        "each figure the median of its rounds, the range of the rounds in brackets",
    ]
    states = bench.setup.get("ingest_page_cache_states")
    if states:
        parts.append(f"before each ingest contender: {'; '.join(states)}")
    return "; ".join(parts) + "."


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = frozenset(args.only.split(",")) if args.only else frozenset(SCENARIOS)
    if not only <= frozenset(SCENARIOS):
        print(f"unknown scenarios: {', '.join(sorted(only - frozenset(SCENARIOS)))}")
        return 2
    plan = Plan.make(args.quick, args.duration, args.time_limit, only)
    started = time.monotonic()
    status = 0
    install_limits(plan.time_limit)
    try:
        with tempfile.TemporaryDirectory(prefix="sm-bench-", dir=args.workdir) as tmp:
            bench = Bench(plan, Path(tmp))
            try:
                bench.run()
            except (BenchTimeout, Terminated, KeyboardInterrupt) as e:
                bench.fail("run", "all", f"stopped: {e or type(e).__name__}")
                status = 1
            bench.log("stopping servers, removing temporary files")
    finally:
        clear_limits()
    rows = comparisons(bench)
    doc = document(bench, rows, machine_info(REPO))
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    print()
    print(machine_line(doc["machine"]))
    print()
    print(run_line(bench))
    print()
    print(table(rows))
    print()
    reports = (
        array_report,
        model_ready_report,
        index_cost_report,
        shared_report,
        workers_report,
    )
    for lines in (report(bench) for report in reports):
        if lines:
            print("\n".join(lines))
            print()
    if bench.notes:
        print("notes:")
        for note in bench.notes:
            print(f"  - {note}")
    if bench.errors:
        print("NOT MEASURED:")
        for error in bench.errors:
            first = error["error"].splitlines()[0] if error["error"] else ""
            print(f"  - {error['scenario']} / {error['server']}: {first}")
        status = 1
    print(
        f"{doc['targets_met']} targets met, {doc['targets_missed']} missed; "
        f"{doc['elapsed_s']} s on {doc['machine']['nproc']} CPUs"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
