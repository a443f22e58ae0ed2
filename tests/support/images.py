"""Build OCI / Docker image fixtures and push them to a registry (``tests.support.registry``).

Build content in memory (or from files, for big blobs) with ``Blobs``, write an OCI image
layout with ``build_layout`` and copy it with ``skopeo_copy``, or push exact bytes with
``push_raw``::

    blobs = Blobs()
    amd64 = blobs.image(arch="amd64", layers=[b"layer one"])
    arm64 = blobs.image(arch="arm64", layers=[b"layer two"])
    top = blobs.index([amd64, arm64])
    build_layout(tmp_path / "layout", blobs, {"v1": top})
    skopeo_copy(tmp_path / "layout", "v1", registry.host, "library/demo:v1")
    body, media_type, digest = fetch_manifest(registry.url, "library/demo", "v1")
    assert body == blobs[top["digest"]]

Descriptors are plain dicts (``mediaType``, ``digest``, ``size``, plus ``platform`` /
``annotations`` when given), serialised compactly; the manifest bytes stored in ``Blobs`` are
what gets pushed, byte for byte.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx

from tests.support.registry import parse_www_authenticate

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_MEDIA_TYPES",
    "OCI_CONFIG",
    "OCI_EMPTY_JSON",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_MANIFEST",
    "SKOPEO_BINARY",
    "BlobSource",
    "Blobs",
    "PushError",
    "build_layout",
    "digest_of",
    "download_blob",
    "fetch_blob",
    "fetch_manifest",
    "head_manifest",
    "oras_push_artifact",
    "push_blob",
    "push_image_tree",
    "push_raw",
    "random_bytes",
    "random_file",
    "skopeo_copy",
    "tar_gz_layer",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY_JSON = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
"""Everything a client should put in ``Accept`` when fetching manifests."""

SKOPEO_BINARY = "/usr/bin/skopeo"

_CHUNK = 1 << 20
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

BlobSource = bytes | Path
"""A blob's content: in memory, or a file streamed from disk (for big blobs)."""


class PushError(RuntimeError):
    """The registry refused a push; the message carries the status and body."""


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random (incompressible) bytes; digests differ per seed."""
    return random.Random(seed).randbytes(size)


def random_file(path: Path, size: int, seed: int = 0) -> tuple[str, int]:
    """Write ``size`` pseudo-random bytes to ``path`` in 1 MiB pieces: ``(digest, size)``."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left > 0:
            chunk = rng.randbytes(min(left, _CHUNK))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest(), size


