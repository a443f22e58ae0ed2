"""A read-only Hugging Face Hub under ``/hf``, served from cached ``hf://`` entries.

``HF_ENDPOINT=http://<node>:8050/hf`` makes ``huggingface_hub`` (and so
transformers, vLLM, ...) download from this node, with no internet, whatever
was pulled before with ``hf://``. The subset of the Hub's protocol that
``hf_hub_download`` and ``snapshot_download`` use (``huggingface_hub`` 1.x/2.x)::

    GET  /hf/api/{models|datasets}/<org>/<repo>[/revision/<rev>]   repo info
    GET  /hf/api/{models|datasets}/<org>/<repo>/tree/<rev>[/<path>]?recursive=&cursor=
    HEAD|GET /hf/[datasets/]<org>/<repo>/resolve/<rev>/<path>      the file

What is served is what the entries recorded (annotations written by
:mod:`proxy.fetch.hf`): the repository, the revision asked for and the commit
it resolved to, and per file its path, git oid, LFS sha256 and size. A
revision is a name some entry was pulled at (the newest entry wins when two
recorded different commits) or a commit sha some entry holds.

* ``resolve`` answers ``200``/``206`` with the bytes (never a redirect),
  ``X-Repo-Commit``, ``ETag`` (the git oid; the sha256 for LFS files),
  ``X-Linked-Etag`` and ``X-Linked-Size`` for LFS files, ``Content-Length``,
  ``Accept-Ranges``; never ``Content-Encoding``, any ``X-Xet-*`` header or a
  ``rel="xet-auth"`` link (nor ``xetHash`` in tree listings), so clients with
  ``hf_xet`` still take the plain HTTP path: this node has no Xet storage.
* The repo info and the tree listing are only answered for a commit the
  cache holds completely (an entry pulled without a path, ``hf:///org/repo``).
  A repository only partly cached (single files) answers ``404``
  ``RevisionNotFound`` there, with a message saying so: ``snapshot_download``
  raises it (``RevisionNotFoundError``) instead of writing a partial snapshot,
  or returning one it made itself with ``hf_hub_download``; the cached files
  still resolve one by one.
* Errors are the Hub's: ``X-Error-Code`` (``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``), ``X-Error-Message`` and a JSON
  body ``{"error": message}``, which ``huggingface_hub`` turns into its
  exception classes. Names, revisions and paths are validated (no ``..``)
  before anything is looked up; only blobs named by a recorded digest are
  ever opened.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from typing import Any
from urllib.parse import unquote, urlencode

from twisted.web.server import NOT_DONE_YET

from proxy.api.answers import JSON_UTF8, finish_with_length, json_answer
from proxy.api.errors import hub_error, hub_error_body
from proxy.cache.store import Store
from proxy.errors import StorageError
from proxy.service.hub import HubError, HubRepos, bad_request, git_trees
from proxy.web.ranges import answer_range
from proxy.web.sendfile import BlobSender

TREE_PAGE_SIZE = 1000  # entries per tree page, as the Hub pages them
TREE_EXPAND_PAGE_SIZE = 50  # ... with expand=true
MAX_PATH = 4096

_COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT_RE = re.compile(r"[a-f0-9]{40}")
_OID_RE = re.compile(r"[a-f0-9]{40}")
_API_TYPES = {"models": "model", "datasets": "dataset"}


def _safe_path(path: str) -> str:
    if len(path) > MAX_PATH:
        raise bad_request("path too long")
    parts = path.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise bad_request("the path in the repository has empty, '.' or '..' parts")
    return path


def _check_revision(revision: str) -> str:
    if (
        not revision
        or len(revision) > 256
        or ".." in revision
        or any(c in revision for c in "\0\r\n\\")
        or revision.startswith("/")
        or revision.endswith("/")
    ):
        raise bad_request(f"invalid revision {revision[:80]!r}")
    return revision


def _segment(raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise bad_request("the path is not UTF-8") from None


class HfMirror:
    """Serves ``/hf`` from the ``hf://`` entries of a store (read-only)."""

    def __init__(self, store: Store, sender: BlobSender) -> None:
        self.store = store
        self.repos = HubRepos(store)
        self.sender = sender  # sendfile(2) answers, shared with /v2

    # -- dispatch --------------------------------------------------------------

    def render(self, request: Any, path: bytes) -> Any:
        try:
            result = self._route(request, path)
        except HubError as e:
            result = hub_error_body(request, e)
        except StorageError as e:
            result = hub_error_body(request, hub_error(e))
        if result is NOT_DONE_YET:
            return result
        finish_with_length(request, result)
        return NOT_DONE_YET

    def _route(self, request: Any, path: bytes) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            raise HubError(405, None, "this mirror is read-only")
        try:
            text = path.decode("ascii")
        except UnicodeDecodeError:
            raise bad_request("the path is not ASCII (percent-encode it)") from None
        raw = text[len("/hf/") :].split("/") if text.startswith("/hf/") else []
        if not raw or raw == [""]:
            raise HubError(404, None, "Not Found")
        if raw[0] == "api":
            if len(raw) < 4 or raw[1] not in _API_TYPES:
                raise HubError(404, None, "Not Found")
            repo_type = _API_TYPES[raw[1]]
            repo = self._repo(raw[2], raw[3])
            rest = raw[4:]
            if not rest:
                return self._info(request, repo_type, repo, "main")
            if rest[0] == "revision" and len(rest) >= 2:
                revision = "/".join(_segment(s) for s in rest[1:])
                return self._info(request, repo_type, repo, _check_revision(revision))
            if rest[0] == "tree" and len(rest) >= 2:
                revision, path_parts = self._split_revision(rest[1:])
                sub = "/".join(_segment(s) for s in path_parts).strip("/")
                return self._tree(
                    request, repo_type, repo, revision, _safe_path(sub) if sub else ""
                )
            raise HubError(404, None, "Not Found")
        repo_type = "model"
        if raw[0] in ("datasets", "models"):
            repo_type = "dataset" if raw[0] == "datasets" else "model"
            raw = raw[1:]
        if len(raw) < 5 or raw[2] != "resolve":
            raise HubError(404, None, "Not Found")
        repo = self._repo(raw[0], raw[1])
        revision, path_parts = self._split_revision(raw[3:])
        file_path = _safe_path("/".join(_segment(s) for s in path_parts))
        return self._resolve(request, repo_type, repo, revision, file_path)

    @staticmethod
    def _repo(org: str, name: str) -> str:
        org, name = _segment(org), _segment(name)
        if not _COMPONENT_RE.fullmatch(org) or not _COMPONENT_RE.fullmatch(name):
            raise HubError(404, "RepoNotFound", "Repository not found")
        return f"{org}/{name}"

    @staticmethod
    def _split_revision(rest: list[str]) -> tuple[str, list[str]]:
        """(revision, the rest): one segment (``quote(rev, safe="")``), or a
        raw ``refs/pr/<n>`` / ``refs/convert/<x>``, as the Hub accepts them."""
        if rest[0] == "refs" and len(rest) >= 3 and rest[1] in ("pr", "convert"):
            return _check_revision("/".join(rest[:3])), rest[3:]
        return _check_revision(_segment(rest[0])), rest[1:]

    # -- answers ---------------------------------------------------------------

    def _info(self, request: Any, repo_type: str, repo: str, revision: str) -> bytes:
        snap = self.repos.snapshot(repo_type, repo, revision)
        if not snap.complete:
            raise self.repos.partial(snap, revision)
        args: dict[bytes, list[bytes]] = request.args or {}
        blobs = args.get(b"blobs", [b""])[0].lower() in (b"1", b"true")
        siblings: list[dict[str, Any]] = []
        for f in sorted(snap.files.values(), key=lambda f: f.path):
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.blob.size, blobId=f.oid)
                if f.lfs:
                    sibling["lfs"] = {
                        "sha256": f.lfs,
                        "size": f.blob.size,
                        "pointerSize": f.pointer_size(),
                    }
            siblings.append(sibling)
        created = snap.created.replace("Z", ".000Z") if snap.created.endswith("Z") else None
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo,
            "author": repo.split("/")[0],
            "sha": snap.commit,
            "lastModified": created,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.blob.size for f in snap.files.values()),
        }
        if repo_type == "model":
            info.update(modelId=repo, library_name=None, spaces=[])
        expand = args.get(b"expand", []) + args.get(b"expand[]", [])
        if expand:
            wanted = {w for v in expand for w in v.decode("latin-1").split(",")}
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in wanted}
        return json_answer(request, info, content_type=JSON_UTF8, newline=False)

    def _tree(self, request: Any, repo_type: str, repo: str, revision: str, sub: str) -> bytes:
        snap = self.repos.snapshot(repo_type, repo, revision)
        if not snap.complete:
            raise self.repos.partial(snap, revision)
        trees = git_trees(snap.files)
        if sub and sub not in trees:
            raise HubError(404, "EntryNotFound", f"{sub} does not exist on {revision}")
        args: dict[bytes, list[bytes]] = request.args or {}

        def flag(name: bytes) -> bool:
            return args.get(name, [b"false"])[0].lower() in (b"1", b"true")

        recursive, expand = flag(b"recursive"), flag(b"expand")
        prefix = f"{sub}/" if sub else ""

        def shown(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        items: list[dict[str, Any]] = [
            {"type": "directory", "oid": oid, "size": 0, "path": d}
            for d, oid in trees.items()
            if d and d != sub and shown(d)
        ]
        for f in snap.files.values():
            if shown(f.path):
                item: dict[str, Any] = {
                    "type": "file",
                    "oid": f.oid or f.blob.digest.hex[:40],
                    "size": f.blob.size,
                    "path": f.path,
                }
                if f.lfs:
                    item["lfs"] = {
                        "oid": f.lfs,
                        "size": f.blob.size,
                        "pointerSize": f.pointer_size(),
                    }
                items.append(item)
        items.sort(key=lambda i: str(i["path"]))
        page_size = TREE_EXPAND_PAGE_SIZE if expand else TREE_PAGE_SIZE
        cursor = args.get(b"cursor", [b""])[0]
        try:
            start = int(base64.urlsafe_b64decode(cursor).decode("ascii")) if cursor else 0
        except (ValueError, binascii.Error):
            raise bad_request("Invalid cursor") from None
        if start < 0:
            raise bad_request("Invalid cursor")
        if start + page_size < len(items):
            params = {
                k.decode("latin-1"): v[0].decode("latin-1")
                for k, v in args.items()
                if k != b"cursor" and v
            }
            params["cursor"] = base64.urlsafe_b64encode(str(start + page_size).encode()).decode()
            host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
            link = f'<http://{host}{request.path.decode("ascii")}?{urlencode(params)}>; rel="next"'
            request.setHeader(b"Link", link.encode("latin-1", "replace"))
        page = items[start : start + page_size]
        return json_answer(request, page, content_type=JSON_UTF8, newline=False)

    def _resolve(self, request: Any, repo_type: str, repo: str, revision: str, path: str) -> Any:
        snap = self.repos.snapshot(repo_type, repo, revision)
        f = snap.files.get(path)
        if f is None:
            if snap.complete:
                raise HubError(404, "EntryNotFound", "Entry not found", commit=snap.commit)
            # Not a proven miss: no X-Repo-Commit, so the client caches no "does not exist".
            raise HubError(
                404,
                "EntryNotFound",
                f"{path} of {repo}@{revision} is not cached on this node",
            )
        digest = f.blob.digest
        try:
            fd = os.open(self.store.layout.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HubError(
                404, "EntryNotFound", f"{path} of {repo}@{revision} is not cached on this node"
            ) from None
        try:
            size = os.fstat(fd).st_size
            etag = f'"{f.etag}"'
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"Accept-Ranges", b"bytes")
            request.setHeader(b"ETag", etag.encode())
            request.setHeader(b"X-Repo-Commit", snap.commit.encode())
            if f.lfs:
                request.setHeader(b"X-Linked-Etag", etag.encode())
                request.setHeader(b"X-Linked-Size", str(size).encode())
            name = path.rsplit("/", 1)[-1]
            if name.isascii() and '"' not in name and name.isprintable():
                request.setHeader(b"Content-Disposition", f'inline; filename="{name}"'.encode())
            wanted = _header(request, b"range")
            if_range = _header(request, b"if-range")
            if if_range is not None and if_range.strip().removeprefix("W/") != etag:
                wanted = None
            inm = _header(request, b"if-none-match")
            if inm and any(t.strip().removeprefix("W/") in (etag, "*") for t in inm.split(",")):
                os.close(fd)
                request.setResponseCode(304)
                return b""
            byte_range = answer_range(request, wanted, size)
            if byte_range is None:  # 416
                os.close(fd)
                return b""
            offset, length = byte_range.start, byte_range.length
            self.store.touch_blob(digest.hex)
            if request.method == b"HEAD":
                os.close(fd)
                return b""
        except BaseException:
            os.close(fd)
            raise
        release = self.store.reading(digest.hex)
        request.notifyFinish().addBoth(lambda _: release())
        self.sender.send(request, fd, offset, length)
        return NOT_DONE_YET


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None
