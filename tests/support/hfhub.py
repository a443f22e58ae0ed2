"""A local fake of the Hugging Face Hub and of its LFS CDN, speaking the Hub's HTTP protocol.

Standard library only; both servers listen on loopback, in daemon threads, and speak HTTP/1.1
with keep-alive and a ``Content-Length`` on every response. Point a downloader under test, or
the official ``huggingface_hub`` client (``HF_ENDPOINT=hub.endpoint``), at it::

    with FakeHub() as hub:
        repo = hub.add_repo("org/model")
        hub.add_file(repo, "config.json", b"{}")
        hub.add_file(repo, "weights/model.safetensors", b"x" * 1000)  # LFS by extension
        sha = hub.commit(repo, tag="v1.0")  # 40-hex git commit id; "main" and "v1.0" -> sha
        ...  # hub.endpoint == "http://127.0.0.1:PORT"; hub.cdn.url == "http://127.0.0.2:PORT"
        assert not any("authorization" in r.headers for r in hub.cdn.requests)

Every header and status below is what ``huggingface_hub`` (2.4.0, and 1.x read from its
source: ``file_download.py``, ``utils/_http.py``, ``hf_api.py``, ``_snapshot_download.py``)
sends and reads; the response shapes are those of the real Hub (huggingface.co) for a
*non-Xet* repository. No ``X-Xet-*`` header and no ``Link: <...>; rel="xet-auth"`` is ever
sent, so clients take the plain HTTP / LFS path.

Hub (``hub.endpoint``), mimicking huggingface.co:

* ``HEAD|GET /{repo_id}/resolve/{revision}/{path}`` (``/datasets/...`` and ``/spaces/...``
  too). ``revision`` is one URL segment, percent-encoded the way the client does it
  (``quote(revision, safe="")``, so ``refs%2Fpr%2F1``); a raw ``refs/pr/N`` is accepted too.
  It may name a branch, a tag, a ``refs/pr/N`` ref or a full 40-hex commit id.

  - a regular (git-stored) file: ``200`` with ``ETag: "<git blob sha1>"``,
    ``X-Repo-Commit: <commit>``, ``Content-Length``, ``Accept-Ranges: bytes`` and
    ``Content-Disposition: inline; ...``; ``Range`` gives ``206``/``416``.
  - an LFS file: ``302 Found`` to an absolute, signed CDN URL (``Location``) with
    ``X-Repo-Commit``, ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size: <bytes>``,
    ``ETag: "<git sha1 of the LFS pointer file>"`` (the git object; clients must prefer
    ``X-Linked-Etag``) and a ``text/plain`` body ``Found. Redirecting to <url>``.
  - a renamed repo (``rename_repo``): ``307`` with a *relative* ``Location`` on the new name,
    the redirect the client follows itself on its HEAD.

* ``GET /api/{models|datasets|spaces}/{repo_id}[/revision/{revision}]``: repo info
  (``ModelInfo``): ``_id, id, modelId, author, sha, lastModified, createdAt, private, gated,
  disabled, downloads, likes, tags, library_name, siblings [{rfilename}], spaces,
  usedStorage``; ``?blobs=true`` adds ``size, blobId, lfs {sha256, size, pointerSize}`` to the
  siblings (``files_metadata=True``); ``expand=...`` keeps only the named fields.
* ``GET /api/{type}s/{repo_id}/tree/{revision}[/{path}]?recursive=&expand=``: entries
  ``{type: file, oid, size, path[, lfs {oid, size, pointerSize}][, lastCommit]}`` and
  ``{type: directory, oid, size: 0, path}``, paginated like the Hub (1000 per page, 50 with
  ``expand=true``; see ``tree_page_size``) with ``Link: <next url>; rel="next"`` carrying a
  ``cursor`` query parameter. Directory and commit ids are real git tree / commit ids.
* ``GET /api/{type}s/{repo_id}/refs[?include_prs=1]``: ``{branches, converts, tags[,
  pullRequests]}`` of ``{name, ref, targetCommit}``.

Errors, as the Hub answers them (header ``X-Error-Code`` and ``X-Error-Message`` and a JSON
body ``{"error": message}``), which ``huggingface_hub.hf_raise_for_status`` turns into its
exception classes:

* ``RepoNotFound``: unknown repo, or a private one the caller may not read; ``401`` without
  a token (the Hub does not tell "missing" from "private" to anonymous callers), ``404``
  with a valid token -> ``RepositoryNotFoundError``.
* ``RevisionNotFound`` (``404``, ``Invalid rev id: <rev>``) -> ``RevisionNotFoundError``.
* ``EntryNotFound`` (``404``, ``Entry not found``, with ``X-Repo-Commit`` so the client can
  cache the miss under ``.no_exist/<commit>/``) -> ``RemoteEntryNotFoundError``.
* ``GatedRepo`` on ``/resolve`` of a gated repo: ``401`` ("... You must have access to it and
  be authenticated to access it. Please log in.") without a token, ``403`` ("... you are not
  in the authorized list ...") with a token not granted -> ``GatedRepoError``. The repo info
  and tree of a gated repo stay public, as on the Hub.
* an unknown bearer token: ``401`` ``Invalid credentials in Authorization header`` (no error
  code) -> plain ``HfHubHTTPError``.

CDN (``hub.cdn``), mimicking ``cdn-lfs.huggingface.co`` (CloudFront in front of S3): LFS
objects at ``/repos/{h[0:2]}/{h[2:4]}/{h}/{sha256}`` (``h`` the sha256 of the repo name) with
CloudFront-style signed query parameters ``response-content-disposition``,
``response-content-type``, ``Expires``, ``Policy``, ``Signature`` and ``Key-Pair-Id``. A
tampered or missing signature gives ``403`` (XML ``AccessDenied``), an expired one ``403``
(``Request has expired``), an unknown object ``404`` (``NoSuchKey``). It serves ``200`` or
``206`` (``Range``), with ``ETag: "<md5>"``, ``Content-Type``/``Content-Disposition`` taken
from the signed parameters, and ``Accept-Ranges: bytes``. It must never be sent the Hub token:
each request is recorded (``hub.cdn.requests``), and one carrying ``Authorization`` is refused
with ``400`` ``InvalidArgument`` ("Only one auth mechanism allowed", S3's answer to a presigned
URL plus an ``Authorization`` header) unless ``hub.cdn.reject_authorization = False``.

The CDN listens on ``127.0.0.2`` (another origin than the Hub, as ``cdn-lfs`` is another host
than ``huggingface.co``), or on another port of ``127.0.0.1`` if ``127.0.0.2`` cannot be bound.

Xet-era Hub (opt-in: ``FakeHub(xet=True)``). The Hub now stores most LFS files with Xet, and
answers for them as ``huggingface_hub`` (0.32+, read in huggingface/huggingface_hub
``src/huggingface_hub/file_download.py`` ``get_hf_file_metadata``,
``src/huggingface_hub/utils/_xet.py`` ``parse_xet_file_data_from_response`` and
``src/huggingface_hub/constants.py``) expects; every LFS file of the hub is then Xet-backed:

* ``HEAD|GET /resolve`` of an LFS file: the same ``302`` with ``X-Repo-Commit``,
  ``X-Linked-Etag`` (still the LFS sha256), ``X-Linked-Size`` and ``ETag``, plus
  ``X-Xet-Hash: <64 hex>`` and, with ``hub.xet_auth == "link"`` (the default, what the Hub sends
  today), ``Link: <{bridge}/reconstruction/<hash>>; rel="xet-reconstruction-info",
  <{endpoint}/api/{type}s/{repo}/xet-read-token/{commit}>; rel="xet-auth"``, or with
  ``"header"`` the older ``X-Xet-Refresh-Route: <the same token URL>``. A client with ``hf_xet``
  takes the Xet path on seeing them; any other follows ``Location``: a presigned URL on the Xet
  *bridge* (``hub.bridge``, mimicking ``cas-bridge.xethub.hf.co``: S3-style ``X-Amz-*`` query
  parameters, ``/xet-bridge-us/{h}/{xet hash}``), which serves the whole file like the CDN
  (``200``/``206``, signature checked, ``Authorization`` refused, recorded in
  ``hub.bridge.requests``). ``hub.bridge.serve_wrong_bytes = True`` makes it serve other bytes of
  the same length, as a broken bridge would.
* ``Access-Control-Expose-Headers`` also names the ``X-Xet-*`` headers (as in the Hub answers
  recorded in huggingface_hub's ``tests/cassettes/*.yaml``).
* tree listings carry ``"xetHash"`` on LFS files (``hf_api.py`` ``RepoFile``; read by
  ``_snapshot_download.py`` into its tree cache, from which ``file_download.py``
  ``_xet_file_metadata_from_tree_cache`` skips the ``HEAD`` altogether).
* ``GET /api/{type}s/{repo}/xet-read-token/{revision}``: ``{accessToken, exp, casUrl}`` and the
  same in ``X-Xet-Access-Token``, ``X-Xet-Token-Expiration``, ``X-Xet-Cas-Url``. The CAS
  protocol itself is not faked: ``casUrl`` names the bridge, which answers ``404`` there, so a
  client with ``hf_xet`` enabled fails against this fake (run it with ``HF_HUB_DISABLE_XET=1``
  for the plain-HTTP fallback).

The Xet hash here is a stand-in (a keyed BLAKE2b of the bytes, 64 hex digits), not Xet's
chunk Merkle hash: nothing here can check one without a CAS.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import hmac
import json
import mimetypes
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, cast
from urllib.parse import parse_qs, quote, unquote, urlencode

from tests.support.loopback_http import LoopbackHTTPServer, TrackedHandler

__all__ = [
    "LFS_EXTENSIONS",
    "LFS_THRESHOLD",
    "CacheLayout",
    "FakeCdn",
    "FakeHub",
    "FakeXetBridge",
    "HubCommit",
    "HubFile",
    "HubRepo",
    "RecordedRequest",
    "RepoType",
    "git_blob_oid",
    "iter_cache_files",
    "lfs_pointer",
]

RepoType = Literal["model", "dataset", "space"]
Gated = Literal[False, "auto", "manual"]
ServerName = Literal["hub", "cdn", "bridge"]
XetAuth = Literal["link", "header"]

LFS_THRESHOLD = 10 * 1024 * 1024
"""Files of at least this many bytes are stored in LFS unless ``add_file(lfs=False)``."""

LFS_EXTENSIONS = (".gguf", ".safetensors", ".bin")
"""Files with these extensions are stored in LFS unless ``add_file(lfs=False)``."""

TREE_PAGE_SIZE = 1000
"""Entries per ``/tree`` page, the Hub's page size."""

