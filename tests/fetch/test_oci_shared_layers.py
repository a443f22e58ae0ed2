"""Two pulls that share a layer: it is written once, and correctly (a review found a race)."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

from tests.fetch.test_oci_protocol import digest_of, host_of, serve_image
from tests.support.server import ServerProcess
from tests.support.source import Source


def test_two_pulls_sharing_a_layer_write_it_once_and_correctly(
    server: ServerProcess, source: Source, cache_dir: Path
) -> None:
    shared = os.urandom(4 * 1024 * 1024)
    serve_image(source, "a", "1", [shared, b"only a"])
    serve_image(source, "b", "1", [shared, b"only b"])
    d = digest_of(shared)
    for repo in ("a", "b"):
        source.set_delay(f"/v2/{repo}/blobs/{d}", 0.005, chunk=65536)

    def pull(repo: str) -> int:
        with server.client() as c:
            return c.post(
                "/content/", json={"url": f"oci://{host_of(source)}/{repo}:1"}
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(pull, ["a", "b"])) == [201, 201]
    assert (cache_dir / "blobs" / "sha256" / d[7:]).read_bytes() == shared
    full_gets = [q for q in source.requests if q.path.endswith(d) and q.method == "GET"]
    assert len(full_gets) == 1
