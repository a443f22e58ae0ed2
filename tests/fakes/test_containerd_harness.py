"""The containerd harness works, and pins down what containerd 1.6 sends to a mirror host.

A real ``docker-registry`` holds a small image for the running platform; a private containerd
fetches it with ``ctr content fetch --hosts-dir`` (no unpack). The recorded requests are what the
``/v2`` API of storage-manager will see when containerd uses it as a ``[host]`` in ``hosts.toml``:

* ``HEAD /v2/<repo>/manifests/<tag>?ns=<registry host>`` (only with the ``resolve`` capability),
  ``Accept`` listing the four manifest types and ``*/*``;
* ``GET /v2/<repo>/manifests/<digest>?ns=...``, ``Accept: <descriptor media type>, */*``;
* ``GET /v2/<repo>/blobs/<digest>?ns=...`` for the config and each layer, same ``Accept`` form;
* ``User-Agent: containerd/<version>``, ``Accept-Encoding: gzip`` on GETs, no ``Range`` on a
  first attempt, no ``/v2/`` ping, no credentials when the registry is anonymous.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.containerd import (
    Containerd,
    CtrError,
    RecordedRequest,
    RecordingServer,
    closed_loopback_port,
    containerd_available,
    host_platform,
    write_hosts_toml,
)
from tests.support.images import (
    MANIFEST_MEDIA_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Blobs,
    push_image_tree,
    random_bytes,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.skipif(
    not containerd_available(), reason="containerd is not installed (apt-get install containerd)"
)

HEAD_ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.oci.image.index.v1+json, */*"
)
"""The ``Accept`` header of containerd 1.6's resolve (``HEAD .../manifests/<tag>``)."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    with Containerd(tmp_path / "containerd") as ctrd:
        yield ctrd


def _arch() -> str:
    return host_platform().split("/", 1)[1]


def _push_image(registry: Registry, repo: str, tag: str = "v1") -> tuple[Blobs, dict[str, Any]]:
    """A two-layer tar+gzip OCI image for the running platform, pushed as ``repo:tag``."""
    blobs = Blobs()
    top = blobs.image(
        arch=_arch(),
        layers=[f"{repo} layer one\n".encode(), f"{repo} layer two\n".encode() * 100],
        gzip_layers=True,
    )
    digest = push_image_tree(registry.url, repo, blobs, top, tag)
    assert digest == top["digest"]
    return blobs, top


def _assert_all_content(ctrd: Containerd, blobs: Blobs, ref: str, top: dict[str, Any]) -> None:
    present = ctrd.list_content()
    missing = set(blobs) - present
    assert not missing, f"not in containerd's content store: {missing}"
    for digest in blobs:
        assert ctrd.read_content(digest) == blobs.bytes_of(digest)
    assert ctrd.list_images().get(ref) == top["digest"]


def _describe(requests: list[RecordedRequest]) -> str:
    """One line per request: method, target, headers (for assertion messages)."""
    return "\n".join(
        f"{r.method} {r.target} -> {r.status} {json.dumps(dict(r.headers))}" for r in requests
    )


def _expected_fetches(blobs: Blobs, top: dict[str, Any]) -> list[tuple[str, str]]:
    """``(kind, digest)`` of what containerd downloads for a single-platform image."""
    manifest = json.loads(blobs.bytes_of(top["digest"]))
    return (
        [("manifests", top["digest"]), ("blobs", manifest["config"]["digest"])]
        + [("blobs", layer["digest"]) for layer in manifest["layers"]]
    )  # fmt: skip


def _media_types(blobs: Blobs, top: dict[str, Any]) -> dict[str, str]:
    manifest = json.loads(blobs.bytes_of(top["digest"]))
    types = {top["digest"]: top["mediaType"], manifest["config"]["digest"]: OCI_CONFIG}
    types |= {layer["digest"]: layer["mediaType"] for layer in manifest["layers"]}
    return types