def tar_gz_layer(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """A real, reproducible ``tar+gzip`` layer: ``(compressed bytes, diff_id)``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), digest_of(uncompressed)


class Blobs(dict[str, BlobSource]):
    """A content store: ``digest -> bytes | Path``, with builders that return descriptors."""

    def add_blob(
        self,
        data: BlobSource,
        media_type: str = OCI_LAYER_TAR,
        *,
        annotations: Mapping[str, str] | None = None,
        platform: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store ``data`` (bytes, or a file to stream) and return its descriptor."""
        if isinstance(data, Path):
            digest, size = _file_digest(data)
        else:
            digest, size = digest_of(data), len(data)
        self[digest] = data
        desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
        if platform:
            desc["platform"] = dict(platform)
        if annotations:
            desc["annotations"] = dict(annotations)
        return desc

    def bytes_of(self, digest: str) -> bytes:
        value = self[digest]
        return value.read_bytes() if isinstance(value, Path) else value

    def config(
        self,
        arch: str = "amd64",
        os_name: str = "linux",
        diff_ids: list[str] | None = None,
        *,
        variant: str | None = None,
        media_type: str = OCI_CONFIG,
    ) -> dict[str, Any]:
        """A realistic image config (architecture, os, config, rootfs.diff_ids, history)."""
        diff_ids = diff_ids or []
        cfg: dict[str, Any] = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": os_name,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"}
                for i in range(len(diff_ids))
            ],
        }
        if variant:
            cfg["variant"] = variant
        return self.add_blob(_dumps(cfg), media_type)

    def image_manifest(
        self,
        config_desc: Mapping[str, Any],
        layer_descs: list[dict[str, Any]],
        media_type: str = OCI_MANIFEST,
        *,
        annotations: Mapping[str, str] | None = None,
        artifact_type: str | None = None,
        subject: Mapping[str, Any] | None = None,
        platform: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An image manifest (OCI, or Docker schema 2 with ``media_type=DOCKER_MANIFEST``).

        ``platform`` is not part of the manifest: it is put on the returned descriptor, ready
        for ``index``.
        """
        manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
        if artifact_type:
            manifest["artifactType"] = artifact_type
        manifest["config"] = dict(config_desc)
        manifest["layers"] = [dict(d) for d in layer_descs]
        if subject:
            manifest["subject"] = dict(subject)
        if annotations:
            manifest["annotations"] = dict(annotations)
        return self.add_blob(_dumps(manifest), media_type, platform=platform)

    def image(
        self,
        arch: str = "amd64",
        os_name: str = "linux",
        layers: list[BlobSource] | None = None,
        *,
        variant: str | None = None,
        docker: bool = False,
        gzip_layers: bool = False,
    ) -> dict[str, Any]:
        """A whole single-platform image; returns the manifest descriptor with ``platform``.

        ``layers`` default to one small layer with content unique to the platform. Layers are
        stored as given with an uncompressed-tar media type (so ``diff_id == digest``), or, with
        ``gzip_layers``, each is wrapped in a real tar+gzip holding it as ``/layer-N``.
        """
        if layers is None:
            layers = [f"layer for {os_name}/{arch}{variant or ''}\n".encode()]
        layer_descs = []
        diff_ids = []
        for i, layer in enumerate(layers):
            if gzip_layers:
                data = layer.read_bytes() if isinstance(layer, Path) else layer
                compressed, diff_id = tar_gz_layer({f"layer-{i}": data})
                mt = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
                layer_descs.append(self.add_blob(compressed, mt))
                diff_ids.append(diff_id)
            else:
                # Docker schema 2 has no uncompressed layer type; registries don't check.
                mt = DOCKER_LAYER_GZIP if docker else OCI_LAYER_TAR
                desc = self.add_blob(layer, mt)
                layer_descs.append(desc)
                diff_ids.append(desc["digest"])
        config = self.config(
            arch,
            os_name,
            diff_ids,
            variant=variant,
            media_type=DOCKER_CONFIG if docker else OCI_CONFIG,
        )
        platform: dict[str, Any] = {"architecture": arch, "os": os_name}
        if variant:
            platform["variant"] = variant
        return self.image_manifest(
            config,
            layer_descs,
            DOCKER_MANIFEST if docker else OCI_MANIFEST,
            platform=platform,
        )

    def index(
        self,
        manifests: list[dict[str, Any]],
        media_type: str = OCI_INDEX,
        *,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An OCI image index, or a Docker manifest list (``media_type=DOCKER_MANIFEST_LIST``).

        ``manifests`` are descriptors (with ``platform`` where wanted), e.g. from ``image``.
        """
        idx: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [dict(m) for m in manifests],
        }
        if annotations:
            idx["annotations"] = dict(annotations)
        return self.add_blob(_dumps(idx), media_type)


def build_layout(
    directory: Path, blobs: Mapping[str, BlobSource], refs: Mapping[str, Mapping[str, Any]]
) -> Path:
    """Write an OCI image layout: ``oci-layout``, ``index.json``, ``blobs/sha256/*``.

    ``refs`` maps a tag to the descriptor it names (an image manifest or an index); the tag is
    stored as the ``org.opencontainers.image.ref.name`` annotation, as skopeo's ``oci:DIR:TAG``
    expects. Every blob in ``blobs`` is written (Paths are copied).
    """
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256":
            raise ValueError(f"only sha256 blobs are supported: {digest}")
        target = blob_dir / hexdigest
        if isinstance(data, Path):
            with data.open("rb") as src, target.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
        else:
            target.write_bytes(data)
    manifests = []
    for tag, desc in refs.items():
        entry = {k: v for k, v in desc.items() if k != "annotations"}
        entry["annotations"] = {
            **desc.get("annotations", {}),
            "org.opencontainers.image.ref.name": tag,
        }
        manifests.append(entry)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    (directory / "index.json").write_text(json.dumps(index, indent=2))
    return directory


