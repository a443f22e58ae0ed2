"""containerd pulls through the proxy, as a hosts.toml mirror, with the upstream gone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from proxy.fetch.ociref import Platform
from tests.support.containerd import Containerd, containerd_available, write_hosts_toml
from tests.support.images import Blobs, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import ServerProcess

pytestmark = [
    pytest.mark.skipif(not containerd_available(), reason="containerd is not installed"),
    pytest.mark.slow,
]


def test_containerd_pulls_every_blob_from_the_proxy(tmp_path: Path) -> None:
    node = Platform.running()
    blobs = Blobs()
    here = blobs.image(node.architecture, layers=[random_bytes(2_000_000, 21), b"second"])
    there = blobs.image("s390x" if node.architecture != "s390x" else "amd64", layers=[b"x"])
    top = blobs.index([here, there])
    registry = Registry(tmp_path / "registry").start()
    try:
        push_image_tree(registry.url, "team/app", blobs, top, "v1")
        upstream = registry.host
        srv = ServerProcess(tmp_path / "cache")
        with srv, srv.client() as c:
            r = c.post("/content/", json={"url": f"oci://{upstream}/team/app:v1"})
            assert r.status_code == 201, r.text
            registry.stop()  # from here on, only the proxy can answer
            with Containerd(tmp_path / "containerd") as ctrd:
                write_hosts_toml(
                    ctrd.hosts_dir,
                    upstream,
                    server_url=f"http://{upstream}",
                    mirror_url=srv.base_url,
                    capabilities=("pull", "resolve"),
                )
                ctrd.pull(f"{upstream}/team/app:v1")
                content = ctrd.list_content()
                manifest = json.loads(blobs.bytes_of(here["digest"]))
                wanted = {
                    top["digest"],
                    here["digest"],
                    manifest["config"]["digest"],
                    *(layer["digest"] for layer in manifest["layers"]),
                }
                assert wanted <= content, wanted - content
                for d in wanted:
                    assert ctrd.read_content(d) == blobs.bytes_of(d)
                assert ctrd.list_images()[f"{upstream}/team/app:v1"] == top["digest"]
        log = srv.log()
    finally:
        registry.stop()
    requests = re.findall(r'"(HEAD|GET) (/v2/\S+) HTTP/1.1" (\d+)', log)
    assert requests, log
    assert all(f"ns={upstream}" in path.replace("%3A", ":") for _, path, _ in requests), requests
    assert all(status == "200" for _, _, status in requests), requests
    assert (
        "HEAD",
        f"/v2/team/app/manifests/v1?ns={upstream.replace(':', '%3A')}",
        "200",
    ) in requests