TREE_EXPAND_PAGE_SIZE = 50
"""Entries per ``/tree`` page with ``expand=true``, the Hub's page size."""

IDLE_TIMEOUT = 30.0
"""Seconds an idle keep-alive connection is kept open."""

_CHUNK = 256 * 1024
_BASE_TIME = 1_704_067_200  # 2024-01-01T00:00:00Z: commit dates are _BASE_TIME + 60 s * n
_URL_PREFIX: dict[str, str] = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_TYPES: dict[str, RepoType] = {"models": "model", "datasets": "dataset", "spaces": "space"}
_TYPE_PREFIXES: dict[str, RepoType] = {"datasets": "dataset", "spaces": "space"}
_API_KEYWORDS = frozenset({"revision", "tree", "refs", "xet-read-token"})
_EXPOSE = (
    "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,"
    "Accept-Ranges,Content-Range,X-Linked-Size,X-Linked-ETag"
)
_EXPOSE_XET = (
    f"{_EXPOSE},X-Xet-Access-Token,X-Xet-Token-Expiration,X-Xet-Refresh-Route,X-Xet-Cas-Url,"
    "X-Xet-Hash"
)
_INFO_FIELDS = (
    "author",
    "sha",
    "lastModified",
    "createdAt",
    "private",
    "gated",
    "disabled",
    "downloads",
    "likes",
    "tags",
    "library_name",
    "siblings",
    "spaces",
    "usedStorage",
)


# -- git objects ------------------------------------------------------------------------------


def git_blob_oid(data: bytes) -> str:
    """The git blob id (sha1 of ``blob <len>\\0<data>``): the Hub's ``ETag`` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS object."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _git_object_oid(kind: bytes, content: bytes) -> str:
    return hashlib.sha1(kind + b" %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@dataclasses.dataclass(frozen=True)
class HubFile:
    """One file of a repo. ``oid`` is the git blob id of what git stores (the pointer for LFS)."""

    path: str
    data: bytes = dataclasses.field(repr=False)
    lfs: bool
    sha256: str
    oid: str
    pointer_size: int | None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def etag(self) -> str:
        """What ``huggingface_hub`` names the cached blob: sha256 for LFS, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.oid

    @functools.cached_property
    def xet_hash(self) -> str:
        """The stand-in Xet hash of the file (64 hex digits; see the module docstring)."""
        return hashlib.blake2b(self.data, digest_size=32, key=b"fake-xet").hexdigest()

    @classmethod
    def make(cls, path: str, data: bytes, lfs: bool) -> HubFile:
        sha256 = hashlib.sha256(data).hexdigest()
        if lfs:
            pointer = lfs_pointer(sha256, len(data))
            return cls(path, data, True, sha256, git_blob_oid(pointer), len(pointer))
        return cls(path, data, False, sha256, git_blob_oid(data), None)


