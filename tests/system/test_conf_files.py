"""The ready-made configs in conf/ (systemd unit, environment file, Kubernetes
DaemonSet) checked with the tools that read them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from proxy import config
from proxy.cli import make_parser

CONF = Path(__file__).resolve().parents[2] / "conf"
# Variables read by the libraries the object-store downloaders follow, and the proxy ones.
FOREIGN = re.compile(
    r"(AWS_[A-Z_]+|STORAGE_EMULATOR_HOST|AZURE_STORAGE_CONNECTION_STRING|HTTPS?_PROXY|NO_PROXY)"
)


def env_file() -> tuple[dict[str, str], list[str]]:
    """(set variables, every variable named, commented ones too)."""
    values, named = {}, []
    for line in (CONF / "storage-manager.env").read_text().splitlines():
        m = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            named.append(m.group(1))
            if not line.startswith("#"):
                values[m.group(1)] = m.group(2)
    return values, named


def test_environment_file_names_only_real_settings() -> None:
    values, named = env_file()
    known = {var for var, _ in config.ENV.values()}
    for name in named:
        assert name in known or FOREIGN.fullmatch(name), name
    cfg = config.build({}, environ=values)  # what is set parses
    assert str(cfg.cache_dir) == "/var/lib/nekko/cache"
    assert (cfg.address.host, cfg.address.port) == ("localhost", 8050)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (CONF / "storage-manager.service").read_text()
    assert "EnvironmentFile=-/etc/default/storage-manager" in unit
    assert "ReadWritePaths=/var/lib/nekko" in unit
    exe = shutil.which("storage-manager")
    assert exe is not None, "the console script is installed with the package"
    # systemd-analyze checks that ExecStart exists: point it at this install.
    local = tmp_path / "storage-manager.service"
    local.write_text(unit.replace("/usr/local/bin/storage-manager", exe))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr
    args = re.search(r"^ExecStart=\S+ (.*)$", unit, re.M)
    assert args is not None
    make_parser().parse_args(args.group(1).split())


def test_kubernetes_daemonset() -> None:
    docs = list(yaml.safe_load_all((CONF / "kubernetes" / "daemonset.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Namespace", "Secret", "Service", "DaemonSet"}
    ds = kinds["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    spec = ds["spec"]["template"]["spec"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items()
        <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    assert spec["hostNetwork"] is True  # containerd and nydusd reach it on localhost
    (container,) = spec["containers"]
    make_parser().parse_args(container["args"])
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    known = {var for var, _ in config.ENV.values()}
    assert set(env) - {"POD_IP"} <= known
    # The cache array: the headless Service's name, the TLS listener's port, the
    # pod's own IP as its address, certificates where the CSI volume is mounted.
    service = kinds["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert (
        service["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    port = service["spec"]["ports"][0]["port"]
    name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert env["NEKKO_PEERS"] == f"dns:{name}:{port}"
    assert env["NEKKO_ADVERTISE_ADDRESS"] == f"$(POD_IP):{port}"
    assert env["NEKKO_TLS_ADDRESS"] == f":{port}"
    tls_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    for var in ("NEKKO_TLS_CERT", "NEKKO_TLS_KEY", "NEKKO_TLS_CA"):
        assert env[var].startswith(tls_mount + "/")
    peers = {
        k: v for k, v in env.items() if k.startswith(("NEKKO_PEERS", "NEKKO_TLS", "NEKKO_ADV"))
    }
    env = {k: v for k, v in env.items() if k not in peers and k != "POD_IP"}
    cfg = config.build({}, environ=env)
    assert str(cfg.cache_dir) == "/var/lib/nekko/cache"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["cache"] == "/var/lib/nekko/cache"
    assert volumes["cache"]["hostPath"]["path"] == "/var/lib/nekko/cache"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, cfg.address.port)
    secret = kinds["Secret"]
    assert container["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) <= known
    assert "NEKKO_CLUSTER_TOKEN" in secret["stringData"]