# -- raw distribution API -------------------------------------------------------------------------


def _client(authorization: str | None) -> httpx.Client:
    headers = {"Authorization": authorization} if authorization else {}
    return httpx.Client(headers=headers, timeout=_TIMEOUT, trust_env=False)


def _check(response: httpx.Response, expected: tuple[int, ...], what: str) -> None:
    if response.status_code not in expected:
        response.read()
        raise PushError(
            f"{what}: {response.request.method} {response.request.url} -> "
            f"{response.status_code} {response.headers.get('www-authenticate', '')} "
            f"{response.text[:500]}"
        )


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def push_blob(
    client: httpx.Client, registry_url: str, repo: str, digest: str, data: BlobSource
) -> None:
    """Monolithic upload: ``POST .../blobs/uploads/`` then ``PUT <Location>&digest=...``."""
    r = client.post(f"{registry_url}/v2/{repo}/blobs/uploads/")
    _check(r, (202,), f"start upload of {digest}")
    location = urljoin(f"{registry_url}/", r.headers["location"])
    sep = "&" if "?" in location else "?"
    url = f"{location}{sep}digest={quote(digest, safe='')}"
    if isinstance(data, Path):
        size = data.stat().st_size
        content: bytes | Iterator[bytes] = _file_chunks(data)
    else:
        size = len(data)
        content = data
    r = client.put(
        url,
        content=content,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
    )
    _check(r, (201,), f"upload of {digest}")


def push_raw(
    registry_url: str,
    repo: str,
    blobs: Mapping[str, BlobSource],
    manifest: bytes,
    media_type: str,
    reference: str,
    authorization: str | None = None,
    *,
    skip_existing: bool = True,
) -> str:
    """Push ``blobs`` then ``manifest`` (exactly these bytes, with ``media_type`` as
    Content-Type) as ``<repo>:<reference>``; return the registry's ``Docker-Content-Digest``.

    ``blobs`` is any ``digest -> bytes | Path`` mapping (e.g. a ``Blobs``); blobs the registry
    already has are skipped unless ``skip_existing`` is false. Manifests that ``blobs`` also
    holds (children of an index) must be pushed separately, by digest, before the index:
    ``push_raw`` only uploads blobs, then the one manifest.
    """
    with _client(authorization) as client:
        for digest, data in blobs.items():
            if skip_existing:
                r = client.head(f"{registry_url}/v2/{repo}/blobs/{digest}")
                if r.status_code == 200:
                    continue
            push_blob(client, registry_url, repo, digest, data)
        r = client.put(
            f"{registry_url}/v2/{repo}/manifests/{reference}",
            content=manifest,
            headers={"Content-Type": media_type},
        )
        _check(r, (201,), f"manifest {repo}:{reference}")
        return r.headers["docker-content-digest"]


def push_image_tree(
    registry_url: str,
    repo: str,
    blobs: Blobs,
    top: Mapping[str, Any],
    reference: str,
    authorization: str | None = None,
) -> str:
    """Push an image or index described by ``top`` (a descriptor into ``blobs``), children
    first: non-manifest blobs, then child manifests by digest, then ``top`` as ``reference``.
    """
    manifest_digests = {top["digest"]}
    if top["mediaType"] in (OCI_INDEX, DOCKER_MANIFEST_LIST):
        children = json.loads(blobs.bytes_of(top["digest"]))["manifests"]
        manifest_digests |= {c["digest"] for c in children}
    else:
        children = []
    plain = {d: v for d, v in blobs.items() if d not in manifest_digests}
    for child in children:
        push_raw(
            registry_url,
            repo,
            plain,
            blobs.bytes_of(child["digest"]),
            child["mediaType"],
            child["digest"],
            authorization,
        )
    return push_raw(
        registry_url,
        repo,
        plain,
        blobs.bytes_of(top["digest"]),
        top["mediaType"],
        reference,
        authorization,
    )