@dataclasses.dataclass(frozen=True)
class HubCommit:
    """A commit: a full snapshot of the repo's files, with real git tree and commit ids."""

    sha: str
    parent: str | None
    message: str
    timestamp: int
    files: Mapping[str, HubFile] = dataclasses.field(repr=False)
    trees: Mapping[str, str] = dataclasses.field(repr=False)
    """Directory path ("" for the root) -> git tree id."""

    @property
    def date(self) -> str:
        return _iso(self.timestamp)


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _build_trees(files: Mapping[str, HubFile]) -> dict[str, str]:
    """Git tree ids of every directory of ``files`` (real ``git mktree`` ids)."""
    root: dict[str, Any] = {}
    for path, file in files.items():
        node = root
        *dirs, name = path.split("/")
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = file
    trees: dict[str, str] = {}

    def write(node: dict[str, Any], prefix: str) -> str:
        entries: list[tuple[bytes, bytes]] = []
        for name, child in node.items():
            raw = name.encode()
            if isinstance(child, HubFile):
                entries.append((raw, b"100644 " + raw + b"\0" + bytes.fromhex(child.oid)))
            else:
                oid = write(child, f"{prefix}{name}/")
                entries.append((raw + b"/", b"40000 " + raw + b"\0" + bytes.fromhex(oid)))
        content = b"".join(entry for _, entry in sorted(entries))
        oid = _git_object_oid(b"tree", content)
        trees[prefix.rstrip("/")] = oid
        return oid

    write(root, "")
    return trees


def _commit_oid(tree: str, parent: str | None, message: str, timestamp: int) -> str:
    ident = f"Fake Hub <hub@fake-hub.invalid> {timestamp} +0000"
    lines = [f"tree {tree}"]
    if parent is not None:
        lines.append(f"parent {parent}")
    lines += [f"author {ident}", f"committer {ident}", "", message, ""]
    return _git_object_oid(b"commit", "\n".join(lines).encode())


# -- repos --------------------------------------------------------------------------------------


class HubRepo:
    """A repo: refs (branches, ``refs/pr/N``), tags, commits and per-ref staged changes."""

    def __init__(
        self,
        repo_id: str,
        repo_type: RepoType,
        *,
        private: bool,
        gated: Gated,
        readers: set[str] | None,
        created: int,
    ) -> None:
        self.repo_id = repo_id
        self.repo_type: RepoType = repo_type
        self.private = private
        self.gated: Gated = gated
        self.readers = readers
        """Tokens that may read a private or gated repo; ``None``: every token in ``hub.tokens``."""
        self.created = created
        self.refs: dict[str, str] = {}
        """Branches (``main``) and other refs (``refs/pr/1``) -> commit id."""
        self.tags: dict[str, str] = {}
        self.commits: dict[str, HubCommit] = {}
        self.staged: dict[str, dict[str, HubFile | None]] = {}
        """Per ref: path -> file added, or ``None`` for a file deleted, since the last commit."""

    def __repr__(self) -> str:
        return f"HubRepo({self.repo_type}:{self.repo_id})"

    @property
    def cache_folder(self) -> str:
        """The folder ``huggingface_hub`` caches this repo in, e.g. ``models--org--name``."""
        return "--".join([f"{self.repo_type}s", *self.repo_id.split("/")])

    def resolve(self, revision: str) -> HubCommit | None:
        """The commit a revision names: a branch or ref, a tag, or a full commit id."""
        for prefix, table in (("refs/heads/", self.refs), ("refs/tags/", self.tags)):
            if revision.startswith(prefix) and revision[len(prefix) :] in table:
                return self.commits[table[revision[len(prefix) :]]]
        sha = self.refs.get(revision) or self.tags.get(revision)
        if sha is None and len(revision) == 40:
            sha = revision.lower() if revision.lower() in self.commits else None
        return None if sha is None else self.commits[sha]

    def last_commit_of(self, commit: HubCommit, path: str) -> HubCommit:
        """The oldest ancestor of ``commit`` since which ``path`` has not changed."""
        oid = commit.files[path].oid if path in commit.files else commit.trees.get(path)
        current = commit
        while current.parent is not None:
            parent = self.commits[current.parent]
            parent_oid = parent.files[path].oid if path in parent.files else parent.trees.get(path)
            if parent_oid != oid:
                break
            current = parent
        return current


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """What ``huggingface_hub`` puts in ``HF_HUB_CACHE`` for one repo revision.

    ``{cache}/{folder}/refs/{revision}`` holds ``commit`` (no newline; only when the revision
    is not the commit id itself), ``{cache}/{folder}/blobs/{etag}`` holds the bytes and
    ``{cache}/{folder}/snapshots/{commit}/{path}`` is a symlink to the *relative* target in
    ``links`` (``../../blobs/<etag>``, one more ``../`` per directory level of ``path``).
    """

    folder: str
    revision: str
    commit: str
    blobs: Mapping[str, bytes] = dataclasses.field(repr=False)
    links: Mapping[str, str]


# -- HTTP plumbing --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as a server saw it. ``headers`` keys are lowercased."""

    server: ServerName
    method: str
    path: str
    """Path and query string, as sent (still percent-encoded)."""
    headers: Mapping[str, str]
    host: str
    """The ``host:port`` the request reached (not the ``Host`` header, which is in headers)."""
    status: int
    seq: int
    """Global arrival order across both servers."""

    @property
    def route(self) -> str:
        """The path without its query string."""
        return self.path.partition("?")[0]


@dataclasses.dataclass
class _Request:
    method: str
    target: str
    headers: dict[str, str]

    @property
    def route(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.target.partition("?")[2], keep_blank_values=True)


@dataclasses.dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    cut_at: int | None = None


@dataclasses.dataclass
class _Interrupt:
    nbytes: int
    remaining: int
    route_contains: str | None


def _parse_range(value: str | None, size: int) -> tuple[int, int] | Literal["bad"] | None:
    """One ``bytes=`` range as inclusive offsets; ``None`` to ignore, ``"bad"`` if unsatisfiable."""
    if value is None:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # multiple ranges: S3, CloudFront and the Hub answer the whole object
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s.isdigit() or last_s.isdigit()):
        return None
    if not first_s:
        suffix = int(last_s)
        if suffix == 0:
            return "bad"
        return max(size - suffix, 0), size - 1
    first = int(first_s)
    if first >= size:
        return "bad"
    last = min(int(last_s), size - 1) if last_s.isdigit() else size - 1
    return None if last < first else (first, last)


