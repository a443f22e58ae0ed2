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
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

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
        url = f"hf://{hub.endpoint.split('://', 1)[1]}/org/model"
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