def fetch_manifest(
    registry_url: str,
    repo: str,
    reference: str,
    authorization: str | None = None,
    accept: tuple[str, ...] = MANIFEST_MEDIA_TYPES,
) -> tuple[bytes, str, str]:
    """``GET /v2/<repo>/manifests/<reference>`` -> ``(body, Content-Type, Docker-Content-Digest)``.

    Raises ``httpx.HTTPStatusError`` on anything but 200.
    """
    with _client(authorization) as client:
        r = client.get(
            f"{registry_url}/v2/{repo}/manifests/{reference}",
            headers={"Accept": ", ".join(accept)},
        )
        r.raise_for_status()
        return r.content, r.headers["content-type"], r.headers["docker-content-digest"]


def head_manifest(
    registry_url: str,
    repo: str,
    reference: str,
    authorization: str | None = None,
    accept: tuple[str, ...] = MANIFEST_MEDIA_TYPES,
) -> httpx.Response:
    """``HEAD /v2/<repo>/manifests/<reference>`` (the response, whatever its status)."""
    with _client(authorization) as client:
        return client.head(
            f"{registry_url}/v2/{repo}/manifests/{reference}",
            headers={"Accept": ", ".join(accept)},
        )


def fetch_blob(
    registry_url: str, repo: str, digest: str, authorization: str | None = None
) -> bytes:
    """``GET /v2/<repo>/blobs/<digest>`` into memory (redirects followed)."""
    with _client(authorization) as client:
        r = client.get(f"{registry_url}/v2/{repo}/blobs/{digest}", follow_redirects=True)
        r.raise_for_status()
        return r.content


