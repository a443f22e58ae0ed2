"""The fake Hub's Xet-era mode (``FakeHub(xet=True)``, tests/support/hfhub.py) checked against
what the official ``huggingface_hub`` reads, so the hf:// and /hf tests built on it mean
something.

Client side read in huggingface/huggingface_hub (fetched, commit ee0a4510):
``src/huggingface_hub/file_download.py`` (``get_hf_file_metadata``: HEAD ``/resolve`` with
relative redirects only, ``X-Linked-Etag``/``X-Linked-Size``, ``Location``;
``_xet_file_metadata_from_tree_cache``: a tree listing's ``xetHash`` skips the HEAD;
``_download_to_tmp_and_move``: ``xet_get`` when ``xet_file_data`` is set and ``hf_xet`` is
available, the plain HTTP GET of ``Location`` otherwise), ``src/huggingface_hub/utils/_xet.py``
(``parse_xet_file_data_from_response``: ``X-Xet-Hash`` plus ``Link rel="xet-auth"`` or
``X-Xet-Refresh-Route``) and ``src/huggingface_hub/constants.py`` (the header names).
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fakes.test_hfhub_fake import TOKEN, fetch, needs_client, run_client
from tests.support.hfhub import FakeHub


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(xet=True) as fake:
        fake.tokens.add(TOKEN)
        yield fake


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return fetch(url, method, headers, timeout=30.0)


def publish(hub: FakeHub) -> tuple[dict[str, bytes], str]:
    files = {
        "config.json": b'{"model_type": "llama"}\n',
        "weights/model.safetensors": os.urandom(300_000),
        "tokenizer.json": os.urandom(5_000),
    }
    hub.add_repo("org/model", private=True)
    for path, data in files.items():
        hub.add_file("org/model", path, data)
    return files, hub.commit("org/model")


def test_the_xet_era_answers_on_the_wire(hub: FakeHub) -> None:
    files, commit = publish(hub)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lfs = hub.repo("org/model").commits[commit].files["weights/model.safetensors"]
    status, headers, _ = request(hub.resolve_url("org/model", lfs.path), "HEAD", auth)
    assert status == 302
    assert headers["x-xet-hash"] == lfs.xet_hash
    assert headers["x-linked-etag"] == f'"{hashlib.sha256(files[lfs.path]).hexdigest()}"'
    token_url = f"{hub.endpoint}/api/models/org/model/xet-read-token/{commit}"
    assert f'<{token_url}>; rel="xet-auth"' in headers["link"]
    assert "x-xet-hash" in headers["access-control-expose-headers"].lower()
    location = headers["location"]
    assert location.startswith(f"{hub.bridge.url}/xet-bridge-us/")
    assert urlsplit(location).netloc != urlsplit(hub.endpoint).netloc  # another origin
    # The bridge: the bytes at the presigned URL; no token, no tampering.
    status, _, body = request(location)
    assert (status, body) == (200, files[lfs.path])
    assert request(location, headers=auth)[0] == 400
    assert request(location.replace("X-Amz-Signature=", "X-Amz-Signature=0"))[0] == 403
    status, _, body = request(location, headers={"Range": "bytes=10-19"})
    assert (status, body) == (206, files[lfs.path][10:20])
    hub.bridge.serve_wrong_bytes = True
    wrong = request(location)[2]
    assert len(wrong) == len(files[lfs.path]) and wrong != files[lfs.path]
    # A git-stored file is answered by the Hub itself, without Xet.
    status, headers, body = request(hub.resolve_url("org/model", "config.json"), "GET", auth)
    assert (status, body) == (200, files["config.json"])
    assert not any(k.startswith("x-xet") for k in headers) and "link" not in headers
    # Tree listings name the Xet hash of LFS files only; the token route answers.
    tree = hub.endpoint + f"/api/models/org/model/tree/{commit}?recursive=true"
    status, _, body = request(tree, headers=auth)
    assert '"xetHash": "' + lfs.xet_hash + '"' in body.decode()
    assert body.decode().count("xetHash") == 1
    status, headers, _ = request(token_url, headers=auth)
    assert status == 200 and headers["x-xet-cas-url"] == hub.bridge.url
    assert int(headers["x-xet-token-expiration"]) > 0 and headers["x-xet-access-token"]
    # The older form: X-Xet-Refresh-Route instead of the Link.
    hub.xet_auth = "header"
    status, headers, _ = request(hub.resolve_url("org/model", lfs.path), "HEAD", auth)
    assert headers["x-xet-refresh-route"] == token_url and "link" not in headers


def test_a_hub_without_xet_mode_advertises_none() -> None:
    with FakeHub() as plain:
        plain.add_repo("org/model")
        plain.add_file("org/model", "w.safetensors", b"w" * 1000)
        commit = plain.commit("org/model")
        status, headers, _ = request(plain.resolve_url("org/model", "w.safetensors"), "HEAD")
        assert status == 302 and headers["location"].startswith(plain.cdn.url)
        assert not any(k.startswith("x-xet") for k in headers) and "link" not in headers
        assert "xet" not in headers["access-control-expose-headers"].lower()
        tree = f"{plain.endpoint}/api/models/org/model/tree/{commit}"
        assert b"xetHash" not in request(tree)[2]
        assert request(f"{plain.endpoint}/api/models/org/model/xet-read-token/main")[0] == 404


@needs_client
@pytest.mark.parametrize("xet_auth", ["link", "header"])
def test_huggingface_hub_sees_xet_and_without_hf_xet_follows_the_bridge(
    hub: FakeHub, tmp_path: Path, xet_auth: str
) -> None:
    hub.xet_auth = "link" if xet_auth == "link" else "header"
    files, commit = publish(hub)
    lfs = hub.repo("org/model").commits[commit].files["weights/model.safetensors"]
    got = run_client(
        tmp_path,
        hub.endpoint,
        textwrap.dedent(
            """
            import hashlib, os
            from huggingface_hub import get_hf_file_metadata, hf_hub_url
            def meta(path):
                m = get_hf_file_metadata(hf_hub_url("org/model", path))
                x = m.xet_file_data
                return [m.etag, m.size, m.location, x and x.file_hash, x and x.refresh_route]
            def digest(path):
                return hashlib.sha256(open(path, "rb").read()).hexdigest()
            snap = snapshot_download("org/model")
            result = {"lfs": meta("weights/model.safetensors"), "small": meta("config.json"),
                      "files": {p: digest(os.path.join(snap, p)) for p in
                                ["config.json", "weights/model.safetensors", "tokenizer.json"]}}
            """
        ),
        token=TOKEN,
    )
    data = files[lfs.path]
    etag, size, location, xet_hash, refresh = got["lfs"]
    assert (etag, size, xet_hash) == (hashlib.sha256(data).hexdigest(), len(data), lfs.xet_hash)
    assert refresh == f"{hub.endpoint}/api/models/org/model/xet-read-token/{commit}"
    assert location.startswith(hub.bridge.url)
    assert got["small"][3:] == [None, None]
    assert got["files"] == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    # HF_HUB_DISABLE_XET=1: the plain path, through the bridge, without the token.
    gets = [r for r in hub.bridge.requests if r.method == "GET"]
    assert gets and {r.route.rsplit("/", 1)[-1] for r in gets} == {lfs.xet_hash}
    assert all("authorization" not in r.headers for r in hub.bridge.requests)
    assert not hub.cdn.requests
