"""The process that asks for a model and loads it, for the time-to-model-ready benchmark.

``python -m tests.bench.model_load SPEC-JSON``: imports everything it needs, connects, prints
``ready``, waits for a line on stdin (the start signal), then does what ``SPEC`` says, timed
from the start signal, and prints one line of JSON with the times and what it loaded:

* ``{"mode": "sm", "base_url": ..., "url": ...}``: ``POST /content/ {"url": url}`` to a
  storage-manager node, then the load from the answer's ``directory``;
* ``{"mode": "hf", "endpoint": ..., "repo": ..., "cache_dir": ...}``:
  ``huggingface_hub.snapshot_download`` into ``cache_dir``, then the load from its answer;
* ``{"mode": "load", "directory": ...}``: the load alone.

The load: every tensor of every ``*.safetensors`` file of the directory (recursively), read
with ``safetensors.safe_open(framework="np")`` and ``get_tensor`` (a copy into a NumPy array,
so every byte is read). Every contender runs in a process of its own, started and imported
before the clock starts, so that none shares the interpreter with the fake hub.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from safetensors import safe_open


def load(directory: Path) -> dict[str, int]:
    """Read every tensor of every shard under ``directory``; the count and bytes read."""
    tensors = nbytes = 0
    for shard in sorted(directory.rglob("*.safetensors")):
        with safe_open(str(shard), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                array = f.get_tensor(key)
                tensors += 1
                nbytes += int(array.nbytes)
                del array
    return {"tensors": tensors, "bytes": nbytes}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    mode = spec["mode"]
    if mode == "sm":
        with httpx.Client(
            base_url=spec["base_url"], timeout=httpx.Timeout(600, connect=10), trust_env=False
        ) as client:
            client.get("/readyz")  # connected before the clock starts
            print("ready", flush=True)
            sys.stdin.readline()
            t0 = time.monotonic()
            r = client.post("/content/", json={"url": spec["url"]})
            t1 = time.monotonic()
            if r.status_code not in (200, 201):
                return {"error": f"POST /content/: {r.status_code} {r.text[:500]}"}
            body = r.json()
            if not body.get("directory"):
                return {"error": f"no directory in the answer: {json.dumps(body)[:500]}"}
            loaded = load(Path(body["directory"]))
            t2 = time.monotonic()
            return {"request_s": t1 - t0, "load_s": t2 - t1, "seconds": t2 - t0, **loaded}
    if mode == "hf":
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.monotonic()
        path = snapshot_download(
            spec["repo"], endpoint=spec["endpoint"], cache_dir=spec["cache_dir"], token=False
        )
        t1 = time.monotonic()
        loaded = load(Path(path))
        t2 = time.monotonic()
        return {"request_s": t1 - t0, "load_s": t2 - t1, "seconds": t2 - t0, **loaded}
    if mode == "load":
        print("ready", flush=True)
        sys.stdin.readline()
        t0 = time.monotonic()
        loaded = load(Path(spec["directory"]))
        seconds = time.monotonic() - t0
        return {"request_s": 0.0, "load_s": seconds, "seconds": seconds, **loaded}
    return {"error": f"unknown mode {mode!r}"}


def main() -> int:
    try:
        result = run(json.loads(sys.argv[1]))
    except Exception as e:  # reported to the benchmark, which records "not measured"
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
