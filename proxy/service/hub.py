"""What the Hub mirror (``/hf``, :mod:`proxy.api.hub`) asks of the cache:
the ``hf://`` entries of one repository, the :class:`Snapshot` of one of
its commits (which files, with their git oids and LFS digests), and the git
tree ids of its directories. It speaks no HTTP: a lookup that finds nothing
raises :class:`HubError` with the Hub's own error code, which the route
turns into the Hub's answer."""

from __future__ import annotations

import hashlib
import re

import attrs

from proxy.cache.store import Entry, Store
from proxy.fetch.hf import parse_hf_url
from proxy.types import ANNOTATION_HF_COMMIT as A_COMMIT
from proxy.types import ANNOTATION_HF_LFS as A_LFS
from proxy.types import ANNOTATION_HF_OID as A_OID
from proxy.types import ANNOTATION_HF_REPO as A_REPO
from proxy.types import ANNOTATION_HF_REPO_TYPE as A_REPO_TYPE
from proxy.types import ANNOTATION_HF_REVISION as A_REVISION
from proxy.types import ANNOTATION_TITLE, ANNOTATION_URL, Descriptor

_COMMIT_RE = re.compile(r"[a-f0-9]{40}")
_OID_RE = re.compile(r"[a-f0-9]{40}")


class HubError(Exception):
    """An answer the way the Hub gives it: status, ``X-Error-Code``, message."""

    def __init__(
        self, status: int, code: str | None, message: str, commit: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit


def bad_request(message: str) -> HubError:
    """A request the Hub would refuse with 400."""
    return HubError(400, None, message)


@attrs.frozen
class HubFile:
    path: str
    blob: Descriptor  # the cached file (digest, size)
    oid: str | None  # git blob sha1 (of the LFS pointer for LFS files)
    lfs: str | None  # sha256 hex of an LFS file

    @property
    def etag(self) -> str:
        return self.lfs or self.oid or self.blob.digest.hex

    def pointer_size(self) -> int:
        """Size of the git LFS pointer file of this file."""
        pointer = (
            "version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{self.lfs}\nsize {self.blob.size}\n"
        )
        return len(pointer.encode())


@attrs.frozen
class Snapshot:
    """What the cache knows of one commit of one repository."""

    repo_type: str
    repo: str
    commit: str
    files: dict[str, HubFile]
    complete: bool  # some entry holds every file of the commit
    created: str  # newest entry's creation time


def _is_whole_repo(url: str) -> bool:
    """Whether an hf:// entry URL names a whole repository (no path)."""
    try:
        return parse_hf_url(url).path is None
    except Exception:
        return False


def git_trees(files: dict[str, HubFile]) -> dict[str, str]:
    """Git tree ids of every directory ("" is the root), from the files' blob
    oids, as git computes them (regular files, mode 100644).

    Iterative, deepest directories first, and linear in the number of files
    and directories: a repository thousands of directories deep neither hits
    Python's recursion limit nor costs a scan of every path per directory."""
    # directory -> (sort name, entry head, blob oid; None for a subdirectory)
    listing: dict[str, list[tuple[bytes, bytes, str | None]]] = {"": []}
    known = {""}  # directories already listed in their parent
    for path, f in files.items():
        directory, _, name = path.rpartition("/")
        d = directory
        while d not in known:
            known.add(d)
            parent, _, sub = d.rpartition("/")
            head = b"40000 " + sub.encode() + b"\0"
            listing.setdefault(parent, []).append((sub.encode() + b"/", head, None))
            d = parent
        oid = f.oid if f.oid and _OID_RE.fullmatch(f.oid) else "0" * 40
        head = b"100644 " + name.encode() + b"\0"
        listing.setdefault(directory, []).append((name.encode(), head, oid))
    trees: dict[str, str] = {}
    by_depth = sorted(listing, key=lambda d: d.count("/") + 1 if d else 0, reverse=True)
    for directory in by_depth:
        prefix = f"{directory}/" if directory else ""
        entries: list[tuple[bytes, bytes]] = []
        for sort_name, head, blob_oid in listing[directory]:
            # None: a subdirectory, deeper, so its tree is known
            oid = blob_oid if blob_oid is not None else trees[prefix + sort_name[:-1].decode()]
            entries.append((sort_name, head + bytes.fromhex(oid)))
        body = b"".join(e for _, e in sorted(entries))
        digest = hashlib.sha1(b"tree %d\0" % len(body) + body, usedforsecurity=False)
        trees[directory] = digest.hexdigest()
    return trees


class HubRepos:
    """The ``hf://`` entries of a store, as repositories and commits."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def entries(self, repo_type: str, repo: str) -> list[Entry]:
        out = []
        for e in self.store.entries():
            ann = e.descriptor.annotations
            if (
                e.kind == "hf"
                and e.complete
                and ann.get(A_REPO) == repo
                and ann.get(A_REPO_TYPE, "model") == repo_type
                and _COMMIT_RE.fullmatch(ann.get(A_COMMIT, ""))
            ):
                out.append(e)
        return out

    def snapshot(self, repo_type: str, repo: str, revision: str) -> Snapshot:
        entries = self.entries(repo_type, repo)
        if not entries:
            raise HubError(404, "RepoNotFound", f"Repository {repo} is not cached on this node")
        if _COMMIT_RE.fullmatch(revision):
            commit = revision
        else:
            named = [e for e in entries if e.descriptor.annotations.get(A_REVISION) == revision]
            if not named:
                raise HubError(
                    404, "RevisionNotFound", f"Invalid rev id: {revision} (not cached on this node)"
                )
            newest = max(named, key=lambda e: e.created)
            commit = newest.descriptor.annotations[A_COMMIT]
        at = [e for e in entries if e.descriptor.annotations[A_COMMIT] == commit]
        if not at:
            raise HubError(
                404, "RevisionNotFound", f"Invalid rev id: {revision} (not cached on this node)"
            )
        whole = [e for e in at if _is_whole_repo(e.descriptor.annotations.get(ANNOTATION_URL, ""))]
        files: dict[str, HubFile] = {}
        for e in sorted(whole, key=lambda e: e.created, reverse=True) or at:
            for f in e.files:
                title = f.annotations.get(ANNOTATION_TITLE)
                if not title or title in files:
                    continue
                lfs = f.annotations.get(A_LFS)
                files[title] = HubFile(title, f, f.annotations.get(A_OID), lfs or None)
            if whole:
                break  # one whole-repository entry lists the commit exactly
        return Snapshot(
            repo_type, repo, commit, files, bool(whole), max(e.created for e in at) or ""
        )

    @staticmethod
    def partial(snap: Snapshot, revision: str) -> HubError:
        prefix = "datasets/" if snap.repo_type == "dataset" else ""
        at = "" if revision == "main" else f"@{revision}"
        # RevisionNotFound: the one error snapshot_download raises even when a
        # partial local snapshot exists (any other makes it return that folder).
        return HubError(
            404,
            "RevisionNotFound",
            f"{snap.repo}@{revision} is only partly cached on this node "
            f"({len(snap.files)} file(s) of commit {snap.commit}); cache the whole "
            f"repository (POST /content/ with hf://<hub>/{prefix}{snap.repo}{at}) to list it",
        )
