"""The /hf mirror never advertises Xet, so a client with ``hf_xet`` installed downloads from
the node rather than trying Xet storage (which the node does not speak).

``huggingface_hub`` (0.32+; huggingface/huggingface_hub, read at commit ee0a4510) takes the
Xet path when ``/resolve``'s HEAD answer carries ``X-Xet-Hash`` with ``X-Xet-Refresh-Route``
or ``Link: <...>; rel="xet-auth"`` (``src/huggingface_hub/utils/_xet.py``
``parse_xet_file_data_from_response``, called from ``src/huggingface_hub/file_download.py``
``get_hf_file_metadata``), and skips the HEAD altogether for a file whose tree listing
entry had a ``xetHash`` (``_xet_file_metadata_from_tree_cache`` in ``file_download.py``,
fed by ``_snapshot_download.py``). Either way it would then ask the ``xet-read-token``
route and a CAS server, which the node does not have. So: the content is pulled from the
fake Hub in its Xet-era mode (tests/support/hfhub.py, ``FakeHub(xet=True)``), the Hub
stopped, and ``snapshot_download``/``hf_hub_download`` run with Xet enabled and ``hf_xet``
importable, ``HF_ENDPOINT=<node>/hf``.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.test_hfhub_fake import needs_client, run_client
from tests.support.hfhub import FakeHub
from tests.support.server import ServerProcess

pytestmark = needs_client


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(xet=True) as fake:
        yield fake


def test_the_mirror_of_a_xet_repository_serves_clients_with_hf_xet(
    hub: FakeHub, server: ServerProcess, tmp_path: Path
) -> None:
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "model.safetensors": os.urandom(400_000),
        "weights/extra.bin": os.urandom(100_000),
    }
    hub.add_repo("org/model")
    for path, data in files.items():
        hub.add_file("org/model", path, data)
    commit = hub.commit("org/model", tag="v1.0")
    with httpx.Client(base_url=hub.endpoint) as h:  # the Hub itself does advertise Xet
        assert "x-xet-hash" in h.head("/org/model/resolve/main/model.safetensors").headers
        assert "xetHash" in h.get(f"/api/models/org/model/tree/{commit}").text
    with server.client() as c:
        url = f"hf://{hub.host}/org/model"
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
    hub.stop()
    endpoint = f"{server.base_url}/hf"

    with httpx.Client(base_url=endpoint) as c:
        for path in files:
            for method in ("HEAD", "GET"):
                r = c.request(method, f"/org/model/resolve/main/{path}")
                assert r.status_code == 200, (path, r.text)
                assert not any(k.lower().startswith("x-xet") for k in r.headers), r.headers
                assert "xet" not in r.headers.get("link", "").lower()
                assert "xet" not in r.headers.get("access-control-expose-headers", "").lower()
        for query in ("?recursive=true", "?recursive=true&expand=true", ""):
            r = c.get(f"/api/models/org/model/tree/{commit}{query}")
            assert r.status_code == 200 and r.json(), r.text
            assert "xet" not in r.text.lower()
        r = c.get("/api/models/org/model/revision/main?blobs=true")
        assert r.status_code == 200 and "xet" not in r.text.lower()

    got = run_client(
        tmp_path,
        endpoint,
        textwrap.dedent(
            """
            import hashlib, os
            import hf_xet
            from huggingface_hub import get_hf_file_metadata, hf_hub_url
            from huggingface_hub.utils._runtime import is_xet_available
            def digest(path):
                return hashlib.sha256(open(path, "rb").read()).hexdigest()
            snap = snapshot_download("org/model")
            again = snapshot_download("org/model", revision="COMMIT")
            one = hf_hub_download("org/model", "model.safetensors")
            meta = get_hf_file_metadata(hf_hub_url("org/model", "model.safetensors"))
            result = {
                "xet": is_xet_available(),
                "files": {os.path.relpath(os.path.join(r, f), snap): digest(os.path.join(r, f))
                          for r, _, fs in os.walk(snap) for f in fs},
                "same": snap == again, "one": digest(one),
                "xet_file_data": repr(meta.xet_file_data),
            }
            """
        ).replace("COMMIT", commit),
        xet=True,
    )
    assert got["xet"] is True  # hf_xet installed and Xet enabled: the client would use it
    assert got["xet_file_data"] == "None"
    assert got["files"] == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    assert got["same"] is True
    assert got["one"] == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert not any("xet" in line.lower() for line in server.log().splitlines() if "/hf/" in line)


def test_a_tree_cache_written_against_the_xet_hub_needs_xet_disabled(
    hub: FakeHub, server: ServerProcess, tmp_path: Path
) -> None:
    """The one case the mirror cannot cover: ``huggingface_hub`` (``_tree_cache.py``, 2026)
    keeps tree listings under ``<HF_HUB_CACHE>/<repo folder>/trees/<commit>.json``, whatever
    the endpoint, and ``file_download.py`` ``_xet_file_metadata_from_tree_cache`` then takes
    the Xet path for a file with a ``xet_hash`` there without asking the endpoint. A cache
    first filled from huggingface.co and then pointed at the node fails for the files it does
    not hold yet, unless ``HF_HUB_DISABLE_XET=1`` (the README says so)."""
    pytest.importorskip("huggingface_hub._tree_cache")
    data = os.urandom(200_000)
    hub.add_repo("org/model")
    hub.add_file("org/model", "model.safetensors", data)
    hub.add_file("org/model", "config.json", b"{}\n")
    commit = hub.commit("org/model")
    with httpx.Client(base_url=hub.endpoint) as h:
        listing = h.get(f"/api/models/org/model/tree/{commit}?recursive=true").json()
    with server.client() as c:
        url = f"hf://{hub.host}/org/model"
        assert c.post("/content/", json={"url": url}).status_code == 201
    hub.stop()
    files: dict[str, Any] = {}
    for e in listing:  # what huggingface_hub writes after listing the tree on the Hub
        entry: dict[str, Any] = {"size": e["size"], "blob_id": e["oid"]}
        if "lfs" in e:
            entry.update(lfs_sha256=e["lfs"]["oid"], lfs_size=e["lfs"]["size"])
        if "xetHash" in e:
            entry["xet_hash"] = e["xetHash"]
        files[e["path"]] = entry
    trees = tmp_path / "hub" / "models--org--model" / "trees"
    trees.mkdir(parents=True)
    (trees / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": files}))
    code = f"""
        import hashlib
        got = attempt(hf_hub_download, "org/model", "model.safetensors", revision="{commit}")
        result = got if "error" in got else hashlib.sha256(open(got["ok"], "rb").read()).hexdigest()
        """
    endpoint = f"{server.base_url}/hf"
    with_xet = run_client(tmp_path, endpoint, code, xet=True)
    assert "error" in with_xet, with_xet
    assert "xet-read-token" in with_xet["message"], with_xet
    assert run_client(tmp_path, endpoint, code) == hashlib.sha256(data).hexdigest()
