"""The OCI distribution-spec 1.1 conformance suite against the real server.

The suite is a ready binary (``../shared/tools/oci-conformance/oci-conformance``
from the project's root, or ``$OCI_CONFORMANCE``); a missing binary fails the
test, it is never skipped. It runs in four modes: push (``--allow-push``),
push behind ``--api-token`` (the token as the password), read-only over content
loaded with ``POST /content``, and read-only ``--mirror`` of a docker-registry
holding that content. Each run must report 0 failures; its ``junit.xml``,
``report.html`` and ``results.yaml`` are kept under ``.ci/results/oci-conformance/<mode>/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import attrs
import pytest

from tests.support.images import Blobs, push_image_tree, random_bytes
from tests.support.registry import Registry
from tests.support.server import REPOSITORY, ServerProcess

pytestmark = pytest.mark.slow

REPO1 = "conformance/repo1"
REPO2 = "conformance/repo2"
TOKEN = "conformance-token-0123456789"
_TOOL = Path("shared") / "tools" / "oci-conformance" / "oci-conformance"
RESULTS = REPOSITORY / ".ci" / "results" / "oci-conformance"


def _project_roots() -> list[Path]:
    """This checkout and, for a git worktree, the main checkout it belongs to."""
    roots = [REPOSITORY]
    dot_git = REPOSITORY / ".git"
    if dot_git.is_file():  # "gitdir: <main>/.git/worktrees/<name>"
        text = dot_git.read_text().strip()
        if text.startswith("gitdir:"):
            roots.append(Path(text.split(":", 1)[1].strip()).parents[2])
    return roots


def suite_binary() -> Path:
    """The conformance binary; the test fails (never skips) without it."""
    override = os.environ.get("OCI_CONFORMANCE")
    candidates = [Path(override)] if override else []
    candidates += [root.parent / _TOOL for root in _project_roots()]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    pytest.fail(
        "the OCI conformance binary is missing; looked at: "
        + ", ".join(str(p) for p in candidates)
        + " (see ../shared/tools/oci-conformance/README.md)"
    )


_TREE_RE = re.compile(r"^( *)(OCI Conformance Test(?:/.*)?): (Pass|FAIL|Skip|Disabled|Error)$")


@attrs.frozen
class Outcome:
    """The suite's result tree, as it prints it: every node, leaves marked."""

    nodes: list[tuple[str, str, bool]]  # (name, status, is a leaf)

    def named(self, status: str, leaves: bool = True) -> list[str]:
        return [n for n, s, leaf in self.nodes if s == status and (leaf or not leaves)]

    @property
    def failed(self) -> list[str]:
        return self.named("FAIL") + self.named("Error")

    @property
    def skipped(self) -> list[str]:
        return self.named("Skip")

    def counts(self) -> dict[str, int]:
        """How many nodes of the tree have each status (the numbers the
        issue quotes: every line of the tree)."""
        out: dict[str, int] = {}
        for _, status, _ in self.nodes:
            out[status] = out.get(status, 0) + 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return (
            f"{c.get('Pass', 0)} pass, {c.get('FAIL', 0)} fail, {c.get('Skip', 0)} skip, "
            f"{c.get('Disabled', 0)} disabled (tree nodes; {len(self.failed)} failing leaves)"
        )


def parse_tree(output: str) -> Outcome:
    """The result tree the suite prints before its reports."""
    rows = [
        (len(m.group(1)), m.group(2), m.group(3))
        for m in map(_TREE_RE.match, output.splitlines())
        if m
    ]
    nodes = []
    for i, (depth, name, status) in enumerate(rows):
        leaf = i + 1 == len(rows) or rows[i + 1][0] <= depth
        nodes.append((name, status, leaf))
    return Outcome(nodes)


