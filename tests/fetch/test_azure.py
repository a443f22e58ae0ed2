"""azure:// against Azurite's blob service (a separate process on loopback,
the development account ``devstoreaccount1``): SharedKey-signed and SAS and
anonymous downloads, prefixes with subfolders, resume with Range + If-Match,
a blob replaced mid-download (412, started over), errors by x-ms-error-code
(not found, a wrong key)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import BadRequest
from proxy.fetch.azure import azure_target, parse_azure_url, parse_connection_string
from proxy.request import Credentials
from tests.conftest import b64
from tests.support import azure
from tests.support.azure import Azurite, relay_endpoint
from tests.support.s3 import Relay
from tests.support.server import ServerProcess

pytestmark = pytest.mark.skipif(
    azure.binary() is None,
    reason="azurite-blob not found on PATH or in /opt/azurite "
    "(npm install --prefix /opt/azurite azurite)",
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layers_of(cache: Path, url: str) -> list[dict[str, Any]]:
    index = json.loads((cache / "index.json").read_text())
    for desc in index["manifests"]:
        if desc["annotations"].get("io.nekko.storage-manager.url") == url:
            path = cache / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]
            layers: list[dict[str, Any]] = json.loads(path.read_text())["layers"]
            return layers
    raise AssertionError(f"{url} not in index.json")


def no_secret(cache: Path, log: str, secret: str) -> None:
    assert secret not in log
    for p in cache.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as a:
        a.create_container("models")
        a.create_container("public", public=True)
        yield a


def test_url_grammar_and_connection_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = parse_azure_url("azure://acct/models/a/b%20c.bin")
    assert (ref.account, ref.container, ref.name) == ("acct", "models", "a/b c.bin")
    assert parse_azure_url("azure://acct/models/a/").is_prefix
    assert parse_azure_url("azure://acct/models").is_prefix
    for bad in (
        "azure:///c/b",
        "azure://UP/c/b",
        "azure://acct/C/b",
        "azure://acct/a--b/x",
        "azure://acct/models/b?x=1",
        "azure://acct",
    ):
        with pytest.raises(BadRequest):
            parse_azure_url(bad)
    assert parse_connection_string("AccountName=a;AccountKey=x==;")["accountkey"] == "x=="
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    target = azure_target("acct", None)
    assert target.endpoint == "https://acct.blob.core.windows.net" and repr(target.auth) == (
        "AzureAuth(anonymous)"
    )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    target = azure_target("devstoreaccount1", None)
    assert target.endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    assert "SharedKey" in repr(target.auth) and Azurite.key not in repr(target.auth)
    # Another account than the connection string's: the public endpoint, anonymous.
    assert azure_target("other", None).endpoint == "https://other.blob.core.windows.net"
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        "AccountName=acct;SharedAccessSignature=sv=1&sig=x;EndpointSuffix=core.chinacloudapi.cn",
    )
    target = azure_target("acct", None)
    assert target.endpoint == "https://acct.blob.core.chinacloudapi.cn"
    assert target.auth.sas == "sv=1&sig=x"
    assert azure_target("acct", Credentials("?sv=2&sig=y")).auth.sas == "sv=2&sig=y"
    with pytest.raises(BadRequest):
        azure_target("acct", Credentials("not base64 and no sig"))
    with pytest.raises(BadRequest):
        azure_target("acct", Credentials("dTpw", "Basic"))


def test_one_blob_and_a_prefix(tmp_path: Path, azurite: Azurite) -> None:
    weights = os.urandom(3 * 1024 * 1024 + 5)
    etag = azurite.put("models", "llama/weights.gguf", weights)
    azurite.put("models", "llama/config.json", b'{"layers": 2}')
    azurite.put("models", "llama/tok/sub dir/vocab.txt", b"a\nb\n")
    azurite.put("models", "llama/", b"")  # a "folder" marker
    azurite.put("models", "other/x", b"not under the prefix")
    cache = tmp_path / "cache"
    env = azurite.server_env()
    with ServerProcess(cache, "--verbose", "2", env=env) as srv, srv.client() as c:
        url = "azure://devstoreaccount1/models/llama/weights.gguf"
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["digest"] == sha(weights) and body["size"] == len(weights)
        assert Path(body["path"]).read_bytes() == weights
        (layer,) = layers_of(cache, url)
        ann = layer["annotations"]
        assert ann["org.opencontainers.image.title"] == "weights.gguf"
        assert ann["io.nekko.storage-manager.azure.etag"] == etag
        assert ann["io.nekko.storage-manager.azure.size"] == str(len(weights))
        assert c.post("/content/", json={"url": url}).status_code == 200

        prefix = "azure://devstoreaccount1/models/llama/"
        r = c.post("/content/", json={"url": prefix})
        assert r.status_code == 201, r.text
        layers = layers_of(cache, prefix)
        titles = [x["annotations"]["org.opencontainers.image.title"] for x in layers]
        assert titles == ["config.json", "tok/sub dir/vocab.txt", "weights.gguf"]
        assert [x["digest"] for x in layers] == [
            sha(b'{"layers": 2}'),
            sha(b"a\nb\n"),
            sha(weights),
        ]
        big = [p for p in (cache / "blobs" / "sha256").iterdir() if p.stat().st_size > 1e6]
        assert len(big) == 1  # stored once, shared by both entries
        name, tag = r.json()["reference"].rsplit(":", 1)
        m = c.get(f"/v2/{name}/manifests/{tag}")
        assert m.status_code == 200 and len(m.json()["layers"]) == 3
        r = c.post("/content/", json={"url": "azure://devstoreaccount1/models/llama/tok/"})
        assert r.status_code == 201, r.text
        assert [b["title"] for b in r.json()["blobs"]] == ["sub dir/vocab.txt"]
    no_secret(cache, srv.log(), azurite.key)


def test_sas_key_and_anonymous(tmp_path: Path, azurite: Azurite) -> None:
    azurite.put("models", "sas/m.bin", b"by SAS")
    azurite.put("models", "key/m.bin", b"by key")
    azurite.put("public", "open/m.bin", b"anonymous")
    sas = azurite.sas("models", "sas/m.bin")
    sig = sas.split("sig=", 1)[1]
    cache = tmp_path / "cache"
    # Only an endpoint in the environment: anonymous unless the POST says otherwise.
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite.endpoint}"}
    with ServerProcess(cache, "--verbose", "2", env=env) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": "azure://devstoreaccount1/public/open/m.bin"})
        assert r.status_code == 201 and r.json()["digest"] == sha(b"anonymous"), r.text
        r = c.post("/content/", json={"url": "azure://devstoreaccount1/models/sas/m.bin"})
        assert r.status_code in (401, 403), r.text  # a private container
        code = r.json()["error"]["message"].split(": ")[1]
        assert code in ("NoAuthenticationInformation", "AuthorizationFailure", "ResourceNotFound")
        c.delete(f"/content/{b64('azure://devstoreaccount1/models/sas/m.bin')}")
        r = c.post(
            "/content/",
            json={"url": "azure://devstoreaccount1/models/sas/m.bin", "credentials": "?" + sas},
        )
        assert r.status_code == 201 and r.json()["digest"] == sha(b"by SAS"), r.text
        # The SAS is for one blob: another one is refused, with the store's code.
        r = c.post(
            "/content/",
            json={"url": "azure://devstoreaccount1/models/key/m.bin", "credentials": sas},
        )
        assert r.status_code == 403, r.text
        assert "AuthorizationFailure" in r.json()["error"]["message"]
        assert sig not in r.text
        r = c.post(
            "/content/",
            json={"url": "azure://devstoreaccount1/models/key/m.bin", "credentials": azurite.key},
        )
        assert r.status_code == 201 and r.json()["digest"] == sha(b"by key"), r.text
    no_secret(cache, srv.log(), azurite.key)
    no_secret(cache, srv.log(), sig)


def test_wrong_key(tmp_path: Path, azurite: Azurite) -> None:
    azurite.put("models", "wrong/m.bin", b"x")
    wrong = base64.b64encode(b"not the key" * 6).decode()
    cache = tmp_path / "cache"
    env = azurite.server_env(key=wrong)
    with ServerProcess(cache, "--retries", "0", env=env) as srv, srv.client() as c:
        for url, creds in [
            ("azure://devstoreaccount1/models/wrong/m.bin", None),  # the environment's key
            ("azure://devstoreaccount1/models/wrong/", None),  # a listing
            ("azure://devstoreaccount1/models/wrong/m.bin", wrong),  # the POST's key
        ]:
            r = c.post("/content/", json={"url": url, "credentials": creds})
            assert r.status_code in (401, 403), r.text
            err = r.json()["error"]
            assert err["code"] in ("UPSTREAM_UNAUTHORIZED", "UPSTREAM_DENIED")
            # Azurite says AuthorizationFailure, Azure AuthenticationFailed (-> 401).
            assert (
                "AuthorizationFailure" in err["message"]
                or "AuthenticationFailed" in (err["message"])
            ), err
            assert wrong not in r.text
    no_secret(cache, srv.log(), wrong)


def test_interrupted_download_resumes_with_range_and_if_match(
    tmp_path: Path, azurite: Azurite
) -> None:
    data = os.urandom(32 * 1024 * 1024)
    azurite.put("models", "big/model.bin", data)
    with Relay(("127.0.0.1", azurite.port), cut_after=10 * 1024 * 1024) as relay:
        env = azurite.server_env(relay_endpoint(relay.port))
        args = ("--retries", "2", "--retry-backoff", "0.1")
        with ServerProcess(tmp_path / "cache", *args, env=env) as srv, srv.client() as c:
            url = "azure://devstoreaccount1/models/big/model.bin"
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
        assert relay.cuts == 1
    gets = [s for m, t, s in azurite.requests() if m == "GET" and t.endswith("big/model.bin")]
    assert gets[-2:] == [200, 206], gets  # the second one continued
    assert f"resuming {url} at byte" in srv.log()


def test_a_blob_replaced_mid_download_starts_over(tmp_path: Path, azurite: Azurite) -> None:
    old, new = os.urandom(8 * 1024 * 1024), os.urandom(8 * 1024 * 1024)
    azurite.put("models", "moving/m.bin", old)

    def replace() -> None:
        azurite.put("models", "moving/m.bin", new)

    with Relay(("127.0.0.1", azurite.port), cut_after=2 * 1024 * 1024, on_cut=replace) as relay:
        env = azurite.server_env(relay_endpoint(relay.port))
        args = ("--retries", "2", "--retry-backoff", "0.5")
        with ServerProcess(tmp_path / "cache", *args, env=env) as srv, srv.client() as c:
            url = "azure://devstoreaccount1/models/moving/m.bin"
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(new)  # never a mix
            assert Path(r.json()["path"]).read_bytes() == new
        assert relay.cuts == 1
    gets = [s for m, t, s in azurite.requests() if m == "GET" and t.endswith("moving/m.bin")]
    assert 412 in gets, gets  # the resume met If-Match and was refused
    assert "changed while it was fetched" in srv.log()


def test_not_found_errors(tmp_path: Path, azurite: Azurite) -> None:
    with ServerProcess(tmp_path / "c", env=azurite.server_env()) as srv, srv.client() as c:
        for url, code in [
            ("azure://devstoreaccount1/models/no/such/blob", "BlobNotFound"),
            ("azure://devstoreaccount1/nocontainer/blob", "ContainerNotFound"),
            ("azure://devstoreaccount1/nocontainer/prefix/", "ContainerNotFound"),
            ("azure://devstoreaccount1/models/empty-prefix/", ""),
        ]:
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 404, (url, r.text)
            err = r.json()["error"]
            assert err["code"] == "UPSTREAM_NOT_FOUND"
            assert code in err["message"], err
            assert url.split("/", 4)[-1].rstrip("/") in err["message"], err
    assert Azurite.key not in srv.log()