def _ranged(
    req: _Request, data: bytes, headers: list[tuple[str, str]]
) -> tuple[int, list[tuple[str, str]], bytes]:
    span = _parse_range(req.headers.get("range"), len(data))
    if span == "bad":
        return 416, [("Content-Range", f"bytes */{len(data)}")], b""
    if span is None:
        return 200, headers, data
    first, last = span
    partial = [*headers, ("Content-Range", f"bytes {first}-{last}/{len(data)}")]
    return 206, partial, data[first : last + 1]


class _Server(LoopbackHTTPServer):
    def __init__(self, address: tuple[str, int], service: _Service) -> None:
        self.service = service
        super().__init__(address, _Handler)


class _Handler(TrackedHandler):
    timeout = IDLE_TIMEOUT

    @property
    def _service(self) -> _Service:
        return cast(_Server, self.server).service

    def version_string(self) -> str:
        return self._service.server_header

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = self.headers.get("Content-Length", "0").strip()
        if self.headers.get("Transfer-Encoding") is not None or not length.isdigit():
            self.close_connection = True  # a chunked request body is not read: do not reuse
        elif int(length):
            self.rfile.read(int(length))
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = _Request(self.command, self.path, headers)
        service = self._service
        try:
            response = service._respond(request)
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang the client
            response = _json_response(500, {"error": f"fake hub error: {exc!r}"})
        response = service._finish(request, response)
        service._record(request, response.status)
        self.send_response(response.status)
        for key, value in response.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = memoryview(response.body)
        limit = len(body) if response.cut_at is None else min(response.cut_at, len(body))
        for pos in range(0, limit, _CHUNK):
            self.wfile.write(body[pos : min(pos + _CHUNK, limit)])
        if response.cut_at is not None:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def _json_response(
    status: int, payload: object, headers: list[tuple[str, str]] | None = None
) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(
        status, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])], body
    )


def _loopback_only(host: str) -> None:
    if not (host.startswith("127.") or host == "::1"):
        raise ValueError(f"only loopback addresses may be used, got {host!r}")


class _Service:
    """One HTTP server in a daemon thread, with request recording and injected cuts."""

    name: ServerName
    server_header = "fake"

    def __init__(self, owner: FakeHub, host: str) -> None:
        _loopback_only(host)
        self._owner = owner
        self._host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._interrupts: list[_Interrupt] = []

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests this server received, in arrival order."""
        return [r for r in self._owner.all_requests if r.server == self.name]

    @property
    def host(self) -> str:
        """``ip:port`` of this server."""
        if self._server is None:
            raise RuntimeError(f"{self.name} not started")
        name = self._server.server_name
        return (
            f"[{name}]:{self._server.server_port}"
            if ":" in name
            else f"{name}:{self._server.server_port}"
        )

    @property
    def url(self) -> str:
        """``http://ip:port`` of this server, no trailing slash."""
        return f"http://{self.host}"

    def interrupt_next(
        self, nbytes: int, times: int = 1, route_contains: str | None = None
    ) -> None:
        """Cut the next ``times`` GET bodies (200/206) after ``nbytes`` bytes, then close.

        Only responses whose path contains ``route_contains`` count, if given. The
        ``Content-Length`` still announces the full length, as a dropped transfer would.
        """
        if nbytes < 0 or times < 1:
            raise ValueError("nbytes must be >= 0 and times >= 1")
        with self._owner._lock:
            self._interrupts.append(_Interrupt(nbytes, times, route_contains))

    def _start(self) -> None:
        server = _Server((self._host, 0), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.name}:{server.server_port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def _stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.close(thread)
        self._server = self._thread = None

    def _record(self, request: _Request, status: int) -> None:
        self._owner._record(self.name, self.host, request, status)

    def _finish(self, request: _Request, response: _Response) -> _Response:
        if request.method != "GET" or response.status not in (200, 206):
            return response
        with self._owner._lock:
            for interrupt in self._interrupts:
                wanted = interrupt.route_contains
                if wanted is None or wanted in request.route:
                    response.cut_at = interrupt.nbytes
                    interrupt.remaining -= 1
                    if not interrupt.remaining:
                        self._interrupts.remove(interrupt)
                    break
        return response

    def _respond(self, request: _Request) -> _Response:
        raise NotImplementedError


# -- CDN ----------------------------------------------------------------------------------------


class FakeCdn(_Service):
    """The LFS CDN: signed, expiring URLs to objects named by sha256. See the module docstring."""

    name = "cdn"
    server_header = "AmazonS3"

    def __init__(self, owner: FakeHub, host: str) -> None:
        super().__init__(owner, host)
        self.reject_authorization = True
        """Refuse (400) a request carrying ``Authorization``; it is recorded either way."""
        self.url_ttl = 3600
        """Seconds a signed URL stays valid."""
        self.key_pair_id = "KFAKEHUBCDNKEYPAIR"
        self._secret = secrets.token_bytes(32)

    def signed_url(self, repo: HubRepo, file: HubFile) -> str:
        """A fresh signed URL for ``file``'s LFS object, as the Hub's 302 ``Location``."""
        name = file.path.rsplit("/", 1)[-1]
        repo_hash = hashlib.sha256(f"{repo.repo_type}s/{repo.repo_id}".encode()).hexdigest()
        path = f"/repos/{repo_hash[:2]}/{repo_hash[2:4]}/{repo_hash}/{file.sha256}"
        expires = str(int(time.time()) + self.url_ttl)
        disposition = f"attachment; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        content_type = "application/octet-stream"
        resource = f"{self.url}{path}"
        policy = json.dumps(
            {
                "Statement": [
                    {
                        "Resource": f"{resource}?*",
                        "Condition": {"DateLessThan": {"AWS:EpochTime": int(expires)}},
                    }
                ]
            },
            separators=(",", ":"),
        )
        params = {
            "response-content-disposition": disposition,
            "response-content-type": content_type,
            "Expires": expires,
            "Policy": _cloudfront_b64(policy.encode()),
            "Signature": self._sign(path, expires, disposition, content_type),
            "Key-Pair-Id": self.key_pair_id,
        }
        return f"{resource}?{urlencode(params, quote_via=quote)}"

    def _sign(self, path: str, expires: str, disposition: str, content_type: str) -> str:
        message = "\n".join((path, expires, disposition, content_type)).encode()
        return _cloudfront_b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def _respond(self, request: _Request) -> _Response:
        if request.method not in ("GET", "HEAD"):
            return _s3_error(405, "MethodNotAllowed", "The specified method is not allowed.")
        if self.reject_authorization and "authorization" in request.headers:
            return _s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be "
                "specified",
            )
        query = {key: values[0] for key, values in request.query.items()}
        expires = query.get("Expires", "")
        disposition = query.get("response-content-disposition", "")
        content_type = query.get("response-content-type", "")
        signature = query.get("Signature", "")
        expected = self._sign(request.route, expires, disposition, content_type)
        if not expires.isdigit() or not hmac.compare_digest(signature, expected):
            return _s3_error(403, "AccessDenied", "Access denied")
        if int(expires) < time.time():
            return _s3_error(403, "AccessDenied", "Request has expired")
        sha256 = request.route.rsplit("/", 1)[-1]
        data = self._owner._lfs_objects.get(sha256)
        if data is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        headers = [
            ("Content-Type", content_type or "application/octet-stream"),
            ("Content-Disposition", disposition),
            ("ETag", f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'),
            ("Last-Modified", _http_date(_BASE_TIME)),
            ("Accept-Ranges", "bytes"),
            ("X-Cache", "Miss from cloudfront"),
        ]
        status, headers, body = _ranged(request, data, headers)
        return _Response(status, headers, body)


class FakeXetBridge(_Service):
    """The Xet bridge (``cas-bridge.xethub.hf.co``): whole files by Xet hash, at presigned URLs.

    Only used by ``FakeHub(xet=True)``; see the module docstring.
    """

    name = "bridge"
    server_header = "cas-bridge"

    def __init__(self, owner: FakeHub, host: str) -> None:
        super().__init__(owner, host)
        self.reject_authorization = True
        """Refuse (400) a request carrying ``Authorization``; it is recorded either way."""
        self.serve_wrong_bytes = False
        """Serve other bytes (same length) than the file's, as a broken bridge would."""
        self.url_ttl = 3600
        self._secret = secrets.token_bytes(32)

    def signed_url(self, repo: HubRepo, file: HubFile) -> str:
        """A presigned bridge URL for ``file``, as the Xet-era Hub's 302 ``Location``."""
        name = file.path.rsplit("/", 1)[-1]
        repo_hash = hashlib.sha256(f"{repo.repo_type}s/{repo.repo_id}".encode()).hexdigest()
        path = f"/xet-bridge-us/{repo_hash[:24]}/{file.xet_hash}"
        now = datetime.datetime.now(tz=datetime.UTC)
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD",
            "X-Amz-Credential": f"cas/{now:%Y%m%d}/us-east-1/s3/aws4_request",
            "X-Amz-Date": f"{now:%Y%m%dT%H%M%SZ}",
            "X-Amz-Expires": str(self.url_ttl),
            "X-Amz-SignedHeaders": "host",
            "X-Xet-Cas-Uid": "public",
            "response-content-disposition": (
                f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
            ),
            "response-content-type": "application/octet-stream",
            "x-id": "GetObject",
        }
        params["X-Amz-Signature"] = self._sign(path, params)
        return f"{self.url}{path}?{urlencode(params, quote_via=quote)}"

    def _sign(self, path: str, params: Mapping[str, str]) -> str:
        fields = sorted((k, v) for k, v in params.items() if k != "X-Amz-Signature")
        message = "\n".join([path, *(f"{k}={v}" for k, v in fields)]).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _respond(self, request: _Request) -> _Response:
        if request.method not in ("GET", "HEAD"):
            return _s3_error(405, "MethodNotAllowed", "The specified method is not allowed.")
        if self.reject_authorization and "authorization" in request.headers:
            return _s3_error(
                400, "InvalidArgument", "Only one auth mechanism allowed; presigned URL"
            )
        query = {key: values[0] for key, values in request.query.items()}
        if not request.route.startswith("/xet-bridge-us/"):
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        signature = query.get("X-Amz-Signature", "")
        if not hmac.compare_digest(signature, self._sign(request.route, query)):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature does not match")
        try:
            signed_at = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            expires = signed_at.replace(tzinfo=datetime.UTC).timestamp() + int(
                query["X-Amz-Expires"]
            )
        except (KeyError, ValueError):
            return _s3_error(403, "AccessDenied", "Access denied")
        if expires < time.time():
            return _s3_error(403, "AccessDenied", "Request has expired")
        data = self._owner._xet_objects.get(request.route.rsplit("/", 1)[-1])
        if data is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if self.serve_wrong_bytes:
            data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"x"
        headers = [
            ("Content-Type", query.get("response-content-type", "application/octet-stream")),
            ("Content-Disposition", query.get("response-content-disposition", "")),
            ("ETag", f'"{request.route.rsplit("/", 1)[-1]}"'),
            ("Last-Modified", _http_date(_BASE_TIME)),
            ("Accept-Ranges", "bytes"),
        ]
        status, headers, body = _ranged(request, data, headers)
        return _Response(status, headers, body)