def test_pull_from_registry_as_server(registry: Registry, containerd: Containerd) -> None:
    repo = "harness/server-only"
    blobs, top = _push_image(registry, repo)
    toml = write_hosts_toml(containerd.hosts_dir, registry.host, server_url=registry.url)
    assert toml.read_text().rstrip().endswith("[host]")  # the containerd 1.6 parser workaround
    ref = f"{registry.host}/{repo}:v1"

    containerd.pull(ref)

    _assert_all_content(containerd, blobs, ref, top)
    assert top["mediaType"] == OCI_MANIFEST
    assert all(
        d["mediaType"] == OCI_LAYER_GZIP
        for d in json.loads(blobs.bytes_of(top["digest"]))["layers"]
    )


def test_hosts_toml_server_is_used(registry: Registry, containerd: Containerd) -> None:
    """A ``server`` nobody listens on makes the pull fail: hosts.toml is not silently ignored,
    and a ``server`` other than the reference's host gets ``?ns=`` too."""
    repo = "harness/dead-server"
    _push_image(registry, repo)
    dead = f"http://127.0.0.1:{closed_loopback_port()}"
    write_hosts_toml(containerd.hosts_dir, registry.host, server_url=dead)

    with pytest.raises(CtrError) as info:
        containerd.pull(f"{registry.host}/{repo}:v1")

    stderr = info.value.proc.stderr if info.value.proc is not None else ""
    assert "connection refused" in stderr
    assert f"{dead}/v2/{repo}/manifests/v1?ns={registry.host.replace(':', '%3A')}" in stderr
    assert containerd.list_content() == set()


def test_unparsable_hosts_toml_is_an_error(registry: Registry, containerd: Containerd) -> None:
    """containerd 1.6.20 ignores a hosts.toml without a ``[host]`` tree (containerd#10027);
    ``pull`` turns that into an error instead of a pull that silently used the defaults."""
    repo = "harness/server-line-only"
    _push_image(registry, repo)
    path = containerd.hosts_dir / registry.host / "hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'server = "{registry.url}"\n')

    with pytest.raises(CtrError, match="could not parse"):
        containerd.pull(f"{registry.host}/{repo}:v1")


@pytest.mark.parametrize(
    "capabilities", [("pull", "resolve"), ("pull",)], ids=["pull+resolve", "pull-only"]
)
def test_mirror_answering_404_falls_back_to_server(
    registry: Registry, containerd: Containerd, capabilities: tuple[str, ...]
) -> None:
    repo = f"harness/mirror-404-{len(capabilities)}"
    blobs, top = _push_image(registry, repo)
    ref = f"{registry.host}/{repo}:v1"
    with RecordingServer() as mirror:
        write_hosts_toml(
            containerd.hosts_dir,
            registry.host,
            server_url=registry.url,
            mirror_url=mirror.url,
            capabilities=capabilities,
        )
        proc = containerd.pull(ref)
        seen = mirror.recorded()
        mirror_host = mirror.host

    # (a) the pull succeeded through the server.
    _assert_all_content(containerd, blobs, ref, top)
    if "resolve" in capabilities:  # (only the resolver logs its fallback)
        assert "trying next host - response was http.StatusNotFound" in proc.stderr
    # (b) every request to the mirror names the registry it is for.
    assert seen, "containerd sent nothing to the mirror"
    for r in seen:
        assert r.query == {"ns": [registry.host]}, _describe(seen)
        assert r.target.endswith(f"?ns={registry.host.replace(':', '%3A')}")
    # (c) exactly which requests, in which form.
    resolve = [("HEAD", f"/v2/{repo}/manifests/v1")] if "resolve" in capabilities else []
    fetches = [("GET", f"/v2/{repo}/{kind}/{d}") for kind, d in _expected_fetches(blobs, top)]
    got = [(r.method, r.path) for r in seen]
    # The manifest first; then the config and the layers, concurrently (in any order).
    assert got[: len(resolve) + 1] == resolve + fetches[:1], _describe(seen)
    assert sorted(got) == sorted(resolve + fetches), _describe(seen)
    types = _media_types(blobs, top)
    for r in seen:
        assert (r.header("user-agent") or "").startswith("containerd/1.6"), r
        assert r.header("authorization") is None and r.header("range") is None, r
        if r.method == "HEAD":
            assert r.header_names() == ["host", "user-agent", "accept"], r
            assert r.header("accept") == HEAD_ACCEPT
        else:
            assert r.header_names() == ["host", "user-agent", "accept", "accept-encoding"], r
            digest = r.path.rsplit("/", 1)[1]
            assert r.header("accept") == f"{types[digest]}, */*"
            assert r.header("accept-encoding") == "gzip"
        assert r.header("host") == mirror_host