def _write_junit(path: Path, outcome: Outcome) -> None:
    """A junit.xml of the printed tree, for the runs where the suite writes
    none (read-only: it crashes writing results.yaml when push is off)."""
    suite = ET.Element("testsuite", name="OCI Conformance Test (from the printed tree)")
    for name, status, leaf in outcome.nodes:
        if not leaf:
            continue
        case = ET.SubElement(suite, "testcase", name=name, status=status)
        if status in ("FAIL", "Error"):
            ET.SubElement(case, "failure", message=status)
        elif status in ("Skip", "Disabled"):
            ET.SubElement(case, "skipped", message=status)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def run_suite(mode: str, address: str, env: dict[str, str]) -> Outcome:
    """Run the suite against ``address``; the results stay in RESULTS/<mode>."""
    results = RESULTS / mode
    results.mkdir(parents=True, exist_ok=True)
    for old in results.iterdir():
        old.unlink()
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "OCI_REGISTRY": address,
        "OCI_TLS": "disabled",
        "OCI_VERSION": "1.1",
        "OCI_REPO1": REPO1,
        "OCI_REPO2": REPO2,
        "OCI_RESULTS_DIR": str(results),
        "OCI_LOG": "warn",
        **env,
    }
    proc = subprocess.run(
        [str(suite_binary())],
        env=full,
        cwd=results,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = proc.stdout + proc.stderr
    (results / "output.txt").write_text(output)
    outcome = parse_tree(proc.stdout)
    assert outcome.nodes, f"the suite printed no results (exit {proc.returncode}):\n{output}"
    if not (results / "junit.xml").is_file():
        _write_junit(results / "junit.xml", outcome)
    print(f"oci-conformance {mode}: {outcome.summary()}; results in {results}")
    if outcome.failed:
        assert proc.returncode != 0
    return outcome


def assert_conformant(mode: str, outcome: Outcome, allow_skips: bool = True) -> None:
    names = sorted(set(outcome.failed))
    assert not names, (
        f"oci-conformance {mode}: {outcome.summary()}; failing:\n  "
        + "\n  ".join(names)
        + f"\n(results in {RESULTS / mode})"
    )
    if not allow_skips:
        unexpected = sorted(set(outcome.skipped))
        assert not unexpected, f"oci-conformance {mode}: skipped:\n  " + "\n  ".join(unexpected)


def _address(srv: ServerProcess) -> str:
    return srv.base_url.removeprefix("http://")


def test_conformance_with_push(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "cache", "--allow-push") as srv:
        outcome = run_suite("push", _address(srv), {})
    assert_conformant("push", outcome, allow_skips=False)


def test_conformance_with_push_and_a_token(tmp_path: Path) -> None:
    env = {"NEKKO_API_TOKEN": TOKEN}
    with ServerProcess(tmp_path / "cache", "--allow-push", env=env) as srv:
        outcome = run_suite(
            "push-token",
            _address(srv),
            {"OCI_USERNAME": "conformance", "OCI_PASSWORD": TOKEN},
        )
    assert_conformant("push-token", outcome, allow_skips=False)


@attrs.frozen
class Loaded:
    tag: str
    manifest: str
    blobs: list[str]

    def env(self) -> dict[str, str]:
        return {
            "OCI_API_PUSH": "false",
            "OCI_API_BLOBS_DELETE": "false",
            "OCI_API_MANIFESTS_DELETE": "false",
            "OCI_API_TAGS_DELETE": "false",
            "OCI_RO_DATA_TAGS": self.tag,
            "OCI_RO_DATA_MANIFESTS": self.manifest,
            "OCI_RO_DATA_BLOBS": " ".join(self.blobs),
            "OCI_RO_DATA_REFERRERS": self.manifest,
        }


def _image_in(registry: Registry) -> Loaded:
    blobs = Blobs()
    top = blobs.image("amd64", layers=[random_bytes(300_000, 25), b"second layer\n"])
    push_image_tree(registry.url, REPO1, blobs, top, "v1")
    others = sorted(d for d in blobs if d != top["digest"])
    return Loaded("v1", top["digest"], others)


def test_conformance_read_only(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    try:
        loaded = _image_in(registry)
        with ServerProcess(tmp_path / "cache") as srv:
            with srv.client() as c:
                r = c.post("/content/", json={"url": f"oci://{registry.host}/{REPO1}:v1"})
                assert r.status_code == 201, r.text
            registry.stop()  # read-only from the cache alone
            outcome = run_suite("read-only", _address(srv), loaded.env())
    finally:
        registry.stop()
    assert_conformant("read-only", outcome)
    assert outcome.named("Pass"), outcome.summary()


def test_conformance_mirror(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    try:
        loaded = _image_in(registry)
        args = ("--mirror", "--upstream", registry.host)
        with ServerProcess(tmp_path / "cache", *args) as srv:
            outcome = run_suite("mirror", _address(srv), loaded.env())
    finally:
        registry.stop()
    assert_conformant("mirror", outcome)
    assert outcome.named("Pass"), outcome.summary()
