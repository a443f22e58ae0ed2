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
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from proxy.cache.layout import Layout
from proxy.cache.store import Entry
from proxy.types import ANNOTATION_HF_COMMIT as A_COMMIT
from proxy.types import ANNOTATION_HF_ENDPOINT as A_ENDPOINT
from proxy.types import ANNOTATION_HF_REPO as A_REPO
from proxy.types import ANNOTATION_HF_REPO_TYPE as A_REPO_TYPE
from proxy.types import ANNOTATION_HF_REVISION as A_REVISION
from proxy.types import ANNOTATION_TITLE

log = logging.getLogger(__name__)


def hub_cache_dir(layout: Layout, endpoint: str | None = None) -> Path:
    """The hub cache of one Hub: ``huggingface`` for huggingface.co, and
    ``huggingface@<host>`` for any other, so two Hubs never mix their repos."""
    root = layout.root / "views"
    host = urlsplit(endpoint).netloc.lower() if endpoint else "huggingface.co"
    if host in ("", "huggingface.co"):
        return root / "huggingface"
    return root / ("huggingface@" + re.sub(r"[^a-z0-9.-]+", "-", host))


def repo_dir_name(repo: str, repo_type: str) -> str:
    prefix = "datasets" if repo_type == "dataset" else "models"
    return f"{prefix}--{repo.replace('/', '--')}"


def entry_view(layout: Layout, entry: Entry) -> tuple[Path, Path] | None:
    """(hub cache dir, snapshot dir) of an hf entry, or None for other entries."""
    ann = entry.descriptor.annotations
    repo, commit = ann.get(A_REPO), ann.get(A_COMMIT)
    if repo is None or commit is None:
        return None
    root = hub_cache_dir(layout, ann.get(A_ENDPOINT))
    return root, root / repo_dir_name(repo, ann.get(A_REPO_TYPE, "model")) / "snapshots" / commit


def _safe_parts(path: str) -> list[str] | None:
    parts = path.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        return None
    return parts


def sync(layout: Layout, entries: list[Entry]) -> None:
    """Make the hub cache views match ``entries`` (blocking; run in a thread).

    Never raises for a link it cannot make (two entries naming ``a`` and
    ``a/b`` in one snapshot, a full disk): the first entry wins, the problem
    is logged, and downloads and deletions go on.
    """
    views = layout.root / "views"
    links: dict[Path, Path] = {}  # link -> blob
    refs: dict[Path, str] = {}  # refs file -> commit
    repos: set[Path] = set()
    for entry in entries:
        view = entry_view(layout, entry)
        if view is None or not entry.complete:
            continue
        ann = entry.descriptor.annotations
        commit = ann[A_COMMIT]
        repo_dir = view[1].parent.parent
        repos.add(repo_dir)
        revision = ann.get(A_REVISION)
        rev_parts = _safe_parts(revision) if revision else None
        if rev_parts is not None and revision != commit:
            refs.setdefault(repo_dir / "refs" / Path(*rev_parts), commit)
        for f in entry.files:
            title = f.annotations.get(ANNOTATION_TITLE)
            parts = _safe_parts(title) if title else None
            if parts is not None:
                links.setdefault(view[1] / Path(*parts), layout.blob_path(f.digest))
    for link, blob in links.items():
        try:
            _ensure_link(link, blob)
        except OSError as e:
            log.warning("hub cache view: cannot link %s: %s", link, e)
    for ref, commit in refs.items():
        try:
            _ensure_file(ref, commit)
        except OSError as e:
            log.warning("hub cache view: cannot write %s: %s", ref, e)
    if views.is_dir():
        for root in views.iterdir():
            if root.name.startswith("huggingface") and root.is_dir() and not root.is_symlink():
                try:
                    _prune(root, set(links) | set(refs), repos)
                except OSError as e:
                    log.warning("hub cache view: cannot tidy %s: %s", root, e)


def _ensure_link(link: Path, blob: Path) -> None:
    target = os.path.relpath(blob, link.parent)
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _ensure_file(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(root: Path, keep: set[Path], repos: set[Path]) -> None:
    for repo_dir in root.iterdir():
        if repo_dir not in repos:
            if repo_dir.is_dir() and not repo_dir.is_symlink():
                shutil.rmtree(repo_dir, ignore_errors=True)
            else:
                repo_dir.unlink(missing_ok=True)
            continue
        for dirpath, dirnames, filenames in os.walk(repo_dir, topdown=False):
            here = Path(dirpath)
            for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
                p = here / name
                if p not in keep:
                    p.unlink(missing_ok=True)
            if here != repo_dir and not any(here.iterdir()):
                here.rmdir()
