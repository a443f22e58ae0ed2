"""s3:// against moto's S3 server (a separate process on loopback): single
objects, prefixes, resume with Range + If-Match, an object that changes
mid-download, checksums, and errors mapped by the S3 error Code."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import BadRequest
from proxy.fetch.s3 import Signer, parse_s3_url
from tests.conftest import b64
from tests.support.s3 import MotoS3, Relay
from tests.support.server import ServerProcess


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def index_entry(cache: Path, url: str) -> dict[str, Any]:
    index = json.loads((cache / "index.json").read_text())
    for desc in index["manifests"]:
        if desc["annotations"].get("io.nekko.storage-manager.url") == url:
            return desc
    raise AssertionError(f"{url} not in index.json")


def manifest_of(cache: Path, desc: dict[str, Any]) -> dict[str, Any]:
    path = cache / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with MotoS3() as m:
        s3 = m.boto()
        s3.create_bucket(Bucket="models")
        yield m


def test_url_grammar() -> None:
    assert parse_s3_url("s3://models/a/b.bin").key == "a/b.bin"
    assert parse_s3_url("s3://models/a/").is_prefix
    assert parse_s3_url("s3://models/").is_prefix and parse_s3_url("s3://models").key == ""
    assert parse_s3_url("s3://models/a%20b").key == "a b"
    for bad in ("s3:///key", "s3://a/k", "s3://bad..name/k", "s3://b_/k?x=1", "s3://-x/k"):
        with pytest.raises(BadRequest):
            parse_s3_url(bad)


def test_addressing_styles_follow_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Path style (MinIO) and virtual-hosted style, as botocore lays them out.
    (A live virtual-hosted request needs DNS for <bucket>.<endpoint>, which
    loopback tests do not have.)"""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.example:9000")
    creds = ("AK", "SK", "session-token")
    params = {"Bucket": "models", "Key": "a/b c", "Range": "bytes=7-"}
    path = Signer("path")
    method, url, headers = path.prepare(path.client(creds), "get_object", params)
    assert (method, url) == ("GET", "http://minio.example:9000/models/a/b%20c")
    virtual = Signer("virtual")
    _, url, headers = virtual.prepare(virtual.client(creds), "get_object", params)
    assert url == "http://models.minio.example:9000/a/b%20c"
    auth = headers[b"Authorization"].decode()
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AK/") and "SK" not in auth
    assert "range" in auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert headers[b"X-Amz-Security-Token"] == b"session-token"


def test_one_object_and_a_prefix(tmp_path: Path, moto: MotoS3) -> None:
    s3 = moto.boto()
    weights = os.urandom(3 * 1024 * 1024 + 5)
    s3.put_object(Bucket="models", Key="llama/weights.gguf", Body=weights)
    s3.put_object(Bucket="models", Key="llama/config.json", Body=b'{"layers": 2}')
    s3.put_object(Bucket="models", Key="llama/tok/vocab.txt", Body=b"a\nb\n")
    s3.put_object(Bucket="models", Key="llama/", Body=b"")  # a console "folder"
    s3.put_object(Bucket="models", Key="other/x", Body=b"not under the prefix")
    cache = tmp_path / "cache"
    with ServerProcess(cache, env=moto.server_env()) as srv, srv.client() as c:
        url = "s3://models/llama/weights.gguf"
        r = c.post("/content/", json={"url": url})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["digest"] == sha(weights) and body["size"] == len(weights)
        assert Path(body["path"]).read_bytes() == weights
        layer = manifest_of(cache, index_entry(cache, url))["layers"][0]
        head = s3.head_object(Bucket="models", Key="llama/weights.gguf")
        assert layer["annotations"]["io.nekko.storage-manager.s3.etag"] == head["ETag"]
        assert layer["annotations"]["org.opencontainers.image.title"] == "weights.gguf"
        assert layer["size"] == len(weights)
        assert c.post("/content/", json={"url": url}).status_code == 200

        prefix = "s3://models/llama/"
        r = c.post("/content/", json={"url": prefix})
        assert r.status_code == 201, r.text
        layers = manifest_of(cache, index_entry(cache, prefix))["layers"]
        titles = [x["annotations"]["org.opencontainers.image.title"] for x in layers]
        assert titles == ["config.json", "tok/vocab.txt", "weights.gguf"]
        assert [x["digest"] for x in layers] == [
            sha(b'{"layers": 2}'),
            sha(b"a\nb\n"),
            sha(weights),
        ]
        # The weights are stored once, shared by both entries.
        assert (
            len([p for p in (cache / "blobs" / "sha256").iterdir() if p.stat().st_size > 1e6]) == 1
        )
        ref = r.json()["reference"]
        name, tag = ref.rsplit(":", 1)
        m = c.get(f"/v2/{name}/manifests/{tag}")
        assert m.status_code == 200 and len(m.json()["layers"]) == 3
        # Nothing about the credentials is kept.
        for p in cache.rglob("*"):
            if p.is_file():
                assert (
                    moto.secret_key.encode() not in p.read_bytes() or moto.secret_key == "testing"
                )
    assert moto.secret_key not in srv.log()


