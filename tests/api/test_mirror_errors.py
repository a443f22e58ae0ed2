"""A mirror manifest fill that fails upstream answers the error table's OCI
error (a 5xx with UNAVAILABLE, ...), never 404 MANIFEST_UNKNOWN: a missing
manifest and a broken upstream are different answers."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fetch.test_oci_protocol import host_of, serve_image
from tests.support.images import Blobs, push_image_tree
from tests.support.registry import Registry
from tests.support.server import ServerProcess
from tests.support.source import Source

FAST = ("--retries", "0", "--retry-backoff", "0.01")


def _oci_error(r: httpx.Response) -> tuple[int, str]:
    assert r.headers["content-type"] == "application/json"
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    errors = r.json()["errors"]
    assert len(errors) == 1 and set(errors[0]) == {"code", "message", "detail"}
    return r.status_code, errors[0]["code"]


def test_stopped_upstream_registry_is_unavailable_not_unknown(tmp_path: Path) -> None:
    b = Blobs()
    image = b.image("amd64", layers=[b"one"])
    with Registry(tmp_path / "registry") as reg:
        push_image_tree(reg.url, "app", b, image, "v1")
        upstream = reg.host
        args = ("--mirror", "--upstream", upstream, *FAST)
        with ServerProcess(tmp_path / "c", *args) as srv, srv.client() as c:
            # While it runs, a tag it does not have is unknown (its 404 is passed on).
            r = c.get("/v2/app/manifests/nope")
            assert _oci_error(r) == (404, "MANIFEST_UNKNOWN")
            reg.stop()
            for ref in ("v1", image["digest"]):
                r = c.get(f"/v2/app/manifests/{ref}")
                assert _oci_error(r) == (502, "UNAVAILABLE"), r.text
                assert upstream in r.json()["errors"][0]["message"]
            # HEAD: the same status, no body.
            assert c.head("/v2/app/manifests/v1").status_code == 502


def test_upstream_5xx_and_429_in_a_manifest_fill(tmp_path: Path, source: Source) -> None:
    for tag in ("ok", "broken", "limited"):
        serve_image(source, "r", tag, [b"layer"])
    source.fail_status("/v2/r/manifests/broken", 500)
    source.fail_status("/v2/r/manifests/limited", 429)
    args = ("--mirror", "--upstream", host_of(source), *FAST)
    with ServerProcess(tmp_path / "c", *args) as srv, srv.client() as c:
        assert _oci_error(c.get("/v2/r/manifests/broken")) == (502, "UNAVAILABLE")
        assert _oci_error(c.get("/v2/r/manifests/limited")) == (429, "TOOMANYREQUESTS")
        assert c.get("/v2/r/manifests/ok").status_code == 200


def test_upstream_refusing_the_credentials_stays_unknown(tmp_path: Path, source: Source) -> None:
    """401/403 upstream: 404 MANIFEST_UNKNOWN, as before (containerd goes on to
    its next host), with upstream's reason in the message."""
    serve_image(source, "r", "t", [b"layer"])
    source.fail_status("/v2/r/manifests/t", 403)
    args = ("--mirror", "--upstream", host_of(source), *FAST)
    with ServerProcess(tmp_path / "c", *args) as srv, srv.client() as c:
        r = c.get("/v2/r/manifests/t")
        assert _oci_error(r) == (404, "MANIFEST_UNKNOWN")
        assert "403" in r.json()["errors"][0]["message"]
