"""The ``hf://`` (``huggingface://``) downloader: files and whole repositories
from the Hugging Face Hub, with the Hub's own protocol.

``hf://[<host>]/[datasets/]<org>/<repo>[@<revision>][/<path/in/repo>]`` --
host ``huggingface.co`` when empty (``hf:///org/repo/file.gguf``), revision
``main`` unless ``@<revision>`` follows the repository (percent-encoded when
it holds a ``/``, as in ``@refs%2Fpr%2F1``), as Hugging Face's own ``hf://``
URLs are written.

One file, as ``huggingface_hub.hf_hub_download`` does it: ``HEAD
/<repo>/resolve/<revision>/<path>`` (redirects to the same host followed, the
one to the CDN not), reading ``X-Repo-Commit``, ``X-Linked-Etag``/``ETag``,
``X-Linked-Size``/``Content-Length`` and ``X-Error-Code``; then the file is
fetched at the commit, so what is stored is exactly that commit's file,
following the redirect to the CDN without the Authorization header. LFS files
are verified against their sha256 (the ``X-Linked-Etag``); the blob is named
by the file's sha256, so the path in the answer is the file itself. For a
Xet-backed file the Hub adds ``X-Xet-Hash`` and a ``rel="xet-auth"`` link to
the same answer and redirects to its Xet bridge instead of the LFS CDN; this
downloader speaks no Xet, so it reads neither and follows that redirect the
same way (huggingface_hub's own path when ``hf_xet`` is missing).

A whole repository (no path): ``/api/models/<repo>/revision/<revision>`` for
the commit, its recursive tree listing (paginated with ``Link``) for the
files, and every file fetched at that commit, a few at a time.

Per file the entry keeps what is needed to serve it again (commit, revision,
path, git oid, LFS sha256, size) as layer annotations.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import attrs
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore

from proxy.cache import grammar
from proxy.cache.ingest import IngestFile, IngestState
from proxy.cache.layout import Layout, blob_ingest_key, ingest_key
from proxy.errors import BadContent, BadRequest, StorageError, UpstreamError
from proxy.fetch.base import FetchResult, Job
from proxy.fetch.ociref import split_hub_url
from proxy.fetch.reach import is_loopback_host
from proxy.fetch.transfer import (
    HttpClient,
    Wanted,
    download,
    header,
    retried,
    upstream_error,
)
from proxy.request import FetchRequest
from proxy.types import ANNOTATION_HF_COMMIT as A_COMMIT
from proxy.types import ANNOTATION_HF_ENDPOINT as A_ENDPOINT
from proxy.types import ANNOTATION_HF_LFS as A_LFS
from proxy.types import ANNOTATION_HF_OID as A_OID
from proxy.types import ANNOTATION_HF_REPO as A_REPO
from proxy.types import ANNOTATION_HF_REPO_TYPE as A_REPO_TYPE
from proxy.types import ANNOTATION_HF_REVISION as A_REVISION
from proxy.types import ANNOTATION_TITLE, MEDIA_TYPE_OCTET, SHA256_HEX_RE, Descriptor, Digest

log = logging.getLogger(__name__)

DEFAULT_HOST = "huggingface.co"
ARTIFACT_TYPE = "application/vnd.nekko.storage-manager.huggingface.v1"
_COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT_RE = re.compile(r"[a-f0-9]{40}")
MAX_TREE_PAGES = 1000

# X-Error-Code of the Hub -> (status, message); see huggingface_hub.utils._http.
HUB_ERRORS = {
    "RepoNotFound": (404, "repository not found (or private or gated: pass a token)"),
    "RevisionNotFound": (404, "revision not found"),
    "EntryNotFound": (404, "file not found in the repository at that revision"),
    "GatedRepo": (403, "gated repository: accept its terms on the Hub and pass a token"),
    "DisabledRepo": (403, "repository disabled"),
}


@attrs.frozen
class HfUrl:
    host: str
    repo_type: str  # "model" | "dataset"
    repo: str  # org/name
    revision: str
    path: str | None  # None: the whole repository

    @property
    def api_prefix(self) -> str:
        return "datasets" if self.repo_type == "dataset" else "models"

    @property
    def url_prefix(self) -> str:
        return f"datasets/{self.repo}" if self.repo_type == "dataset" else self.repo


def parse_hf_url(url: str) -> HfUrl:
    host, path = split_hub_url(url, ("hf", "huggingface"), DEFAULT_HOST)
    segments = path.lstrip("/").split("/")
    repo_type = "model"
    if segments and segments[0] in ("datasets", "models"):
        repo_type = "dataset" if segments.pop(0) == "datasets" else "model"
    if len(segments) < 2 or not segments[0] or not segments[1]:
        raise BadRequest("hf:// URL needs <org>/<repo>: hf:///<org>/<repo>[@<rev>][/<path>]")
    org, name = segments[0], segments[1]
    revision = "main"
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
        if not grammar.is_revision(revision):
            raise BadRequest(f"invalid revision {revision[:80]!r}")
    if (
        not _COMPONENT_RE.fullmatch(org)
        or not _COMPONENT_RE.fullmatch(name)
        or not grammar.is_repo_id(f"{org}/{name}")
    ):
        raise BadRequest(f"invalid repository {org[:40]}/{name[:60]}")
    rest = [unquote(s) for s in segments[2:]]
    while rest and rest[-1] == "":
        rest.pop()
    if any(s in ("", ".", "..") or "\\" in s or "\0" in s for s in rest):
        raise BadRequest("the path in the repository has empty, '.' or '..' parts")
    return HfUrl(host, repo_type, f"{org}/{name}", revision, "/".join(rest) or None)


def _etag(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


@attrs.frozen
class HubFile:
    path: str
    size: int | None
    oid: str | None  # git blob sha1
    lfs_sha256: str | None


class HfFetcher:
    """Downloads files and repositories from a Hugging Face Hub."""

    schemes: tuple[str, ...] = ("hf", "huggingface")
    kind = "hf"

    def __init__(self, client: HttpClient, layout: Layout, parallel: int = 4) -> None:
        self.client = client
        self.layout = layout
        self.parallel = parallel

    def validate(self, request: FetchRequest) -> None:
        ref = parse_hf_url(request.url)
        self.client.policy.check_host(ref.host.rsplit(":", 1)[0].strip("[]"))

    def base_url(self, ref: HfUrl) -> str:
        hostname = ref.host.rsplit(":", 1)[0] if not ref.host.startswith("[") else ref.host
        plain = is_loopback_host(hostname.strip("[]"))
        return f"{'http' if plain else 'https'}://{ref.host}"

    def fetch(self, request: FetchRequest, job: Job) -> Deferred[FetchResult]:
        return Deferred.fromCoroutine(self._fetch(request, job))

    async def _fetch(self, request: FetchRequest, job: Job) -> FetchResult:
        ref = parse_hf_url(request.url)
        base = self.base_url(ref)
        auth = request.credentials.authorization() if request.credentials else None
        if ref.path is not None:
            commit, item = await self._resolve(base, ref, ref.path, auth, job)
            items = [item]
        else:
            commit, items = await self._listing(base, ref, auth, job)
        if request.expected is not None and ref.path is None:
            raise BadRequest("an expected digest can only be given for one file")
        # Marks the download as interrupted if it stops; removed once stored.
        marker = IngestFile(self.layout, ingest_key(request.url))
        await self.client.thread(marker.write_state, IngestState(url=request.url, kind="hf"))
        job.after_commit(marker.discard)
        files = await self._download_all(base, ref, commit, items, auth, request, job)
        annotations = {
            A_REPO: ref.repo,
            A_REPO_TYPE: ref.repo_type,
            A_REVISION: ref.revision,
            A_COMMIT: commit,
            A_ENDPOINT: base,
        }
        return FetchResult(
            files=tuple(files),
            primary=files[0] if ref.path is not None else None,
            kind=self.kind,
            annotations=annotations,
            artifact_type=ARTIFACT_TYPE,
        )

    # -- metadata ------------------------------------------------------------------

    def _hub_error(self, url: str, response: Any, body: bytes, what: str) -> StorageError:
        code = header(response, b"X-Error-Code")
        message = header(response, b"X-Error-Message")
        if code in HUB_ERRORS:
            status, text = HUB_ERRORS[code]
            detail = f": {message}" if message else ""
            return UpstreamError(f"{what}: {text} ({code}{detail})", status)
        return upstream_error(url, response, body)

    async def _resolve(
        self, base: str, ref: HfUrl, path: str, auth: bytes | None, job: Job
    ) -> tuple[str, HubFile]:
        url = f"{base}/{ref.url_prefix}/resolve/{quote(ref.revision, safe='')}/{quote(path)}"
        what = f"{ref.repo}@{ref.revision}/{path}"

        async def head() -> Any:
            return await self.client.get(
                url,
                job,
                {b"Accept-Encoding": b"identity"},
                auth,
                method="HEAD",
                cross_origin_redirects=False,
            )

        response = await retried(self.client, job, head)
        self.client.discard(response)
        if response.code >= 400:
            raise self._hub_error(url, response, b"", what)
        commit = header(response, b"X-Repo-Commit")
        if commit is None or not _COMMIT_RE.fullmatch(commit):
            raise UpstreamError(f"{what}: the Hub sent no commit (X-Repo-Commit)")
        linked = _etag(header(response, b"X-Linked-Etag"))
        size_text = header(response, b"X-Linked-Size") or (
            header(response, b"Content-Length") if response.code < 300 else None
        )
        size = int(size_text) if size_text and size_text.isdigit() else None
        lfs = linked if linked and SHA256_HEX_RE.fullmatch(linked) else None
        oid = _etag(header(response, b"ETag"))
        if oid is not None and not re.fullmatch(r"[a-f0-9]{40}", oid):
            oid = None
        return commit, HubFile(path, size, oid, lfs)

    async def _get_json(self, url: str, auth: bytes | None, job: Job, what: str) -> Any:
        response = await self.client.get(url, job, {b"Accept": b"application/json"}, auth)
        body = await self.client.read_small(response, 64 * 1024 * 1024)
        if response.code != 200:
            raise self._hub_error(url, response, body, what)
        try:
            return json.loads(body), header(response, b"Link")
        except ValueError:
            raise UpstreamError(f"{what}: the Hub answered no JSON") from None

    async def _listing(
        self, base: str, ref: HfUrl, auth: bytes | None, job: Job
    ) -> tuple[str, list[HubFile]]:
        what = f"{ref.repo}@{ref.revision}"
        rev = quote(ref.revision, safe="")
        info, _ = await self._get_json(
            f"{base}/api/{ref.api_prefix}/{ref.repo}/revision/{rev}", auth, job, what
        )
        commit = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit):
            raise UpstreamError(f"{what}: the Hub's model info has no commit sha")
        url: str | None = f"{base}/api/{ref.api_prefix}/{ref.repo}/tree/{commit}?recursive=true"
        items: list[HubFile] = []
        for _page in range(MAX_TREE_PAGES):
            if url is None:
                break
            page, link = await self._get_json(url, auth, job, what)
            if not isinstance(page, list):
                raise UpstreamError(f"{what}: the tree listing is not a list")
            for e in page:
                if not isinstance(e, dict) or e.get("type") != "file":
                    continue
                path = e.get("path")
                if not isinstance(path, str) or not path:
                    continue
                lfs = e.get("lfs") if isinstance(e.get("lfs"), dict) else None
                sha = lfs.get("oid") if lfs else None
                items.append(
                    HubFile(
                        path=path,
                        size=e.get("size") if isinstance(e.get("size"), int) else None,
                        oid=e.get("oid")
                        if isinstance(e.get("oid"), str) and _COMMIT_RE.fullmatch(e["oid"])
                        else None,
                        lfs_sha256=sha
                        if isinstance(sha, str) and SHA256_HEX_RE.fullmatch(sha)
                        else None,
                    )
                )
            url = _next_link(link, url)
        if not items:
            raise UpstreamError(f"{what}: the repository has no files", 404)
        for item in items:
            if not grammar.is_title(item.path):
                raise UpstreamError(f"{what}: the Hub listed an unsafe path {item.path[:100]!r}")
        return commit, sorted(items, key=lambda i: i.path)

    # -- downloads -------------------------------------------------------------------

    async def _download_all(
        self,
        base: str,
        ref: HfUrl,
        commit: str,
        items: list[HubFile],
        auth: bytes | None,
        request: FetchRequest,
        job: Job,
    ) -> list[Descriptor]:
        results: dict[str, Descriptor] = {}
        failures: list[BaseException] = []
        slots = DeferredSemaphore(self.parallel)

        async def one(item: HubFile) -> None:
            if failures:
                return
            try:
                results[item.path] = await self._file(base, ref, commit, item, auth, request, job)
            except BaseException as e:
                failures.append(e)
                raise

        await DeferredList([slots.run(one, i) for i in items], consumeErrors=True)
        if failures:
            raise next((f for f in failures if isinstance(f, StorageError)), failures[0])
        return [results[i.path] for i in items]

    async def _file(
        self,
        base: str,
        ref: HfUrl,
        commit: str,
        item: HubFile,
        auth: bytes | None,
        request: FetchRequest,
        job: Job,
    ) -> Descriptor:
        expected = Digest(item.lfs_sha256) if item.lfs_sha256 else request.expected
        if request.expected is not None and expected != request.expected:
            raise BadContent(f"{item.path} has sha256 {expected}, not {request.expected}")
        annotations = {ANNOTATION_TITLE: item.path, A_COMMIT: commit}
        if item.oid:
            annotations[A_OID] = item.oid
        if item.lfs_sha256:
            annotations[A_LFS] = item.lfs_sha256
        blob = job.progress.add(item.path, item.size)
        if expected is not None:
            size = await job.hold_existing(expected)
            if size is not None:
                blob.complete(expected, size)
                return Descriptor(MEDIA_TYPE_OCTET, expected, size, annotations)
        url = f"{base}/{ref.url_prefix}/resolve/{commit}/{quote(item.path)}"
        key = blob_ingest_key(expected) if expected else ingest_key(url)
        want = Wanted(
            url=url, authorization=auth, expected=expected, size=item.size, immutable=True
        )
        digest, size = await download(self.client, IngestFile(self.layout, key), want, job, blob)
        return Descriptor(MEDIA_TYPE_OCTET, digest, size, annotations)


def _next_link(link: str | None, current: str) -> str | None:
    """The ``rel="next"`` URL of a Link header (the Hub paginates tree listings)."""
    if not link:
        return None
    for part in link.split(","):
        m = re.match(r"\s*<([^>]+)>\s*;(.*)", part)
        if m and re.search(r'rel="?next"?', m.group(2)):
            nxt: str = urljoin(current, m.group(1))
            if urlsplit(nxt).netloc != urlsplit(current).netloc:
                return None  # never follow pagination to another host
            return nxt
    return None