def test_checksum_is_the_expected_digest(tmp_path: Path, moto: MotoS3) -> None:
    s3 = moto.boto()
    data = os.urandom(1024 * 1024)
    s3.put_object(Bucket="models", Key="sum/f.bin", Body=data, ChecksumAlgorithm="SHA256")
    head = s3.head_object(Bucket="models", Key="sum/f.bin", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" in head  # moto keeps it: the test below relies on it
    # A relay that flips one byte of the body: the store's checksum catches it
    # (without one, nothing could tell these bytes from the object's).
    with Relay(("127.0.0.1", moto.port), corrupt_at=500_000) as relay:
        env = moto.server_env(relay.endpoint)
        with ServerProcess(tmp_path / "c", "--retries", "0", env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": "s3://models/sum/f.bin"})
            assert relay.corrupted
            assert r.status_code == 502, r.text
            assert r.json()["error"]["code"] == "DIGEST_MISMATCH"
            assert not list((tmp_path / "c" / "blobs" / "sha256").glob("*"))
            r = c.post("/content/", json={"url": "s3://models/sum/f.bin"})
            assert r.status_code == 201 and r.json()["digest"] == sha(data)


def test_interrupted_download_resumes_with_range_and_if_match(tmp_path: Path, moto: MotoS3) -> None:
    s3 = moto.boto()
    data = os.urandom(64 * 1024 * 1024)
    s3.put_object(Bucket="models", Key="big/model.bin", Body=data)
    with Relay(("127.0.0.1", moto.port), cut_after=20 * 1024 * 1024) as relay:
        env = moto.server_env(relay.endpoint)
        args = ("--retries", "2", "--retry-backoff", "0.1")
        with ServerProcess(tmp_path / "cache", *args, env=env) as srv, srv.client() as c:
            r = c.post("/content/", json={"url": "s3://models/big/model.bin"})
            assert r.status_code == 201, r.text
            assert r.json()["digest"] == sha(data)
        assert relay.cuts == 1
    gets = [(m, t, s) for m, t, s in moto.requests() if m == "GET" and "big/model.bin" in t]
    assert [s for _, _, s in gets][-2:] == [200, 206], gets  # the second one continued
    assert "resuming s3://models/big/model.bin at byte" in srv.log()


def test_an_object_changed_mid_download_starts_over(tmp_path: Path, moto: MotoS3) -> None:
    s3 = moto.boto()
    old, new = os.urandom(8 * 1024 * 1024), os.urandom(8 * 1024 * 1024 + 1)
    s3.put_object(Bucket="models", Key="moving/m.bin", Body=old)

    def replace() -> None:
        s3.put_object(Bucket="models", Key="moving/m.bin", Body=new)

    with Relay(("127.0.0.1", moto.port), cut_after=2 * 1024 * 1024, on_cut=replace) as relay:
        env = moto.server_env(relay.endpoint)
        args = ("--retries", "2", "--retry-backoff", "0.5")
        with ServerProcess(tmp_path / "cache", *args, env=env) as srv, srv.client() as c:
            url = "s3://models/moving/m.bin"
            r = c.post("/content/", json={"url": url})
            assert r.status_code == 201, r.text
            # Never a mix: the new object, whole.
            assert r.json()["digest"] == sha(new)
            assert Path(r.json()["path"]).read_bytes() == new
    statuses = [s for m, t, s in moto.requests() if m == "GET" and "moving/m.bin" in t]
    assert 412 in statuses, statuses  # the resume met If-Match and was refused
    assert "changed while it was fetched" in srv.log()


def test_errors_are_mapped_by_code(tmp_path: Path, moto: MotoS3) -> None:
    with ServerProcess(tmp_path / "c", env=moto.server_env()) as srv, srv.client() as c:
        for url, status, code in [
            ("s3://models/no/such/key", 404, "NoSuchKey"),
            ("s3://no-such-bucket/key", 404, "NoSuchBucket"),
            ("s3://no-such-bucket/prefix/", 404, "NoSuchBucket"),
        ]:
            r = c.post("/content/", json={"url": url})
            assert r.status_code == status, (url, r.text)
            assert r.json()["error"]["code"] == "UPSTREAM_NOT_FOUND"
            assert code in r.json()["error"]["message"], r.text
            assert url.split("/", 3)[-1].rstrip("/") in r.json()["error"]["message"]
        r = c.post("/content/", json={"url": "s3://models/empty-prefix/"})
        assert r.status_code == 404
        r = c.post("/content/", json={"url": "s3://models/x", "credentials": "no-colon"})
        assert r.status_code == 400


@pytest.fixture(scope="module")
def moto_auth() -> Iterator[MotoS3]:
    with MotoS3(auth=True) as m:
        s3 = m.boto()
        s3.create_bucket(Bucket="private")
        s3.put_object(Bucket="private", Key="m.bin", Body=b"secret weights")
        yield m


def test_signature_and_access_errors(tmp_path: Path, moto_auth: MotoS3) -> None:
    m = moto_auth
    env = m.server_env()
    wrong = f"{m.access_key}:wrong-secret-5b1e"
    with ServerProcess(tmp_path / "c", "--verbose", "2", env=env) as srv, srv.client() as c:
        # The environment's keys (botocore's chain) sign correctly.
        r = c.post("/content/", json={"url": "s3://private/m.bin"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(b"secret weights")
        # The POST's credentials are used instead, for that download only.
        r = c.post("/content/", json={"url": "s3://private/other", "credentials": wrong})
        assert r.status_code == 401, r.text
        assert "SignatureDoesNotMatch" in r.json()["error"]["message"]
        assert "wrong-secret-5b1e" not in r.text
        r = c.post("/content/", json={"url": "s3://private/x", "credentials": "AKIAUNKNOWN:s"})
        assert r.status_code == 401 and "InvalidAccessKeyId" in r.json()["error"]["message"]
        r = c.post("/content/", json={"url": "s3://forbidden/x"})
        assert r.status_code == 403, r.text
        assert "AccessDenied" in r.json()["error"]["message"]
        ok = f"{m.access_key}:{m.secret_key}"
        c.delete(f"/content/{b64('s3://private/m.bin')}")
        r = c.post("/content/", json={"url": "s3://private/m.bin", "credentials": ok})
        assert r.status_code == 201, r.text
    log = srv.log()
    for secret in (m.secret_key, "wrong-secret-5b1e"):
        assert secret not in log
        for p in (tmp_path / "c").rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p


def test_profile_and_modelkit_variables(tmp_path: Path, moto_auth: MotoS3) -> None:
    """Credentials from AWS_PROFILE in a shared credentials file, the endpoint
    from modelkit's S3_ENDPOINT, the region from AWS_REGION."""
    m = moto_auth
    creds_file = tmp_path / "credentials"
    creds_file.write_text(
        f"[nodeprof]\naws_access_key_id = {m.access_key}\naws_secret_access_key = {m.secret_key}\n"
    )
    env = {
        "S3_ENDPOINT": m.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_PROFILE": "nodeprof",
        "AWS_SHARED_CREDENTIALS_FILE": str(creds_file),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with ServerProcess(tmp_path / "c", env=env) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": "s3://private/m.bin"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(b"secret weights")
    env["AWS_PROFILE"] = "missing"
    with ServerProcess(tmp_path / "d", "--retries", "0", env=env) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": "s3://private/m.bin"})
        assert r.status_code in (400, 401), r.text
    assert m.secret_key not in srv.log()


def test_a_versioned_object_is_fetched_by_its_version(tmp_path: Path, moto: MotoS3) -> None:
    s3 = moto.boto()
    s3.create_bucket(Bucket="versioned")
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="versioned", Key="m.bin", Body=b"first")
    second = s3.put_object(Bucket="versioned", Key="m.bin", Body=b"second version")
    cache = tmp_path / "cache"
    with ServerProcess(cache, env=moto.server_env()) as srv, srv.client() as c:
        r = c.post("/content/", json={"url": "s3://versioned/m.bin"})
        assert r.status_code == 201, r.text
        assert r.json()["digest"] == sha(b"second version")
    layer = manifest_of(cache, index_entry(cache, "s3://versioned/m.bin"))["layers"][0]
    ann = layer["annotations"]
    assert ann["io.nekko.storage-manager.s3.version-id"] == second["VersionId"]
    assert ann["io.nekko.storage-manager.s3.etag"] == second["ETag"]
    gets = [t for m, t, _ in moto.requests() if m == "GET" and "/versioned/m.bin" in t]
    assert gets and all(f"versionId={second['VersionId']}" in t for t in gets), gets
