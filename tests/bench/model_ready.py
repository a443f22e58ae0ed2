"""Time to model ready (issue 23, item 6): from asking for a model to every tensor loaded.

Setup: the fake Hugging Face Hub (:mod:`tests.support.hfhub`, in this process; LFS files
redirected to its CDN on 127.0.0.2) serves ``org/model``: 4 safetensors shards (1 GiB in
all, ``--quick`` 256 MiB; 16 float32 tensors each, random bytes) plus ``config.json``,
``tokenizer.json`` and ``tokenizer_config.json``. Every contender runs in a process of its own
(:mod:`tests.bench.model_load`), imported and connected before the clock starts; the clock
stops when every tensor of every shard has been read with ``safetensors.safe_open``
(``framework="np"``, ``get_tensor``) from the directory the contender answered. Side by side,
interleaved, :data:`ROUNDS` rounds:

* ``sm O_DIRECT``: a fresh storage-manager with ``--direct-writes`` on an empty cache,
  ``POST /content/ hf://<hub>/org/model``, then the load from the answer's ``directory``;
* ``sm --buffered-writes``: the same with ``--buffered-writes`` (the default since this
  benchmark chose it; the flag keeps the figures right whatever the default);
* ``snapshot_download``: ``huggingface_hub.snapshot_download`` (its defaults: 8 threads,
  plain HTTP since the fake hub advertises no Xet) into an empty cache, then the same load;
* ``sm warm O_DIRECT`` and ``sm warm --buffered-writes``: a second node whose cache already
  has the model (pulled in that write mode and loaded once before the rounds, so its files
  are in the page cache): the same request and load;
* ``bare load``: the load alone from a plain directory of the same files in the page cache.

Before every run ``sync(2)`` writes back what the previous one left dirty (timed and
reported, outside the clock: the write-back that buffered writes and ``snapshot_download``
leave behind). Targets (the issue's): cold ``sm`` no slower than ``snapshot_download`` +
load; ``sm warm`` within 1.1x of the bare load. The cold runs also show the cost of
``O_DIRECT`` on the first load (its files are not in the page cache once written), and
:func:`write_mode_verdict` says which write mode gets the model ready sooner.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from tests.bench.harness import MeasurementError, MiB, http_client, settle_disk
from tests.bench.loads import clean_env
from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from tests.bench.run import Bench

SCENARIO = "model_ready"
REPO = "org/model"
SHARDS = 4
TENSORS = 16  # per shard
MODEL_SIZE = 1 << 30
ROUNDS = 5
COLD_TARGET = 1.0  # sm cold <= 1.0 x snapshot_download + load
WARM_TARGET = 1.1  # sm warm <= 1.1 x the bare load
CLEAR_WIN = 0.9  # buffered wins clearly: median <= 0.9 x O_DIRECT's and every run faster

DIRECT = "sm O_DIRECT"
BUFFERED = "sm --buffered-writes"
HF = "snapshot_download"
WARM = "sm warm O_DIRECT"
WARM_BUFFERED = "sm warm --buffered-writes"
BARE = "bare load"
CONTENDERS = (DIRECT, BUFFERED, HF, WARM, WARM_BUFFERED, BARE)

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "num_hidden_layers": SHARDS * TENSORS,
    "torch_dtype": "float32",
}
TOKENIZER_CONFIG = {"model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"}


def shard(index: int, size: int, seed: int) -> bytes:
    """A safetensors file of ``TENSORS`` float32 tensors of random bytes, ``size`` in all."""
    per = size // TENSORS // 4096 * 4096
    header: dict[str, Any] = {"__metadata__": {"format": "np"}}
    for t in range(TENSORS):
        name = f"model.layers.{index * TENSORS + t}.weight"
        header[name] = {
            "dtype": "F32",
            "shape": [per // 4096, 1024],
            "data_offsets": [t * per, (t + 1) * per],
        }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    body = np.random.default_rng(seed).bytes(per * TENSORS)
    return len(raw).to_bytes(8, "little") + raw + body


def model_files(size: int) -> dict[str, bytes]:
    files = {
        f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors": shard(i, size // SHARDS, 2300 + i)
        for i in range(SHARDS)
    }
    files["config.json"] = json.dumps(CONFIG, indent=2).encode()
    vocab = {f"tok{i}": i for i in range(32000)}
    files["tokenizer.json"] = json.dumps({"version": "1.0", "model": {"vocab": vocab}}).encode()
    files["tokenizer_config.json"] = json.dumps(TOKENIZER_CONFIG).encode()
    return files


class Worker:
    """One :mod:`tests.bench.model_load` process: started, ready, then timed on ``go``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.model_load", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1"),
        )

    def run(self, timeout: float) -> dict[str, Any]:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            first = proc.stdout.readline().strip()
            if first != "ready":
                proc.kill()
                _, err = proc.communicate(timeout=30)
                raise MeasurementError(f"model_load: {first} {err[-1500:]}")
            out, err = proc.communicate("go\n", timeout=timeout)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            proc.communicate(timeout=30)
            raise MeasurementError("model_load did not finish") from e
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        if "error" in result or not result:
            raise MeasurementError(f"model_load: {result.get('error')} {err[-1500:]}")
        return result


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(float(statistics.median(values)), 3),
        "max": round(max(values), 3),
    }