@pytest.mark.parametrize("digest_header", [True, False], ids=["digest-header", "no-digest-header"])
def test_mirror_alone_serves_the_whole_pull(
    registry: Registry, containerd: Containerd, digest_header: bool
) -> None:
    """The mirror is the only host that works (``server`` is a closed port): containerd pulls
    everything through it. Without ``Docker-Content-Digest`` on the HEAD answer, containerd
    GETs the manifest by tag to compute the digest itself."""
    repo = f"harness/mirror-only-{int(digest_header)}"
    blobs, top = _push_image(registry, repo)
    ref = f"{registry.host}/{repo}:v1"
    drop = () if digest_header else ("Docker-Content-Digest",)
    with RecordingServer(upstream=registry.url, drop_headers=drop) as mirror:
        write_hosts_toml(
            containerd.hosts_dir,
            registry.host,
            server_url=f"http://127.0.0.1:{closed_loopback_port()}",
            mirror_url=mirror.url,
        )
        containerd.pull(ref)
        seen = mirror.recorded()

    _assert_all_content(containerd, blobs, ref, top)
    assert all(r.status == 200 for r in seen), _describe(seen)
    assert all(r.query == {"ns": [registry.host]} for r in seen), _describe(seen)
    resolve = [("HEAD", f"/v2/{repo}/manifests/v1")]
    if not digest_header:
        resolve.append(("GET", f"/v2/{repo}/manifests/v1"))
    fetches = [("GET", f"/v2/{repo}/{kind}/{d}") for kind, d in _expected_fetches(blobs, top)]
    got = [(r.method, r.path) for r in seen]
    assert got[: len(resolve)] == resolve, _describe(seen)
    assert sorted(got) == sorted(resolve + fetches), _describe(seen)
    if not digest_header:
        by_tag = seen[1]
        assert by_tag.header("accept") == HEAD_ACCEPT, by_tag


def test_interrupted_blob_is_resumed_with_a_range_request(
    registry: Registry, containerd: Containerd
) -> None:
    """A blob body cut short makes containerd (within the same pull) ask the same host again
    for the rest: ``Range: bytes=<received>-``, and then no ``Accept-Encoding``."""
    repo = "harness/resume"
    blobs = Blobs()
    big = random_bytes(3 << 20, seed=7)
    top = blobs.image(arch=_arch(), layers=[big])
    push_image_tree(registry.url, repo, blobs, top, "v1")
    layer = json.loads(blobs.bytes_of(top["digest"]))["layers"][0]["digest"]
    ref = f"{registry.host}/{repo}:v1"
    with RecordingServer(upstream=registry.url, truncate_once=[layer]) as mirror:
        write_hosts_toml(
            containerd.hosts_dir,
            registry.host,
            server_url=f"http://127.0.0.1:{closed_loopback_port()}",
            mirror_url=mirror.url,
        )
        containerd.pull(ref)
        seen = mirror.recorded()

    _assert_all_content(containerd, blobs, ref, top)
    layer_gets = [r for r in seen if r.path.endswith(f"/blobs/{layer}")]
    assert [r.status for r in layer_gets] == [200, 206], _describe(seen)
    first, again = layer_gets
    assert first.header("range") is None
    assert again.header("range") == f"bytes={len(big) // 2}-"
    assert again.header_names() == ["host", "user-agent", "accept", "range"], again
    assert again.query == {"ns": [registry.host]}


