"""The shared-store benchmark (issue 22): 8 nodes, two waves, moto's S3 as the store.

Setup: moto's S3 server on loopback (the store), an origin capped at 100 MiB/s in all
(:mod:`tests.bench.wan`), one model of 4 random files (512 MiB in all; ``--quick``: 128 MiB).

* first wave: 8 new nodes (127.0.0.1 .. 127.0.0.8, no ``--peers``) POST every file at once
  (32 requests), each with its ``digest``; then they stop (SIGTERM: pending write-backs end);
* second wave: 8 other new, empty nodes do the same.

Side by side: the same two waves with ``--shared-store s3://bench/<run>`` (``store``) and
without it (``no store``). Figures per wave: the time until all 8 nodes have all 4 files,
the bytes the origin served; with the store, the bytes the nodes read from it and wrote to it
(``storage_manager_shared_store_bytes_total``). Target: the origin serves the model once over
both waves with the store (cluster single flight through leases in the first wave, the store
alone in the second), 16 times without it.

``python -m tests.bench.shared [--quick]`` runs it alone and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.bench.array import NODES, ORIGIN_RATE, Mode, ModelFile, metric, model_files, pull
from tests.bench.harness import MeasurementError, MiB, http_client
from tests.bench.wan import WanOrigin
from tests.support.s3 import MotoS3
from tests.support.server import ServerProcess

SCENARIO = "shared_store"
MODEL_SIZE = 512 * MiB
BUCKET = "bench"
ORIGIN_TARGET = 1.05  # origin bytes over both waves <= 1.05 x the model, with the store
WAVES = ("first wave", "second wave")


class Wave:
    """``NODES`` new storage-manager processes, each with its own empty cache
    (the shape :func:`tests.bench.array.pull` measures)."""

    def __init__(self, root: Path, env: dict[str, str], args: tuple[str, ...]) -> None:
        self.root = root
        self.mode = Mode("wave", "wave", NODES, False)
        hosts = [f"127.0.0.{i + 1}" for i in range(NODES)]
        self.addresses = [f"{h}:{free_port_on(h)}" for h in hosts]
        self.nodes = [
            ServerProcess(root / f"n{i}", *args, address=a, env=env)
            for i, a in enumerate(self.addresses)
        ]

    def __enter__(self) -> Wave:
        errors: list[BaseException] = []

        def start(node: ServerProcess) -> None:
            try:
                node.start(timeout=90)
            except Exception as e:
                errors.append(e)

        _all(start, self.nodes)
        if errors:
            self.stop()
            raise MeasurementError(f"a node did not start: {errors[0]}")
        for node in self.nodes:  # the store's probe done: leases in use from the first POST
            if "--shared-store" in node.args:
                _wait_for_log(node, "shared store s3://")
        return self

    def stop(self) -> None:
        _all(lambda n: n.stop(), self.nodes)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _all(fn: Any, nodes: list[ServerProcess]) -> None:
    threads = [threading.Thread(target=fn, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def _wait_for_log(node: ServerProcess, text: str) -> None:
    deadline = time.monotonic() + 30
    while not any(text in line and "conditional" in line for line in node.lines):
        if time.monotonic() > deadline:
            raise MeasurementError(f"{node.base_url}: no conditional-write probe in its log")
        time.sleep(0.1)


def _uploaded(wave: Wave) -> None:
    """Wait until no node has a write-back pending (``<cache>/shared-uploads/`` empty)."""
    deadline = time.monotonic() + 300
    while any(list((n.cache_dir / "shared-uploads").glob("*.json")) for n in wave.nodes):
        if time.monotonic() > deadline:
            raise MeasurementError("write-backs still pending after 300 s")
        time.sleep(0.2)


def _store_bytes(wave: Wave) -> tuple[int, int]:
    read = written = 0
    for node in wave.nodes:
        with http_client(30, base_url=node.base_url) as client:
            text = client.get("/metrics").text
        read += int(metric(text, 'storage_manager_shared_store_bytes_total{direction="read"}'))
        written += int(
            metric(text, 'storage_manager_shared_store_bytes_total{direction="written"}')
        )
    return read, written


def run_waves(
    work: Path, origin: WanOrigin, files: list[ModelFile], store: MotoS3 | None, log: Any
) -> list[dict[str, Any]]:
    """Both waves, with the store when ``store`` is given; the figures of each."""
    env: dict[str, str] = {}
    args: tuple[str, ...] = ()
    if store is not None:
        prefix = f"run-{uuid.uuid4().hex[:8]}"
        env = store.server_env()
        args = ("--shared-store", f"s3://{BUCKET}/{prefix}", "--s3-addressing-style", "path")
    results = []
    for n, title in enumerate(WAVES):
        with Wave(work / f"wave-{n}", env, args) as wave:
            figures = pull(wave, origin, files)  # type: ignore[arg-type]
            if store is not None:
                _uploaded(wave)  # the write-backs of the wave count too
                figures["store_read"], figures["store_written"] = _store_bytes(wave)
                lines = [line for n in wave.nodes for line in n.lines]
                figures["store_left_out"] = sum("not used for" in line for line in lines)
                figures["no_lease"] = sum(": no lease (" in line for line in lines)
            results.append({k: v for k, v in figures.items() if k != "nodes"})
        log(
            f"shared store: {'store' if store else 'no store'}, {title}: "
            f"{figures['seconds_all']:.2f} s, origin {figures['origin_bytes'] / MiB:.0f} MiB"
        )
    return results


def run(
    quick: bool, tmp: Path, log: Any = print, modes: tuple[str, ...] = ("no_store", "store")
) -> dict[str, Any]:
    size = MODEL_SIZE // 4 if quick else MODEL_SIZE
    files = model_files(tmp / "origin", size)
    model = sum(f.size for f in files)
    out: dict[str, Any] = {"model": {"bytes": model, "files": len(files), "nodes": NODES}}
    with WanOrigin(ORIGIN_RATE) as origin, MotoS3() as moto:
        for f in files:
            origin.add(f.name, f.path)
        moto.boto().create_bucket(Bucket=BUCKET)
        if "no_store" in modes:
            out["no_store"] = run_waves(tmp / "plain", origin, files, None, log)
        if "store" in modes:
            out["store"] = run_waves(tmp / "store", origin, files, moto, log)
    return out


def report_lines(figures: dict[str, Any]) -> list[str]:
    model = figures["model"]["bytes"]
    lines = [
        f"shared store: {NODES} nodes a wave, model {model / MiB:.0f} MiB in "
        f"{figures['model']['files']} files, origin {ORIGIN_RATE / MiB:.0f} MiB/s, moto S3",
        f"{'':<22}{'wave':<13}{'time all':>10}{'origin':>12}{'store read':>12}{'written':>10}",
    ]
    for key, title in (("no_store", "without store"), ("store", "--shared-store")):
        if key not in figures:
            continue
        total = 0
        for wave, r in zip(WAVES, figures[key], strict=True):
            total += r["origin_bytes"]
            read = f"{r['store_read'] / MiB:.0f} MiB" if "store_read" in r else "-"
            written = f"{r['store_written'] / MiB:.0f} MiB" if "store_written" in r else "-"
            lines.append(
                f"{title:<22}{wave:<13}{r['seconds_all']:>8.2f} s"
                f"{r['origin_bytes'] / MiB:>8.0f} MiB{read:>12}{written:>10}"
            )
        lines.append(f"{title:<22}{'both':<13}{'':>10}{total / model:>10.2f}x model")
    if "store" not in figures:
        return lines
    store_total = sum(r["origin_bytes"] for r in figures["store"]) / model
    met = "met" if store_total <= ORIGIN_TARGET else "MISSED"
    lines.append(f"target: origin <= {ORIGIN_TARGET}x the model over both waves: {met}")
    return lines


SCENARIO = "shared"


def run_scenario(bench: Any) -> None:
    """``python -m tests.bench --only shared``: both modes, in the bench's directory."""
    try:
        bench.figures[SCENARIO] = run(bench.plan.quick, bench.tmp / "shared", log=bench.log)
    except (OSError, RuntimeError, ValueError) as e:
        bench.fail(SCENARIO, "storage-manager", str(e))


def scenario_lines(bench: Any) -> list[str]:
    figures = bench.figures.get(SCENARIO)
    return report_lines(figures) if figures else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.shared")
    parser.add_argument("--quick", action="store_true", help="a 128 MiB model")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--store-only", action="store_true", help="only the runs with the store")
    args = parser.parse_args(argv)
    modes = ("store",) if args.store_only else ("no_store", "store")
    with tempfile.TemporaryDirectory(prefix="sm-bench-shared-", dir=args.workdir) as tmp:
        figures = run(args.quick, Path(tmp), modes=modes)
    print("\n".join(report_lines(figures)))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