def _cloudfront_b64(raw: bytes) -> str:
    """CloudFront's URL-safe base64 (``+=/`` become ``-_~``)."""
    encoded = base64.b64encode(raw).decode()
    return encoded.replace("+", "-").replace("=", "_").replace("/", "~")


def _s3_error(status: int, code: str, message: str) -> _Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    return _Response(status, [("Content-Type", "application/xml")], body)


def _http_date(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


# -- Hub ----------------------------------------------------------------------------------------


class _HubService(_Service):
    name = "hub"
    server_header = "huggingface-moon"

    def _respond(self, request: _Request) -> _Response:
        return self._owner._respond(request)


class FakeHub:
    """The Hub and its CDN; a context manager that starts and stops both. See module docstring."""

    def __init__(
        self, cdn_host: str | None = None, *, xet: bool = False, bridge_host: str | None = None
    ) -> None:
        self._lock = threading.RLock()
        self._hub = _HubService(self, "127.0.0.1")
        self._cdn_host = cdn_host
        self.cdn = FakeCdn(self, cdn_host or "127.0.0.2")
        self.xet = xet
        """Answer as the Xet-era Hub (every LFS file Xet-backed); fixed at construction."""
        self._bridge_host = bridge_host
        self.bridge = FakeXetBridge(self, bridge_host or "127.0.0.3")
        """The Xet bridge, started only with ``xet=True``."""
        self.xet_auth: XetAuth = "link"
        """How the token route is named: ``Link: rel="xet-auth"`` or ``X-Xet-Refresh-Route``."""
        self.tokens: set[str] = set()
        """Valid bearer tokens (``Authorization: Bearer <token>``)."""
        self.reject_invalid_tokens = True
        """Answer 401 ``Invalid credentials in Authorization header`` to an unknown token."""
        self.tree_page_size = TREE_PAGE_SIZE
        self.tree_expand_page_size = TREE_EXPAND_PAGE_SIZE
        self.repos: dict[tuple[RepoType, str], HubRepo] = {}
        self._renamed: dict[tuple[RepoType, str], str] = {}
        self._lfs_objects: dict[str, bytes] = {}
        self._xet_objects: dict[str, bytes] = {}
        self._requests: list[RecordedRequest] = []
        self._clock = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        """Bind the Hub to 127.0.0.1 and the CDN to 127.0.0.2 (ephemeral ports) and serve."""
        self._hub._start()
        try:
            self.cdn._start()
        except OSError:
            if self._cdn_host is not None:
                raise
            self.cdn._host = "127.0.0.1"  # no 127.0.0.2 here: another port is another origin
            self.cdn._start()
        if self.xet:
            try:
                self.bridge._start()
            except OSError:
                if self._bridge_host is not None:
                    raise
                self.bridge._host = "127.0.0.1"
                self.bridge._start()
        return self

    def stop(self) -> None:
        """Stop the servers and close their connections. Idempotent."""
        self.bridge._stop()
        self.cdn._stop()
        self._hub._stop()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``HF_ENDPOINT``."""
        return self._hub.url

    @property
    def host(self) -> str:
        return self._hub.host

    # -- recording -------------------------------------------------------------------------------

    @property
    def all_requests(self) -> list[RecordedRequest]:
        """Requests of both servers, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests the Hub (not the CDN) received, in arrival order."""
        return self._hub.requests

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def interrupt_next(
        self, nbytes: int, times: int = 1, route_contains: str | None = None
    ) -> None:
        """Cut the Hub's next GET bodies; see ``FakeCdn.interrupt_next``."""
        self._hub.interrupt_next(nbytes, times, route_contains)

    def _record(self, server: ServerName, host: str, req: _Request, status: int) -> None:
        with self._lock:
            seq = len(self._requests)
            self._requests.append(
                RecordedRequest(
                    server, req.method, req.target, dict(req.headers), host, status, seq
                )
            )

    # -- content ---------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        repo_type: RepoType = "model",
        gated: bool | Gated = False,
        private: bool = False,
        readers: set[str] | None = None,
    ) -> HubRepo:
        """Create an empty repo (no commit yet). ``gated=True`` means ``"manual"``."""
        if repo_id.count("/") > 1 or not repo_id.strip("/") or repo_id != repo_id.strip("/"):
            raise ValueError(f"bad repo id {repo_id!r}")
        gate: Gated = "manual" if gated is True else gated
        with self._lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            repo = HubRepo(
                repo_id,
                repo_type,
                private=private,
                gated=gate,
                readers=None if readers is None else set(readers),
                created=self._tick(),
            )
            self.repos[key] = repo
            return repo

    def repo(self, repo_id: str, repo_type: RepoType = "model") -> HubRepo:
        with self._lock:
            return self.repos[(repo_type, repo_id)]

    def add_file(
        self,
        repo: HubRepo | str,
        path_in_repo: str,
        data: bytes,
        lfs: bool | None = None,
        revision: str = "main",
    ) -> HubFile:
        """Stage a file on branch/ref ``revision``; ``commit`` makes it visible.

        ``lfs=None`` stores it in LFS if it has at least ``LFS_THRESHOLD`` bytes or ends with one
        of ``LFS_EXTENSIONS``.
        """
        repo = self._repo(repo)
        path = path_in_repo.strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError(f"bad path in repo {path_in_repo!r}")
        if lfs is None:
            lfs = len(data) >= LFS_THRESHOLD or path.lower().endswith(LFS_EXTENSIONS)
        file = HubFile.make(path, bytes(data), lfs)
        with self._lock:
            repo.staged.setdefault(revision, {})[path] = file
            if lfs:
                self._lfs_objects[file.sha256] = file.data
                if self.xet:
                    self._xet_objects[file.xet_hash] = file.data
        return file

    def delete_file(self, repo: HubRepo | str, path_in_repo: str, revision: str = "main") -> None:
        """Stage the deletion of a file on ``revision``."""
        repo = self._repo(repo)
        with self._lock:
            repo.staged.setdefault(revision, {})[path_in_repo.strip("/")] = None

    def commit(
        self,
        repo: HubRepo | str,
        revision: str = "main",
        tag: str | None = None,
        message: str | None = None,
    ) -> str:
        """Commit what is staged on branch/ref ``revision`` and return the 40-hex commit id.

        A new branch or ``refs/pr/N`` starts from ``main``'s head. ``tag`` also points a tag at
        the new commit. Each commit gets a later date, so commit ids always differ.
        """
        repo = self._repo(repo)
        if revision in repo.tags or (len(revision) == 40 and revision in repo.commits):
            raise ValueError(f"can only commit to a branch or ref, not {revision!r}")
        with self._lock:
            parent_sha = repo.refs.get(revision) or repo.refs.get("main")
            parent = repo.commits[parent_sha] if parent_sha is not None else None
            files = dict(parent.files) if parent is not None else {}
            for path, file in repo.staged.pop(revision, {}).items():
                if file is None:
                    files.pop(path, None)
                else:
                    files[path] = file
            trees = _build_trees(files)
            timestamp = self._tick()
            text = message or f"Commit {len(repo.commits) + 1} on {revision}"
            sha = _commit_oid(trees[""], parent_sha, text, timestamp)
            commit = HubCommit(sha, parent_sha, text, timestamp, dict(sorted(files.items())), trees)
            repo.commits[sha] = commit
            repo.refs[revision] = sha
            if tag is not None:
                repo.tags[tag] = sha
            return sha

    def tag(self, repo: HubRepo | str, tag: str, revision: str = "main") -> str:
        """Point ``tag`` at the commit ``revision`` names; return the commit id."""
        repo = self._repo(repo)
        with self._lock:
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            repo.tags[tag] = commit.sha
            return commit.sha

    def rename_repo(self, old_id: str, new_id: str, repo_type: RepoType = "model") -> HubRepo:
        """Move a repo; requests for ``old_id`` are redirected (307, relative) as on the Hub."""
        with self._lock:
            repo = self.repos.pop((repo_type, old_id))
            repo.repo_id = new_id
            self.repos[(repo_type, new_id)] = repo
            self._renamed[(repo_type, old_id)] = new_id
            return repo

    def resolve_url(self, repo: HubRepo | str, path_in_repo: str, revision: str = "main") -> str:
        """``{endpoint}/[datasets/]{repo}/resolve/{quote(revision, safe="")}/{quote(path)}``."""
        repo = self._repo(repo)
        prefix = _URL_PREFIX[repo.repo_type]
        rev = quote(revision, safe="")
        return f"{self.endpoint}/{prefix}{repo.repo_id}/resolve/{rev}/{quote(path_in_repo)}"

    def cache_layout(
        self, repo: HubRepo | str, revision: str = "main", paths: list[str] | None = None
    ) -> CacheLayout:
        """The HF cache entries a download of ``revision`` (all files, or ``paths``) makes."""
        repo = self._repo(repo)
        with self._lock:
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            chosen = [commit.files[p] for p in (paths if paths is not None else commit.files)]
        blobs = {file.etag: file.data for file in chosen}
        links = {f.path: "../" * (f.path.count("/") + 2) + f"blobs/{f.etag}" for f in chosen}
        return CacheLayout(repo.cache_folder, revision, commit.sha, blobs, links)

    def _repo(self, repo: HubRepo | str) -> HubRepo:
        return repo if isinstance(repo, HubRepo) else self.repo(repo)

    def _tick(self) -> int:
        with self._lock:
            self._clock += 1
            return _BASE_TIME + 60 * self._clock

    # -- request handling ------------------------------------------------------------------------

    def _respond(self, req: _Request) -> _Response:
        segments = req.route.split("/")[1:]
        if req.method not in ("GET", "HEAD"):
            return self._error(405, None, "Method not allowed")
        if segments[:1] == ["api"] and len(segments) >= 3 and segments[1] in _API_TYPES:
            return self._api(req, _API_TYPES[segments[1]], segments[2:])
        repo_type: RepoType = "model"
        if segments and segments[0] in _TYPE_PREFIXES:
            repo_type = _TYPE_PREFIXES[segments[0]]
            segments = segments[1:]
        found = self._split_repo(repo_type, segments, frozenset({"resolve"}))
        if found is None:
            return self._error(404, None, "Not Found")
        repo_id, rest = found
        return self._resolve(req, repo_type, repo_id, rest[1:])

    def _split_repo(
        self, repo_type: RepoType, segments: list[str], keywords: frozenset[str]
    ) -> tuple[str, list[str]] | None:
        """Split ``[org, name, keyword, ...]`` or ``[name, keyword, ...]`` (canonical repos)."""
        with self._lock:
            known = self.repos.keys() | self._renamed.keys()
        two = len(segments) >= 3 and segments[2] in keywords
        one = len(segments) >= 2 and segments[1] in keywords
        if two and (repo_type, "/".join(segments[:2])) in known:
            return "/".join(segments[:2]), segments[2:]
        if one and (repo_type, segments[0]) in known:
            return segments[0], segments[1:]
        if two:
            return "/".join(segments[:2]), segments[2:]
        if one:
            return segments[0], segments[1:]
        return None

    def _error(
        self, status: int, code: str | None, message: str, commit: str | None = None
    ) -> _Response:
        headers = [("X-Error-Message", message), *self._common_headers()]
        if code is not None:
            headers.insert(0, ("X-Error-Code", code))
        if commit is not None:
            headers.append(("X-Repo-Commit", commit))
        return _json_response(status, {"error": message}, headers)

    def _common_headers(self) -> list[tuple[str, str]]:
        return [
            ("X-Request-Id", f"Root=1-{secrets.token_hex(4)}-{secrets.token_hex(12)}"),
            ("Access-Control-Expose-Headers", _EXPOSE_XET if self.xet else _EXPOSE),
            ("Vary", "Origin"),
        ]

    def _token(self, req: _Request) -> tuple[str | None, _Response | None]:
        header = req.headers.get("authorization")
        if header is None:
            return None, None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token in self.tokens:
            return token, None
        if self.reject_invalid_tokens:
            return None, self._error(401, None, "Invalid credentials in Authorization header")
        return None, None

    def _may_read(self, repo: HubRepo, token: str | None) -> bool:
        return token is not None and (repo.readers is None or token in repo.readers)

    def _visible_repo(
        self, req: _Request, repo_type: RepoType, repo_id: str
    ) -> tuple[HubRepo, str | None] | _Response:
        """The repo if the caller may see it; else the Hub's redirect or error response."""
        token, invalid = self._token(req)
        if invalid is not None:
            return invalid
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
            new_id = self._renamed.get((repo_type, repo_id))
        if repo is None and new_id is not None:
            route, marker = req.route, f"/{repo_id}"
            at = route.find(marker + "/")
            at = at if at >= 0 else len(route) - len(marker)
            new_route = f"{route[:at]}/{new_id}{route[at + len(marker) :]}"
            query = req.target.partition("?")[2]
            location = new_route + (f"?{query}" if query else "")
            headers = [("Location", location), ("Content-Type", "text/plain; charset=utf-8")]
            body = f"Temporary Redirect. Redirecting to {location}".encode()
            return _Response(307, [*headers, *self._common_headers()], body)
        if repo is None or (repo.private and not self._may_read(repo, token)):
            return self._error(
                401 if token is None else 404, "RepoNotFound", "Repository not found"
            )
        return repo, token

    def _resolve(
        self, req: _Request, repo_type: RepoType, repo_id: str, rest: list[str]
    ) -> _Response:
        visible = self._visible_repo(req, repo_type, repo_id)
        if isinstance(visible, _Response):
            return visible
        repo, token = visible
        if repo.gated and not self._may_read(repo, token):
            kind = repo.repo_type
            if token is None:
                message = (
                    f"Access to {kind} {repo.repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in."
                )
                return self._error(401, "GatedRepo", message)
            message = (
                f"Access to {kind} {repo.repo_id} is restricted and you are not in the "
                f"authorized list. Visit {self.endpoint}/{_URL_PREFIX[kind]}{repo.repo_id} "
                "to ask for access."
            )
            return self._error(403, "GatedRepo", message)
        if not rest:
            return self._error(404, None, "Not Found")
        if rest[0] == "refs" and len(rest) >= 3 and rest[1] in ("pr", "convert"):
            revision, path_parts = "/".join(rest[:3]), rest[3:]
        else:
            revision, path_parts = unquote(rest[0]), rest[1:]
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        path = unquote("/".join(path_parts))
        file = commit.files.get(path)
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=commit.sha)
        common = [("X-Repo-Commit", commit.sha), ("Accept-Ranges", "bytes")]
        common += self._common_headers()
        if file.lfs:
            location = (self.bridge if self.xet else self.cdn).signed_url(repo, file)
            headers = [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Location", location),
                ("ETag", f'"{file.oid}"'),
                ("X-Linked-Size", str(file.size)),
                ("X-Linked-ETag", f'"{file.sha256}"'),
                *self._xet_headers(repo, commit, file),
                *common,
            ]
            return _Response(302, headers, f"Found. Redirecting to {location}".encode())
        name = path.rsplit("/", 1)[-1]
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type == "application/json":
            content_type += "; charset=utf-8"
        headers = [
            ("Content-Type", content_type),
            (
                "Content-Disposition",
                f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
            ),
            ("ETag", f'"{file.oid}"'),
            *common,
        ]
        status, headers, body = _ranged(req, file.data, headers)
        return _Response(status, headers, body)

    def _token_url(self, repo: HubRepo, commit: HubCommit) -> str:
        return f"{self.endpoint}/api/{repo.repo_type}s/{repo.repo_id}/xet-read-token/{commit.sha}"

    def _xet_headers(
        self, repo: HubRepo, commit: HubCommit, file: HubFile
    ) -> list[tuple[str, str]]:
        """What the Xet-era Hub adds to the ``/resolve`` answer of a Xet-backed file."""
        if not self.xet:
            return []
        headers = [("X-Xet-Hash", file.xet_hash)]
        token_url = self._token_url(repo, commit)
        if self.xet_auth == "header":
            return [*headers, ("X-Xet-Refresh-Route", token_url)]
        reconstruction = f"{self.bridge.url}/reconstruction/{file.xet_hash}"
        link = f'<{reconstruction}>; rel="xet-reconstruction-info", <{token_url}>; rel="xet-auth"'
        return [*headers, ("Link", link)]

    def _xet_token(self, repo: HubRepo, revision: str) -> _Response:
        with self._lock:
            commit = repo.resolve(revision)
        if not self.xet:
            return self._error(404, None, "Not Found")
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        token, expires = secrets.token_urlsafe(24), int(time.time()) + 3600
        payload = {"accessToken": token, "exp": expires, "casUrl": self.bridge.url}
        headers = [
            ("X-Xet-Access-Token", token),
            ("X-Xet-Token-Expiration", str(expires)),
            ("X-Xet-Cas-Url", self.bridge.url),
            *self._common_headers(),
        ]
        return _json_response(200, payload, headers)

    def _api(self, req: _Request, repo_type: RepoType, segments: list[str]) -> _Response:
        rest: list[str]
        found = self._split_repo(repo_type, segments, _API_KEYWORDS)
        if found is None:
            if len(segments) not in (1, 2):
                return self._error(404, None, "Not Found")
            repo_id, rest = "/".join(segments), []
        else:
            repo_id, rest = found
        visible = self._visible_repo(req, repo_type, repo_id)
        if isinstance(visible, _Response):
            return visible
        repo, _ = visible
        if not rest:
            return self._info(req, repo, "main")
        if rest[0] == "revision" and len(rest) >= 2:
            return self._info(req, repo, unquote("/".join(rest[1:])))
        if rest[0] == "tree" and len(rest) >= 2:
            if rest[1] == "refs" and len(rest) >= 4 and rest[2] in ("pr", "convert"):
                revision, path_parts = "/".join(rest[1:4]), rest[4:]
            else:
                revision, path_parts = unquote(rest[1]), rest[2:]
            return self._tree(req, repo, revision, unquote("/".join(path_parts)).strip("/"))
        if rest == ["refs"]:
            return self._refs(req, repo)
        if rest[0] == "xet-read-token" and len(rest) >= 2:
            return self._xet_token(repo, unquote("/".join(rest[1:])))
        return self._error(404, None, "Not Found")

    def _info(self, req: _Request, repo: HubRepo, revision: str) -> _Response:
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        query = req.query
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for file in commit.files.values():
            sibling: dict[str, Any] = {"rfilename": file.path}
            if blobs:
                sibling.update(size=file.size, blobId=file.oid)
                if file.lfs:
                    sibling["lfs"] = {
                        "sha256": file.sha256,
                        "size": file.size,
                        "pointerSize": file.pointer_size,
                    }
            siblings.append(sibling)
        org = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo.repo_id,
            "author": org,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info["library_name"] = None
            info["spaces"] = []
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            wanted = {field for value in expand for field in value.split(",")}
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in wanted}
        return _json_response(200, info, self._common_headers())

    def _tree(self, req: _Request, repo: HubRepo, revision: str, path: str) -> _Response:
        with self._lock:
            commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if path and path not in commit.trees:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        query = req.query
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        entries: list[dict[str, Any]] = []
        for directory, oid in commit.trees.items():
            inside = directory.startswith(prefix) and directory != path
            if inside and (recursive or "/" not in directory[len(prefix) :]):
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": directory})
        for file in commit.files.values():
            if not file.path.startswith(prefix):
                continue
            if recursive or "/" not in file.path[len(prefix) :]:
                entry: dict[str, Any] = {
                    "type": "file",
                    "oid": file.oid,
                    "size": file.size,
                    "path": file.path,
                }
                if file.lfs:
                    entry["lfs"] = {
                        "oid": file.sha256,
                        "size": file.size,
                        "pointerSize": file.pointer_size,
                    }
                    if self.xet:
                        entry["xetHash"] = file.xet_hash
                entries.append(entry)
        entries.sort(key=lambda e: str(e["path"]))
        if expand:
            with self._lock:
                for entry in entries:
                    last = repo.last_commit_of(commit, str(entry["path"]))
                    entry["lastCommit"] = {"id": last.sha, "title": last.message, "date": last.date}
        page_size = self.tree_expand_page_size if expand else self.tree_page_size
        cursor = query.get("cursor", [""])[0]
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
        except ValueError:
            return self._error(400, None, "Invalid cursor")
        page = entries[start : start + page_size]
        headers = self._common_headers()
        if start + page_size < len(entries):
            params = {k: v[0] for k, v in query.items() if k != "cursor"}
            params["cursor"] = base64.urlsafe_b64encode(str(start + page_size).encode()).decode()
            headers.append(
                ("Link", f'<{self.endpoint}{req.route}?{urlencode(params)}>; rel="next"')
            )
        return _json_response(200, page, headers)

    def _refs(self, req: _Request, repo: HubRepo) -> _Response:
        with self._lock:
            refs = dict(repo.refs)
            tags = dict(repo.tags)

        def ref(name: str, full: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": full, "targetCommit": sha}

        branches = [ref(n, f"refs/heads/{n}", s) for n, s in refs.items() if "/" not in n]
        payload: dict[str, Any] = {
            "branches": branches,
            "converts": [ref(n, n, s) for n, s in refs.items() if n.startswith("refs/convert/")],
            "tags": [ref(n, f"refs/tags/{n}", s) for n, s in tags.items()],
        }
        if req.query.get("include_prs", ["0"])[0].lower() in ("1", "true"):
            payload["pullRequests"] = [
                ref(n, n, s) for n, s in refs.items() if n.startswith("refs/pr/")
            ]
        return _json_response(200, payload, self._common_headers())


def iter_cache_files(layout: CacheLayout) -> Iterator[tuple[str, bytes | str]]:
    """``(relative path, bytes or symlink target)`` of a ``CacheLayout``, refs included."""
    if layout.revision != layout.commit:
        yield f"{layout.folder}/refs/{layout.revision}", layout.commit.encode()
    for etag, data in layout.blobs.items():
        yield f"{layout.folder}/blobs/{etag}", data
    for path, target in layout.links.items():
        yield f"{layout.folder}/snapshots/{layout.commit}/{path}", target