def test_index_is_resolved_then_one_platform_fetched(
    registry: Registry, containerd: Containerd
) -> None:
    """For an image index the mirror sees the index, then only the running platform's image."""
    repo = "harness/index"
    blobs = Blobs()
    other = "arm64" if _arch() != "arm64" else "amd64"
    mine = blobs.image(arch=_arch(), layers=[b"mine\n"], gzip_layers=True)
    theirs = blobs.image(arch=other, layers=[b"theirs\n"], gzip_layers=True)
    top = blobs.index([mine, theirs])
    push_image_tree(registry.url, repo, blobs, top, "multi")
    ref = f"{registry.host}/{repo}:multi"
    with RecordingServer(upstream=registry.url) as mirror:
        write_hosts_toml(
            containerd.hosts_dir,
            registry.host,
            server_url=f"http://127.0.0.1:{closed_loopback_port()}",
            mirror_url=mirror.url,
        )
        containerd.pull(ref)
        seen = mirror.recorded()

    mine_digests = {d for _, d in _expected_fetches(blobs, mine)}
    theirs_digests = {d for _, d in _expected_fetches(blobs, theirs)}
    present = containerd.list_content()
    assert mine_digests | {top["digest"]} <= present
    assert not theirs_digests & present
    assert containerd.list_images().get(ref) == top["digest"]
    got = [(r.method, r.path) for r in seen]
    assert got[:3] == [
        ("HEAD", f"/v2/{repo}/manifests/multi"),
        ("GET", f"/v2/{repo}/manifests/{top['digest']}"),
        ("GET", f"/v2/{repo}/manifests/{mine['digest']}"),
    ], _describe(seen)
    assert seen[1].header("accept") == f"{OCI_INDEX}, */*"
    assert seen[2].header("accept") == f"{OCI_MANIFEST}, */*"
    assert len(got) == 3 + 1 + 1, _describe(seen)  # + config + one layer
    assert set(MANIFEST_MEDIA_TYPES) <= set(HEAD_ACCEPT.split(", "))


def test_default_hosts_dir_applies_to_every_registry(
    registry: Registry, containerd: Containerd
) -> None:
    """``_default/hosts.toml`` (containerd 1.6.20 has it) is used for a registry with no
    directory of its own; with no ``server`` line the reference's own host is the fallback."""
    repo = "harness/default"
    blobs, top = _push_image(registry, repo)
    ref = f"{registry.host}/{repo}:v1"
    with RecordingServer() as mirror:
        write_hosts_toml(containerd.hosts_dir, "_default", mirror_url=mirror.url)
        containerd.pull(ref)
        seen = mirror.recorded()

    _assert_all_content(containerd, blobs, ref, top)
    assert seen and seen[0].method == "HEAD", _describe(seen)
    assert all(r.query == {"ns": [registry.host]} for r in seen), _describe(seen)


def test_write_hosts_toml_format(tmp_path: Path) -> None:
    import tomllib

    path = write_hosts_toml(
        tmp_path,
        "docker.io",
        server_url="https://registry-1.docker.io",
        mirror_url=["localhost:8050", "https://mirror.example"],
        capabilities=("pull",),
        skip_verify=True,
        headers={"X-Test": 'a "quoted" value'},
    )
    assert path == tmp_path / "docker.io" / "hosts.toml"
    data = tomllib.loads(path.read_text())
    assert data["server"] == "https://registry-1.docker.io"
    assert data["skip_verify"] is True
    assert list(data["host"]) == ["http://localhost:8050", "https://mirror.example"]
    assert data["host"]["http://localhost:8050"] == {
        "capabilities": ["pull"],
        "skip_verify": True,
        "header": {"X-Test": 'a "quoted" value'},
    }
    bare = tomllib.loads(write_hosts_toml(tmp_path, "127.0.0.1:5000", "127.0.0.1:5000").read_text())
    assert bare == {"server": "http://127.0.0.1:5000", "host": {}}
    with pytest.raises(ValueError):
        write_hosts_toml(tmp_path, "docker.io/library", "https://x")
    with pytest.raises(ValueError):
        write_hosts_toml(tmp_path, "docker.io", "https://x", "http://m", capabilities=("fetch",))
