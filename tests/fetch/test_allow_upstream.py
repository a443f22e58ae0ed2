"""``--allow-upstream``: ``*.example.com`` suffix entries, malformed ones refused at startup,
and the example list in ``conf/`` that lets Docker Hub and Hugging Face downloads through."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import TargetDenied
from proxy.fetch.reach import ReachPolicy, check_allow_entry
from proxy.service.mirror import Denied, Mirror
from tests.support.server import ServerProcess, run_cli

CONF = Path(__file__).resolve().parents[2] / "conf"

# Hosts a Docker Hub pull and an hf:// download reach (registry, token service,
# blob CDNs; Hub, LFS CDNs, Xet bridge).
DOCKER_HUB = [
    "registry-1.docker.io",
    "auth.docker.io",
    "production.cloudflare.docker.com",
    "production.cloudfront.docker.com",
    "docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
]
HUGGING_FACE = [
    "huggingface.co",
    "cdn-lfs.huggingface.co",
    "cdn-lfs.hf.co",
    "cdn-lfs-us-1.hf.co",
    "cdn-lfs-eu-1.hf.co",
    "cas-bridge.xethub.hf.co",
    "cas-server.xethub.hf.co",
    "transfer.xethub.hf.co",
]


def allowed(policy: ReachPolicy, host: str, port: int | None = 443) -> bool:
    try:
        policy.check_host(host, port)
    except TargetDenied:
        return False
    return True


def test_a_wildcard_matches_the_names_below_the_domain_only() -> None:
    policy = ReachPolicy(allow_hosts=frozenset({"*.example.com", "*.corp.test:8443"}))
    assert allowed(policy, "a.example.com")
    assert allowed(policy, "a.b.example.com")
    assert allowed(policy, "A.Example.com.".lower())
    assert not allowed(policy, "example.com")  # the domain itself is not below itself
    assert not allowed(policy, "badexample.com")
    assert not allowed(policy, "example.com.evil.test")
    assert allowed(policy, "x.corp.test", 8443)
    assert not allowed(policy, "x.corp.test", 443)
    assert allowed(policy, "x.corp.test", None)  # an early check without the port


@pytest.mark.parametrize(
    "entry", ["*foo", "a.*.com", "*", "*.", "*.*.com", "**.example.com", "*.10.0.0.1", "http://x"]
)
def test_malformed_entries_are_named(entry: str) -> None:
    problem = check_allow_entry(entry)
    assert problem is not None and repr(entry) in problem


@pytest.mark.parametrize(
    "entry", ["example.com", "*.example.com", "*.example.com:443", "[::1]:5000", "127.0.0.1:5000"]
)
def test_good_entries_pass(entry: str) -> None:
    assert check_allow_entry(entry) is None


@pytest.mark.parametrize("entry", ["*foo", "a.*.com"])
def test_a_malformed_wildcard_is_a_startup_error(tmp_path: Path, entry: str) -> None:
    r = run_cli("--cache-dir", str(tmp_path / "c"), "--allow-upstream", f"example.org,{entry}")
    assert r.returncode == 2, r.stderr
    assert "--allow-upstream" in r.stderr and entry in r.stderr
    assert "*.example.com" in r.stderr  # says what a wildcard looks like
    r = run_cli("--cache-dir", str(tmp_path / "c"), env={"NEKKO_ALLOW_UPSTREAM": entry})
    assert r.returncode == 2 and "NEKKO_ALLOW_UPSTREAM" in r.stderr, r.stderr


def test_a_wildcard_entry_is_honoured_by_the_server(tmp_path: Path) -> None:
    args = ("--allow-upstream", "*.localhost.test")
    with ServerProcess(tmp_path / "cache", *args) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": "http://elsewhere.test/x"})
        assert r.status_code == 403, r.text
        # Allowed, so the server tries to resolve it (and cannot): not DENIED.
        r = c.post("/content/", json={"url": "http://files.localhost.test/x"})
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "UPSTREAM_UNREACHABLE"


def test_mirror_fills_from_registries_below_a_wildcard() -> None:
    none: Any = None
    mirror = Mirror(none, none, none, None, frozenset({"*.corp.test", "docker.io"}))
    assert mirror.registry_for("registry.corp.test") == "registry.corp.test"
    assert mirror.registry_for("registry.corp.test:5000") == "registry.corp.test:5000"
    assert mirror.registry_for("docker.io") == "docker.io"
    with pytest.raises(Denied):
        mirror.registry_for("corp.test")
    with pytest.raises(Denied):
        mirror.registry_for("ghcr.io")


def test_the_example_allowlist_lets_docker_hub_and_hugging_face_through() -> None:
    text = (CONF / "storage-manager.env").read_text()
    m = re.search(r"^#?\s*NEKKO_ALLOW_UPSTREAM=(.*)$", text, re.M)
    assert m is not None
    entries = frozenset(e.strip() for e in m.group(1).split(","))
    assert all(check_allow_entry(e) is None for e in entries)
    policy = ReachPolicy(allow_hosts=entries)
    for host in DOCKER_HUB + HUGGING_FACE:
        assert allowed(policy, host), host
    assert not allowed(policy, "evil.example")
    readme = (CONF.parent / "README.md").read_text()
    for entry in entries:
        assert f"`{entry}`" in readme, entry