def download_blob(
    registry_url: str, repo: str, digest: str, dest: Path, authorization: str | None = None
) -> tuple[str, int]:
    """Stream a blob to ``dest``; return ``(sha256 digest of what arrived, size)``."""
    h = hashlib.sha256()
    size = 0
    with (
        _client(authorization) as client,
        client.stream(
            "GET", f"{registry_url}/v2/{repo}/blobs/{digest}", follow_redirects=True
        ) as r,
    ):
        r.raise_for_status()
        with dest.open("wb") as f:
            for chunk in r.iter_bytes(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                f.write(chunk)
    return "sha256:" + h.hexdigest(), size


# -- skopeo and oras ------------------------------------------------------------------------------


def skopeo_copy(
    layout_dir: Path,
    tag: str,
    registry_host: str,
    repo_tag: str,
    *,
    all_images: bool = True,
    creds: str | None = None,
    registry_token: str | None = None,
    timeout: float = 120.0,
) -> str:
    """``skopeo copy [--all] --preserve-digests oci:DIR:TAG docker://HOST/REPO:TAG`` over plain
    HTTP; return the pushed manifest digest (from ``--digestfile``).

    ``creds`` is ``user:password`` (skopeo then runs the token / basic flow itself);
    ``registry_token`` is a bearer token to send as is. Without either, no credentials are
    used (``--dest-no-creds``), whatever is in the user's auth files.
    """
    with tempfile.TemporaryDirectory(prefix="skopeo-") as tmp:
        digest_file = Path(tmp) / "digest"
        cmd = [
            SKOPEO_BINARY,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--retry-times",
            "0",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--digestfile",
            str(digest_file),
        ]
        if all_images:
            cmd.append("--all")
        if creds is not None:
            cmd += ["--dest-creds", creds]
        elif registry_token is not None:
            cmd += ["--dest-registry-token", registry_token]
        else:
            cmd.append("--dest-no-creds")
        cmd += [f"oci:{layout_dir}:{tag}", f"docker://{registry_host}/{repo_tag}"]
        env = {**os.environ, "TMPDIR": tmp}
        env.pop("REGISTRY_AUTH_FILE", None)
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        if proc.returncode != 0:
            raise PushError(
                f"skopeo copy failed ({proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return digest_file.read_text().strip()


def oras_push_artifact(
    registry_host: str,
    repo_tag: str,
    files: Mapping[str, bytes],
    artifact_type: str | None = None,
    *,
    file_media_type: str = OCI_LAYER_TAR,
    annotations: Mapping[str, str] | None = None,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
) -> str:
    """Push ``files`` (name -> content) with oras-py over plain HTTP; return the manifest digest.

    oras-py 0.2.x writes an OCI *image* manifest (``application/vnd.oci.image.manifest.v1+json``,
    no ``artifactType`` field): one layer per file with ``file_media_type`` and an
    ``org.opencontainers.image.title`` annotation, and the 2-byte ``{}`` config blob whose
    media type is ``artifact_type`` (default ``application/vnd.unknown.config.v1+json``).
    Its JSON is ``json.dumps`` with default separators and always has ``"annotations": {}``.

    Credentials: ``token`` (a bearer token with push scope, sent as is), or ``username`` and
    ``password`` (a token is fetched from the registry's realm, or Basic is used, as the
    registry's challenge says).
    """
    import oras.client

    repo, sep, tag = repo_tag.rpartition(":")
    if not sep or "/" in tag:
        repo, tag = repo_tag, "latest"
    backend = "token"
    if token is None and username is not None and password is not None:
        # oras-py 0.2.x keeps the first (pull-only) token it gets and never asks for push, so
        # run the challenge for the upload endpoint here and hand it a push token.
        scheme, challenge = _push_challenge(registry_host, repo)
        if scheme == "bearer":
            token = _request_token(challenge, username, password)
        elif scheme == "basic":
            backend = "basic"
    client = oras.client.OrasClient(hostname=registry_host, insecure=True, auth_backend=backend)
    if token is not None:
        client.auth.set_token_auth(token)
    elif username is not None and password is not None:
        client.auth.set_basic_auth(username, password)
    with tempfile.TemporaryDirectory(prefix="oras-") as tmp:
        paths = []
        for name, data in files.items():
            if "/" in name or name in ("", ".", ".."):
                raise ValueError(f"file names must be plain names: {name!r}")
            path = Path(tmp) / name
            path.write_bytes(data)
            paths.append(f"{path}:{file_media_type}")
        kwargs: dict[str, Any] = {}
        if artifact_type:
            config = Path(tmp) / ".config.json"
            config.write_bytes(b"{}")
            kwargs["manifest_config"] = f"{config}:{artifact_type}"
        if annotations:
            kwargs["manifest_annotations"] = dict(annotations)
        client.push(
            target=f"{registry_host}/{repo_tag}",
            files=paths,
            disable_path_validation=True,
            quiet=True,
            **kwargs,
        )
    authorization = None
    if token is not None:
        authorization = f"Bearer {token}"
    elif username is not None and password is not None:
        authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    r = head_manifest(f"http://{registry_host}", repo, tag, authorization)
    if r.status_code != 200:
        raise PushError(f"HEAD of the pushed manifest {repo_tag}: {r.status_code}")
    return r.headers["docker-content-digest"]


def _push_challenge(registry_host: str, repo: str) -> tuple[str, dict[str, str]]:
    """The auth challenge for starting an upload to ``repo`` (``("", {})`` if there is none)."""
    with _client(None) as client:
        r = client.post(f"http://{registry_host}/v2/{repo}/blobs/uploads/")
        if r.status_code == 202:  # an open registry: drop the session we just started
            location = urljoin(f"http://{registry_host}/", r.headers["location"])
            client.delete(location)
            return "", {}
        if r.status_code != 401:
            raise PushError(f"upload challenge for {repo}: {r.status_code} {r.text[:300]}")
        return parse_www_authenticate(r.headers.get("www-authenticate", ""))


def _request_token(challenge: Mapping[str, str], username: str, password: str) -> str:
    params = {k: v for k, v in challenge.items() if k in ("service", "scope")}
    with httpx.Client(timeout=_TIMEOUT, trust_env=False) as client:
        r = client.get(challenge["realm"], params=params, auth=(username, password))
        r.raise_for_status()
        answer = r.json()
        token: str = answer.get("token") or answer["access_token"]
        return token
