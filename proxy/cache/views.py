"""Directories of links over the blobs: the Hugging Face hub cache view.

Engines that load a model by repository name (``huggingface_hub``,
transformers, vLLM) read a hub cache directory. Every ``hf://`` entry is
linked into one, so ``HF_HUB_CACHE=<cache>/views/huggingface HF_HUB_OFFLINE=1``
loads the model from this node's cache without any server::

    <cache>/views/huggingface/          (huggingface@<host>/ for another Hub)
      models--<org>--<name>/            (datasets--<org>--<name>/ for datasets)
        refs/<revision>                 the commit the revision resolved to
        snapshots/<commit>/<path>       relative symlink to <cache>/blobs/sha256/<hex>

The view is derived from the entries only: :func:`sync` makes the tree match
them (adding links, replacing changed ones atomically, removing what no entry
names), so it is rebuilt after every change and at startup.

Every name in the tree comes from an entry's annotations, which come from
outside (an imported bundle, an index.json another program wrote). They are
checked against :mod:`proxy.cache.grammar` where they enter, and again here
(an entry that fails is skipped). Independently, every path this module
creates or removes is reached from ``<cache>/views/`` one plain name at a
time through directory descriptors opened with ``O_NOFOLLOW``: no ``..``, no
absolute part, and no symlinked directory is ever followed below ``views/``
(only the final link itself is a symlink), so nothing is written or removed
outside it whatever the names or the tree say.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from proxy.cache import grammar
from proxy.cache.layout import Layout
from proxy.cache.store import Entry
from proxy.types import ANNOTATION_HF_COMMIT as A_COMMIT
from proxy.types import ANNOTATION_HF_ENDPOINT as A_ENDPOINT
from proxy.types import ANNOTATION_HF_REPO as A_REPO
from proxy.types import ANNOTATION_HF_REPO_TYPE as A_REPO_TYPE
from proxy.types import ANNOTATION_HF_REVISION as A_REVISION
from proxy.types import ANNOTATION_TITLE

log = logging.getLogger(__name__)

Parts = tuple[str, ...]  # a path below <cache>/views/, one plain name per part

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Unsafe(OSError):
    """A path that would leave ``views/`` (a bad name or a symlinked directory)."""


def _root_name(endpoint: str | None) -> str:
    host = urlsplit(endpoint).netloc.lower() if endpoint else "huggingface.co"
    if host in ("", "huggingface.co"):
        return "huggingface"
    return "huggingface@" + re.sub(r"[^a-z0-9.-]+", "-", host)


def hub_cache_dir(layout: Layout, endpoint: str | None = None) -> Path:
    """The hub cache of one Hub: ``huggingface`` for huggingface.co, and
    ``huggingface@<host>`` for any other, so two Hubs never mix their repos."""
    return layout.root / "views" / _root_name(endpoint)


def repo_dir_name(repo: str, repo_type: str) -> str:
    prefix = "datasets" if repo_type == "dataset" else "models"
    return f"{prefix}--{repo.replace('/', '--')}"


def _view_parts(entry: Entry) -> tuple[Parts, str] | None:
    """((hub cache, repo dir), commit) of an hf entry whose names are valid;
    None for other entries (and, logged, for an hf entry with bad names)."""
    ann = entry.descriptor.annotations
    repo, commit = ann.get(A_REPO), ann.get(A_COMMIT)
    if repo is None or commit is None:
        return None
    problem = grammar.annotations_problem(ann)
    if problem is not None:
        log.warning("hub cache view: no view for %r: %s", entry.url[:200], problem)
        return None
    root = _root_name(ann.get(A_ENDPOINT))
    return (root, repo_dir_name(repo, ann.get(A_REPO_TYPE, "model"))), commit


def entry_view(layout: Layout, entry: Entry) -> tuple[Path, Path] | None:
    """(hub cache dir, snapshot dir) of an hf entry, or None for other entries."""
    found = _view_parts(entry)
    if found is None:
        return None
    (root, repo_dir), commit = found
    hub = layout.root / "views" / root
    return hub, hub / repo_dir / "snapshots" / commit


def repo_of(entry: Entry) -> Parts | None:
    """(hub cache, repo dir) an entry is shown in, if it is shown."""
    found = _view_parts(entry) if entry.complete else None
    return found[0] if found is not None else None


def sync(layout: Layout, entries: list[Entry], only: set[Parts] | None = None) -> None:
    """Make the hub cache views match ``entries`` (blocking; run in a thread);
    ``only``: these repos (hub cache, repo dir) alone, ``entries`` being every
    entry shown in them (a change's: its repos, not every repo).

    Never raises for a link it cannot make (two entries naming ``a`` and
    ``a/b`` in one snapshot, a full disk, a path that would leave ``views/``):
    the first entry wins, the problem is logged, and downloads and deletions
    go on.
    """
    views = layout.root / "views"
    links: dict[Parts, str] = {}  # link -> blob hex
    refs: dict[Parts, str] = {}  # refs file -> commit
    repos: set[Parts] = set()
    for entry in entries:
        found = _view_parts(entry) if entry.complete else None
        if found is None:
            continue
        repo_dir, commit = found
        repos.add(repo_dir)
        revision = entry.descriptor.annotations.get(A_REVISION)
        if revision is not None and revision != commit:
            refs.setdefault((*repo_dir, "refs", *revision.split("/")), commit)
        for f in entry.files:
            parts = grammar.title_parts(f.annotations.get(ANNOTATION_TITLE) or "")
            if parts is not None:
                links.setdefault((*repo_dir, "snapshots", commit, *parts), f.digest.hex)
    if not links and not refs and not views.is_dir():
        return
    try:
        views.mkdir(exist_ok=True)
        top = os.open(views, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        log.warning("hub cache view: cannot open %s: %s", views, e)
        return
    try:
        for link, hex_ in links.items():
            # <cache>/blobs/sha256/<hex> from the link's directory (views/ + parts).
            target = "../" * len(link) + f"blobs/sha256/{hex_}"
            try:
                _ensure_link(top, link, target)
            except OSError as e:
                log.warning("hub cache view: cannot link %s: %s", "/".join(link)[:300], e)
        for ref, commit in refs.items():
            try:
                _ensure_file(top, ref, commit)
            except OSError as e:
                log.warning("hub cache view: cannot write %s: %s", "/".join(ref)[:300], e)
        keep = set(links) | set(refs)
        roots: dict[str, list[str] | None] = (
            {n: None for n in os.listdir(top) if n.startswith("huggingface")}
            if only is None
            else {root: [r for h, r in only if h == root] for root, _ in only}
        )
        for name, names in roots.items():
            try:
                _prune(top, name, keep, repos, names)
            except (OSError, RecursionError) as e:  # a tree deeper than ours: left as is
                log.warning("hub cache view: cannot tidy %s: %s", name, e)
    finally:
        os.close(top)


def _plain(name: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise Unsafe(errno.EINVAL, f"{name[:100]!r} is not a plain name")
    return name


def _open_dir(top: int, parts: Sequence[str], create: bool) -> int:
    """A descriptor of ``views/<parts>``, reached one plain name at a time and
    never through a symlink (created where missing when ``create``)."""
    fd = os.dup(top)
    try:
        for part in parts:
            _plain(part)
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Unsafe(e.errno, f"{part[:100]!r} is not a directory (a symlink?)") from e
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _parent(top: int, parts: Parts) -> Iterator[tuple[int, str]]:
    fd = _open_dir(top, parts[:-1], create=True)
    try:
        yield fd, _plain(parts[-1])
    finally:
        os.close(fd)


def _ensure_link(top: int, link: Parts, target: str) -> None:
    with _parent(top, link) as (fd, name):
        with contextlib.suppress(OSError):
            if os.readlink(name, dir_fd=fd) == target:
                return
        tmp = f".{name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        os.symlink(target, tmp, dir_fd=fd)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)


def _ensure_file(top: int, path: Parts, text: str) -> None:
    data = text.encode()
    with _parent(top, path) as (fd, name):
        with contextlib.suppress(OSError):
            old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                if os.read(old, len(data) + 1) == data:
                    return
            finally:
                os.close(old)
        tmp = f".{name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        out = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=fd,
        )
        try:
            os.write(out, data)
        finally:
            os.close(out)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)


def _prune(
    top: int, root: str, keep: set[Parts], repos: set[Parts], names: list[str] | None = None
) -> None:
    """Remove from ``views/<root>`` (from its ``names`` alone, if given) what
    no entry names (never following a link)."""
    try:
        root_fd = _open_dir(top, (root,), create=False)
    except (Unsafe, FileNotFoundError):
        return  # a file or a link someone else put there: not ours to tidy
    try:
        for name in os.listdir(root_fd) if names is None else names:
            try:
                mode = os.lstat(_plain(name), dir_fd=root_fd).st_mode
            except FileNotFoundError:
                continue
            if (root, name) not in repos:
                if stat.S_ISDIR(mode):
                    shutil.rmtree(name, dir_fd=root_fd, ignore_errors=True)
                else:
                    os.unlink(name, dir_fd=root_fd)
                continue
            if not stat.S_ISDIR(mode):
                continue
            for dirpath, dirnames, filenames, dfd in os.fwalk(name, topdown=False, dir_fd=root_fd):
                here = (root, *dirpath.split("/"))
                for n in filenames + dirnames:
                    if stat.S_ISDIR(os.lstat(n, dir_fd=dfd).st_mode):
                        # Bottom-up: its contents were tidied; remove it if now empty.
                        with contextlib.suppress(OSError):
                            os.rmdir(n, dir_fd=dfd)
                    elif (*here, n) not in keep:
                        os.unlink(n, dir_fd=dfd)
    finally:
        os.close(root_fd)
