"""The Dockerfile that builds the DaemonSet's image, and the README's steps to
install the systemd unit, checked against what they name. No container
engine runs here: the Dockerfile is parsed, not built; what it copies is
built into a wheel to show that it installs the package and its script."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from proxy import config
from proxy.cli import make_parser

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    parsed = yaml.safe_load(args)  # a JSON array is YAML too
    assert isinstance(parsed, list), f"exec form expected: {args}"
    return [str(a) for a in parsed]


def daemonset_container() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((ROOT / "conf/kubernetes/daemonset.yaml").read_text()))
    spec = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def test_the_dockerfile_installs_this_package_and_runs_its_script() -> None:
    steps = instructions()
    first = steps[0]
    assert first[0] == "FROM" and re.fullmatch(r"python:3\.1[1-9]-slim", first[1])
    runs = [args for word, args in steps if word == "RUN"]
    assert any(re.search(r"\bpip install \.(\s|$)", r) for r in runs)
    entry = exec_form(next(a for w, a in steps if w == "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["storage-manager"] and "storage-manager" in scripts
    command = exec_form(next(a for w, a in steps if w == "CMD"))
    args = make_parser().parse_args(command)
    assert args.command == "serve"
    cfg = config.build({"address": "0.0.0.0:8050"}, environ={})
    exposed = {int(p.split("/")[0]) for w, a in steps if w == "EXPOSE" for p in a.split()}
    assert command[command.index("--address") + 1] == "0.0.0.0:8050"
    assert cfg.address.port in exposed
    env = dict(
        kv.split("=", 1) for w, a in steps if w == "ENV" for kv in shlex.split(a) if "=" in kv
    )
    assert env["CACHE_DIR"] in exec_form(next(a for w, a in steps if w == "VOLUME"))


def test_the_image_user_is_not_root_and_is_the_daemonsets() -> None:
    steps = instructions()
    users = [a for w, a in steps if w == "USER"]
    assert users, "the image names its USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-root uid (runAsNonRoot checks it)"
    assert any(f"--uid {uid}" in a for w, a in steps if w == "RUN")
    env = dict(
        kv.split("=", 1) for w, a in steps if w == "ENV" for kv in shlex.split(a) if "=" in kv
    )
    assert any(f"chown -R {uid}:{gid}" in a and "/var/lib/nekko" in a for w, a in steps)
    spec, container = daemonset_container()
    context = container["securityContext"]
    assert context["runAsUser"] == int(uid) and context["runAsGroup"] == int(gid)
    assert context["runAsNonRoot"] is True
    # The cache (a hostPath kubelet creates as root) is handed to that user first.
    (init,) = spec["initContainers"]
    assert init["image"] == container["image"]
    assert f"chown -h {uid}:{gid}" in " ".join(init["command"])
    assert {m["mountPath"] for m in init["volumeMounts"]} == {env["CACHE_DIR"]}
    # The port and the image's name and version.
    exposed = {int(p.split("/")[0]) for w, a in steps if w == "EXPOSE" for p in a.split()}
    assert {p["containerPort"] for p in container["ports"]} == exposed  # the API, peers' TLS
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"].endswith(f"/storage-manager:{version}")
    assert f"docker build -t {container['image']} ." in (ROOT / "README.md").read_text()


def test_what_the_dockerfile_copies_builds_the_package(tmp_path: Path) -> None:
    """The build context the .dockerignore leaves holds what COPY names, and
    what `pip install .` needs from it: every package and the console script."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def kept(rel: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if (
                fnmatch.fnmatch(rel, pat)
                or fnmatch.fnmatch(rel.split("/")[0], pat)
                or (pat.startswith("**/") and fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pat[3:]))
            ):
                keep = negate
        return keep

    context = tmp_path / "context"
    for word, args in instructions():
        if word != "COPY":
            continue
        *sources, _dest = args.split()
        for source in sources:
            path = ROOT / source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            assert files, f"COPY {source}: nothing there"
            for f in files:
                rel = str(f.relative_to(ROOT))
                if kept(rel):
                    (context / rel).parent.mkdir(parents=True, exist_ok=True)
                    (context / rel).write_bytes(f.read_bytes())
    assert (context / "pyproject.toml").is_file() and (context / "proxy/cli.py").is_file()
    assert not list(context.rglob("__pycache__"))
    # What `pip install .` finds there: every package of this repository, the script.
    setuptools = pytest.importorskip("setuptools")
    project = tomllib.loads((context / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(setuptools.find_packages(where=str(context), include=include))
    here = set(setuptools.find_packages(where=str(ROOT), include=include))
    assert found == here and "proxy" in found
    assert project["project"]["scripts"]["storage-manager"] == "proxy.cli:main"
    assert (context / project["project"]["readme"]).is_file()


def test_the_readme_installs_the_systemd_unit_as_it_is_written() -> None:
    unit = (ROOT / "conf/storage-manager.service").read_text()
    readme = (ROOT / "README.md").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    exe = settings["ExecStart"].split()[0]
    env_file = settings["EnvironmentFile"].lstrip("-")
    user = settings["User"]
    assert user != "root" and settings["Group"] == user
    steps = readme[readme.index("### Deploying") :]
    assert f"useradd --system --home-dir /var/lib/{settings['StateDirectory']}" in steps
    assert f"nologin {user}" in steps
    assert f"ln -s /opt/storage-manager/bin/storage-manager {exe}" in steps
    assert f"install -m 0644 conf/storage-manager.env {env_file}" in steps
    assert "install -m 0644 conf/storage-manager.service /etc/systemd/system/" in steps
    for command in ("daemon-reload", "enable --now storage-manager"):
        assert f"systemctl {command}" in steps
    # The cache the env file names is inside what the unit may write.
    values = {
        k: v
        for k, v in (
            line.split("=", 1)
            for line in (ROOT / "conf/storage-manager.env").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
    }
    assert values["CACHE_DIR"].startswith(settings["ReadWritePaths"] + "/")
    assert settings["ReadWritePaths"] == f"/var/lib/{settings['StateDirectory']}"
