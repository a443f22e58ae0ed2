"""The client configurations shipped in ``conf/`` are what containerd and nydusd expect.

* ``conf/containerd/certs.d/*/hosts.toml``: their structure, and a real containerd 1.6 pull
  through a copy of each (only the addresses swapped for a local registry and a recording
  mirror), which fails if containerd cannot parse the file.
* ``conf/nydusd/*.json``: every key against the field names of nydus's config structs
  (``tests/support/nydus_config_fields.py``), since nydus ignores unknown keys silently.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.containerd import (
    Containerd,
    RecordingServer,
    containerd_available,
    host_platform,
)
from tests.support.images import Blobs, push_image_tree
from tests.support.nydus_config_fields import (
    FS_PREFETCH_CONTROL,
    PROXY_CONFIG,
    REGISTRY_CONFIG,
    check_legacy_config,
)
from tests.support.registry import Registry

CONF = Path(__file__).resolve().parents[2] / "conf"
CERTS_D = CONF / "containerd" / "certs.d"
NYDUSD = CONF / "nydusd"
PROXY_URL = "http://localhost:8050"

needs_containerd = pytest.mark.skipif(
    not containerd_available(), reason="containerd is not installed (apt-get install containerd)"
)


def _load_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- containerd ---------------------------------------------------------------------------------


def test_docker_io_hosts_toml() -> None:
    data = _load_toml(CERTS_D / "docker.io" / "hosts.toml")
    assert data == {
        "server": "https://registry-1.docker.io",
        "host": {PROXY_URL: {"capabilities": ["pull", "resolve"]}},
    }


def test_default_hosts_toml() -> None:
    data = _load_toml(CERTS_D / "_default" / "hosts.toml")
    assert "server" not in data  # the image's own registry is the fallback
    assert data == {"host": {PROXY_URL: {"capabilities": ["pull", "resolve"]}}}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def _push(registry: Registry, repo: str) -> Blobs:
    blobs = Blobs()
    top = blobs.image(
        arch=host_platform().split("/", 1)[1], layers=[repo.encode()], gzip_layers=True
    )
    push_image_tree(registry.url, repo, blobs, top, "v1")
    return blobs


@needs_containerd
@pytest.mark.parametrize("name", ["docker.io", "_default"])
def test_containerd_pulls_through_a_copy_of_the_shipped_hosts_toml(
    name: str, registry: Registry, tmp_path: Path
) -> None:
    """The file is installed for the local registry (``docker.io/`` renamed after it, or
    ``_default/`` as is), with storage-manager's address pointing at a mirror that answers 404
    and ``server`` at the registry: the pull succeeds by falling back, and the mirror saw every
    request first, with ``?ns=<registry>``."""
    repo = f"conf/{name.strip('_').replace('.', '-')}"
    blobs = _push(registry, repo)
    text = (CERTS_D / name / "hosts.toml").read_text()
    hosts = tmp_path / "certs.d"
    with RecordingServer() as mirror, Containerd(tmp_path / "containerd") as ctrd:
        assert PROXY_URL in text
        text = text.replace(PROXY_URL, mirror.url)
        target = name
        if name == "docker.io":
            text = text.replace("https://registry-1.docker.io", registry.url)
            target = registry.host
        (hosts / target).mkdir(parents=True)
        (hosts / target / "hosts.toml").write_text(text)

        ctrd.pull(f"{registry.host}/{repo}:v1", hosts_dir=hosts)

        assert set(blobs) <= ctrd.list_content()
        seen = mirror.recorded()
    assert [r.method for r in seen][:2] == ["HEAD", "GET"]
    assert len(seen) == len(blobs) + 1  # the resolve, then every blob (manifest included)
    assert all(r.query == {"ns": [registry.host]} for r in seen)


# -- nydusd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["registry-backend.json", "proxy-fallback.json"])
def test_nydusd_config_uses_only_known_fields(name: str) -> None:
    assert check_legacy_config(_load_json(NYDUSD / name)) == []


def test_check_legacy_config_finds_mistakes() -> None:
    doc = _load_json(NYDUSD / "proxy-fallback.json")
    doc["device"]["backend"]["config"]["proxy"]["fallbak"] = True
    doc["device"]["backend"]["config"]["mirrors"] = [{"host": "http://m"}]
    doc["mode"] = "lazy"
    del doc["device"]["backend"]["config"]["repo"]
    problems = check_legacy_config(doc)
    assert "device.backend.config.proxy: unknown field 'fallbak'" in problems
    assert "device.backend.config: proxy and mirrors cannot be configured together" in problems
    assert "device.backend.config: missing or empty 'repo'" in problems
    assert any(p.startswith("mode:") for p in problems)


def test_registry_backend_points_at_storage_manager() -> None:
    doc = _load_json(NYDUSD / "registry-backend.json")
    backend = doc["device"]["backend"]
    assert backend["type"] == "registry"
    cfg = backend["config"]
    assert (cfg["scheme"], cfg["host"]) == ("http", "localhost:8050")
    assert cfg["repo"] and "proxy" not in cfg and "mirrors" not in cfg
    assert cfg["timeout"] > 5 and cfg["connect_timeout"] > 0
    assert set(cfg) <= REGISTRY_CONFIG
    assert doc["mode"] == "direct" and doc["digest_validate"] is False
    assert set(doc["fs_prefetch"]) <= FS_PREFETCH_CONTROL


def test_proxy_fallback_uses_storage_manager_as_proxy() -> None:
    doc = _load_json(NYDUSD / "proxy-fallback.json")
    cfg = doc["device"]["backend"]["config"]
    assert doc["device"]["backend"]["type"] == "registry"
    assert (cfg["scheme"], cfg["host"]) == ("https", "registry-1.docker.io")
    proxy = cfg["proxy"]
    assert set(proxy) == PROXY_CONFIG
    assert proxy == {
        "url": PROXY_URL,
        "ping_url": f"{PROXY_URL}/healthz",
        "fallback": True,
        "check_interval": 5,
        "use_http": True,  # so the proxy sees GET http://<registry>/v2/... instead of CONNECT
    }


def test_shipped_conf_files_are_the_expected_ones() -> None:
    assert sorted(
        p.relative_to(CONF).as_posix() for p in (CONF / "containerd").rglob("*.toml")
    ) == [
        "containerd/certs.d/_default/hosts.toml",
        "containerd/certs.d/docker.io/hosts.toml",
    ]