class ModelReady:
    """The scenario's fixtures and runs; figures in ``bench.figures["model_ready"]``."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.size = MODEL_SIZE // 4 if bench.plan.quick else MODEL_SIZE
        self.work = bench.tmp / SCENARIO
        self.expected: dict[str, int] = {}
        self.runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
        self.failed: set[str] = set()
        self._n = 0

    def timeout(self) -> float:
        return 120 + self.size / (10 * MiB)

    def check(self, result: dict[str, Any]) -> dict[str, Any]:
        want = self.expected
        if result["tensors"] != want["tensors"] or result["bytes"] != want["bytes"]:
            raise MeasurementError(
                f"loaded {result['tensors']} tensors, {result['bytes']} bytes; expected "
                f"{self.expected['tensors']}, {self.expected['bytes']}"
            )
        return result

    def timed(self, spec: dict[str, Any]) -> dict[str, Any]:
        sync = settle_disk()
        worker = Worker(spec)
        result = self.check(worker.run(self.timeout()))
        result["sync_before_s"] = round(sync, 3)
        return result

    def cold_sm(self, hub: FakeHub, *args: str) -> dict[str, Any]:
        self._n += 1
        cache = self.work / f"cold-{self._n}"
        server = ServerProcess(cache, *args)
        try:
            server.start(timeout=60)
            return self.timed({"mode": "sm", "base_url": server.base_url, "url": self.url(hub)})
        finally:
            server.stop()
            shutil.rmtree(cache, ignore_errors=True)

    def cold_hf(self, hub: FakeHub) -> dict[str, Any]:
        self._n += 1
        cache = self.work / f"hf-{self._n}"
        try:
            return self.timed(
                {"mode": "hf", "endpoint": hub.endpoint, "repo": REPO, "cache_dir": str(cache)}
            )
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def prime(self, hub: FakeHub, node: ServerProcess) -> None:
        """Start ``node``, pull the model into it, load it once (into the page cache)."""
        node.start(timeout=60)
        with http_client(self.timeout(), base_url=node.base_url) as client:
            r = client.post("/content/", json={"url": self.url(hub)})
        if r.status_code != 201:
            raise MeasurementError(f"warm node: {r.status_code} {r.text[:300]}")
        self.check(Worker({"mode": "load", "directory": r.json()["directory"]}).run(600))

    @staticmethod
    def url(hub: FakeHub) -> str:
        return f"hf://{hub.host}/{REPO}"

    def record(self, name: str, fn: Any) -> None:
        if name in self.failed:
            return
        result = self.bench.attempt(SCENARIO, name, fn)
        if result is None:
            self.failed.add(name)
            return
        self.runs[name].append(result)
        self.bench.log(
            f"model_ready: {name}: {result['seconds']:.2f} s (request {result['request_s']:.2f}"
            f" + load {result['load_s']:.2f}; sync before {result['sync_before_s']:.2f})"
        )

    def run(self) -> None:
        bench = self.bench
        bench.log(f"model_ready: making a model of {SHARDS} shards, {self.size // MiB} MiB")
        files = model_files(self.size)
        shards = [d for name, d in files.items() if name.endswith(".safetensors")]
        self.expected = {
            "tensors": SHARDS * TENSORS,
            "bytes": sum(len(d) - 8 - int.from_bytes(d[:8], "little") for d in shards),
        }
        bare = self.work / "bare"
        bare.mkdir(parents=True)
        for name, data in files.items():
            (bare / name).write_bytes(data)
        with FakeHub() as hub:
            hub.add_repo(REPO)
            for name, data in files.items():
                hub.add_file(REPO, name, data)
            hub.commit(REPO)
            del files, shards
            warm = {
                WARM: ServerProcess(self.work / "warm-direct", "--direct-writes"),
                WARM_BUFFERED: ServerProcess(self.work / "warm-buffered", "--buffered-writes"),
            }
            try:
                for node in warm.values():
                    self.prime(hub, node)
                # The bare files too: in the page cache, as for a model in use.
                self.check(Worker({"mode": "load", "directory": str(bare)}).run(600))
                for n in range(ROUNDS):
                    bench.log(f"model_ready: round {n + 1} of {ROUNDS}")
                    self.record(DIRECT, lambda: self.cold_sm(hub, "--direct-writes"))
                    self.record(BUFFERED, lambda: self.cold_sm(hub, "--buffered-writes"))
                    self.record(HF, lambda: self.cold_hf(hub))
                    for name, node in warm.items():
                        spec = {"mode": "sm", "base_url": node.base_url, "url": self.url(hub)}
                        self.record(name, lambda spec=spec: self.timed(spec))
                    self.record(BARE, lambda: self.timed({"mode": "load", "directory": str(bare)}))
            finally:
                for node in warm.values():
                    node.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        figures: dict[str, Any] = {
            "model": {
                "bytes": self.size,
                "shards": SHARDS,
                "tensors": self.expected["tensors"],
                "tensor_bytes": self.expected["bytes"],
                "rounds": ROUNDS,
            }
        }
        for name, runs in self.runs.items():
            if runs and name not in self.failed:
                figures[name] = {
                    "runs": len(runs),
                    "seconds": _spread([r["seconds"] for r in runs]),
                    "request_s": _spread([r["request_s"] for r in runs]),
                    "load_s": _spread([r["load_s"] for r in runs]),
                    "sync_before_s": _spread([r["sync_before_s"] for r in runs]),
                    "raw": runs,
                }
        figures["write_mode"] = {"verdict": write_mode_verdict(figures)}
        bench.figures[SCENARIO] = figures


def run_model_ready(bench: Bench) -> None:
    bench.attempt(SCENARIO, "setup", ModelReady(bench).run)


def _clear_win(faster: dict[str, float], slower: dict[str, float]) -> bool:
    return faster["median"] <= CLEAR_WIN * slower["median"] and faster["max"] < slower["min"]


def write_mode_verdict(figures: dict[str, Any]) -> str:
    """Which write mode gets the model ready sooner: cold (the first pull and load) and warm
    (a node that has had the model for a while, loading it again from the page cache)."""
    parts = []
    for title, direct, buffered in (("cold", DIRECT, BUFFERED), ("warm", WARM, WARM_BUFFERED)):
        d = figures.get(direct, {}).get("seconds")
        b = figures.get(buffered, {}).get("seconds")
        if d is None or b is None:
            parts.append(f"{title}: n/a")
            continue
        if _clear_win(b, d):
            winner = "--buffered-writes clearly"
        elif _clear_win(d, b):
            winner = "O_DIRECT clearly"
        else:
            winner = "neither clearly"
        parts.append(
            f"{title}: {winner} (median O_DIRECT {d['median']:.2f} s, buffered "
            f"{b['median']:.2f} s, {b['median'] / d['median']:.2f}x)"
        )
    return (
        "; ".join(parts)
        + f" [clear: median <= {CLEAR_WIN}x the other's and no overlap of the runs]"
    )


# -- the report -----------------------------------------------------------------------------------


def report_lines(bench: Bench) -> list[str]:
    figures = bench.figures.get(SCENARIO)
    if not figures or "model" not in figures:
        return []
    model = figures["model"]
    header = (
        f"model_ready: {model['bytes'] // MiB} MiB in {model['shards']} shards, "
        f"{model['tensors']} tensors",
        "total min / median / max",
        "request (median)",
        "load (median)",
        "sync before (median)",
    )
    rows: list[tuple[str, ...]] = [header]
    for name in CONTENDERS:
        fig = figures.get(name)
        if fig is None:
            rows.append((name, "NOT MEASURED", "", "", ""))
            continue
        s = fig["seconds"]
        rows.append(
            (
                name,
                f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} s",
                f"{fig['request_s']['median']:.2f} s",
                f"{fig['load_s']['median']:.2f} s",
                f"{fig['sync_before_s']['median']:.2f} s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"write mode: {figures['write_mode']['verdict']}")
    return lines


def comparisons(bench: Bench) -> list[dict[str, Any]]:
    figures = bench.figures.get(SCENARIO, {})
    rows = []
    for ours, other, most, title in (
        (DIRECT, HF, COLD_TARGET, "model ready, cold (O_DIRECT)"),
        (BUFFERED, HF, COLD_TARGET, "model ready, cold (--buffered-writes)"),
        (WARM, BARE, WARM_TARGET, "model ready, warm node (O_DIRECT)"),
        (WARM_BUFFERED, BARE, WARM_TARGET, "model ready, warm node (--buffered-writes)"),
    ):
        mine = figures.get(ours, {}).get("seconds", {}).get("median")
        theirs = figures.get(other, {}).get("seconds", {}).get("median")
        ratio = mine / theirs if mine is not None and theirs else None
        rows.append(
            {
                "scenario": SCENARIO,
                "title": title,
                "unit": "s",
                "storage_manager": mine,
                "other": other,
                "other_value": theirs,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "ratio_definition": "ours / other (lower is better)",
                "target": f"<= {most}x",
                "target_max": most,
                "met": None if ratio is None else ratio <= most,
                "measured": ratio is not None,
            }
        )
    return rows
