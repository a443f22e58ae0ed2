"""Model directories: a directory of real file names for every entry that has them.

Inference engines open a model by directory (``vllm serve <dir>``,
``from_pretrained(<dir>)``) or by file name; an OCI artifact, an ``s3://``
prefix or a ``file://`` directory in this cache is a list of blobs. Every
entry whose files carry names gets one directory::

    <cache>/views/
      models/<hex>/                   one per manifest with named files (<hex>: its digest)
        <path>                        a relative symlink to <cache>/blobs/<algorithm>/<hex>
        <path of a tar member>        a regular file: a tar layer unpacked here
      models/.build-<hex>/            being built; renamed to <hex> once whole

Names come from the layers: ModelPack's ``org.cncf.model.filepath``, else
``org.opencontainers.image.title`` (oras, and the artifacts this server makes
for plain files). Tar layers of ModelPack (``...v1.tar``, ``tar+gzip``,
``tar+zstd``) and KitOps ModelKits are unpacked at the directory's root, their
entries being named relative to the model's root (see
:mod:`proxy.cache.modelpack`). A container image's layers carry no names: an
image gets no directory. ``hf://`` entries have theirs in the hub cache
(:mod:`proxy.cache.views`).

A directory is named by the digest of the manifest it shows, and what is in it
follows from that manifest alone: it never changes once made. It is built in
``.build-<hex>`` (files fsync'd) and renamed into place, so after a crash it is
either whole or absent; :func:`sync` removes leftovers and directories no entry
names, and builds what is missing, at startup and after every change.

Unpacking follows the rules of ``import`` (:mod:`proxy.cache.bundle`): only
regular files and directories (no symlinks or hard links, in or out, no
devices or FIFOs), every name a relative path without ``..`` checked by
:func:`proxy.cache.grammar.title_parts`, a bounded count of members and of
header bytes, and the bytes written bounded by the room under
``--max-cache-size`` (else the free disk): they count in the cache's usage
(:mod:`proxy.cache.usage`). A layer breaking a rule leaves its entry without a
directory (logged, and reported as ``directoryError``). As in the hub cache
view, every path is reached one plain name at a time from ``views/`` through
``O_NOFOLLOW`` directory descriptors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from proxy.cache import artifact, grammar, modelpack, ollamaview, views
from proxy.cache.bundle import MAX_MEMBERS, _BoundedTarInfo
from proxy.cache.layout import Layout
from proxy.cache.store import FILE_KINDS, Entry
from proxy.cache.views import Parts, Unsafe, _ensure_link, _open_dir, _parent
from proxy.types import MEDIA_TYPE_IMAGE_MANIFEST, Descriptor, Digest

log = logging.getLogger(__name__)

MODELS = "models"
BUILDING = ".build-"
CHUNK = 1024 * 1024
MANIFEST_TYPES = frozenset(
    {MEDIA_TYPE_IMAGE_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"}
)
# Kinds without a model directory: the hub cache is hf's; a mirror's blob fill has no names.
NO_DIRECTORY_KINDS = frozenset({"hf", "blob", "mirror", "legacy"})
FREE_MARGIN = 64 * 1024 * 1024  # left free on disk when there is no cache limit


class Refused(ValueError):
    """A layer that cannot become files under the rules (its entry gets no directory)."""


@attrs.frozen
class Plan:
    """The directory of one manifest: links to blobs and tar layers to unpack, in order."""

    name: str  # the manifest's hex
    links: tuple[tuple[Parts, Digest], ...]
    archives: tuple[tuple[Digest, str], ...]  # (blob, compression: "", "gzip", "zstd")
    modelpack: dict[str, Any] | None = attrs.field(default=None, eq=False)


@attrs.define
class Built:
    """What the syncs made: directory names, problems, model configs."""

    directories: set[str] = attrs.field(factory=set)
    problems: dict[str, str] = attrs.field(factory=dict)
    models: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def update(self, names: Iterable[str], made: Built) -> None:
        """Take what ``made`` (a sync of ``names`` alone) says of them."""
        for name in names:
            if name in made.directories:
                self.directories.add(name)
            else:
                self.directories.discard(name)
            if name in made.problems:
                self.problems[name] = made.problems[name]
            else:
                self.problems.pop(name, None)
            if name in made.models:
                self.models[name] = made.models[name]
            else:
                self.models.pop(name, None)


def leaf_manifest(entry: Entry) -> Descriptor | None:
    """The image manifest whose layers an entry holds (an index's chosen child)."""
    if entry.descriptor.media_type in MANIFEST_TYPES:
        return entry.descriptor
    return next((f for f in entry.files if f.media_type in MANIFEST_TYPES), None)


def directory_name(entry: Entry) -> str | None:
    """The name of the entry's directory under ``views/models`` (whether or not it is built)."""
    if not entry.complete or entry.legacy or entry.kind in NO_DIRECTORY_KINDS:
        return None
    leaf = leaf_manifest(entry)
    return leaf.digest.hex if leaf is not None else None


def models_dir(layout: Layout) -> Path:
    return layout.root / "views" / MODELS


def plan(layout: Layout, manifest: Descriptor) -> Plan | None:
    """What the directory of ``manifest`` holds (blocking: reads the manifest
    and a ModelPack config); None when no layer has a name."""
    try:
        doc = artifact.load_json(layout.read_manifest(manifest.digest))
    except (OSError, ValueError) as e:
        raise Refused(f"manifest {manifest.digest} unreadable: {e}") from None
    if not isinstance(doc, dict):
        raise Refused(f"manifest {manifest.digest} is not a JSON object")
    links: list[tuple[Parts, Digest]] = []
    archives: list[tuple[Digest, str]] = []
    for item in doc.get("layers") or []:
        try:
            desc = Descriptor.from_json(item)
        except ValueError:
            continue
        layer = modelpack.layer(desc)
        if layer.archive is not None:
            archives.append((desc.digest, layer.archive))
            continue
        parts = grammar.title_parts(layer.path or "")
        if parts is not None:
            links.append((tuple(parts), desc.digest))
    if not links and not archives:
        return None
    config = _modelpack_config(layout, doc) if modelpack.is_modelpack(doc) else None
    return Plan(manifest.digest.hex, tuple(links), tuple(archives), config)


def _modelpack_config(layout: Layout, doc: dict[str, Any]) -> dict[str, Any]:
    try:
        desc = Descriptor.from_json(doc.get("config"))
        if desc.size > modelpack.MAX_CONFIG:
            return {}
        with open(layout.blob_path(desc.digest), "rb") as f:
            return modelpack.summary(artifact.load_json(f.read(modelpack.MAX_CONFIG + 1)))
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


class _Budget:
    """Bytes tar layers may still write (the room under the cache's limit)."""

    def __init__(self, layout: Layout, limit: int | None) -> None:
        self._layout = layout
        self._limit = limit
        self.left: int | None = None  # computed at the first archive

    def take(self, nbytes: int, what: str) -> None:
        if self.left is None:
            self.left = _room(self._layout, self._limit)
        if nbytes > self.left:
            raise Refused(
                f"{what}: {nbytes} more bytes do not fit in the cache ({self.left} bytes of room)"
            )
        self.left -= nbytes


def _room(layout: Layout, limit: int | None) -> int:
    from proxy.cache.usage import usage

    free = shutil.disk_usage(layout.root).free - FREE_MARGIN
    if limit is None:
        return max(free, 0)
    return max(min(limit - usage(layout, set()).total_bytes, free), 0)


def sync(layout: Layout, entries: list[Entry], limit: int | None = None) -> Built:
    """Make ``views/models`` match ``entries`` (blocking; run in a thread): at
    startup, whatever a crash left.

    ``limit`` is the cache's size limit in bytes (None: unlimited). Never
    raises for one entry's problem: it is logged and reported in the result.
    A directory that exists for an entry of a file kind is kept without
    reading its manifest again: the manifest is this server's artifact
    manifest (:mod:`proxy.cache.artifact`, no ModelPack config), and what the
    directory holds follows from it alone (so a cache of 100,000 files starts
    without reading 100,000 manifests).
    """
    where = models_dir(layout)
    existing: set[str] = set()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(where) as listing:
        existing = {d.name for d in listing if d.is_dir(follow_symlinks=False)}
    named: dict[str, Descriptor | None] = {}
    kept: set[str] = set()
    for entry in entries:
        name = directory_name(entry)
        leaf = leaf_manifest(entry)
        if name is None or leaf is None or name in named:
            continue
        named[name] = leaf
        if name in existing and entry.kind in FILE_KINDS:
            kept.add(name)
    return _sync_names(layout, named, limit, kept=kept, tidy=True)


def sync_named(layout: Layout, named: dict[str, Descriptor | None], limit: int | None) -> Built:
    """Make the directories ``named`` what they should be (blocking): absent
    where the name maps to None (no entry names it now), else built from that
    manifest if missing. What a change needs: the names of its entries."""
    return _sync_names(layout, named, limit, kept=set(), tidy=False)


def _sync_names(
    layout: Layout,
    named: dict[str, Descriptor | None],
    limit: int | None,
    *,
    kept: set[str],
    tidy: bool,
) -> Built:
    """The directories of ``named`` (None: remove it); ``kept``: known to be
    built already; ``tidy``: remove every other name under ``views/models``."""
    plans: dict[str, Plan] = {}
    problems: dict[str, str] = {}
    for name, leaf in named.items():
        if leaf is None or name in kept:
            continue
        try:
            found = plan(layout, leaf)
        except Refused as e:
            problems[name] = str(e)
            continue
        if found is not None:
            plans[name] = found
    where = models_dir(layout)
    if not plans and not kept and not where.is_dir():
        return Built(problems=problems)
    try:
        where.mkdir(parents=True, exist_ok=True)
        top = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        log.warning("model directories: cannot open %s: %s", where, e)
        return Built(problems=problems)
    built: set[str] = set(kept)
    budget = _Budget(layout, limit)
    try:
        for name in os.listdir(top) if tidy else list(named):
            if name not in plans and name not in kept:
                _remove(top, name)
        for name, p in plans.items():
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(name, dir_fd=top).st_mode):
                    built.add(name)
                    continue
                _remove(top, name)  # a file or link someone put there
            try:
                _build(layout, top, p, budget)
                built.add(name)
            except (OSError, Refused, tarfile.TarError, EOFError) as e:
                problems[name] = str(e)[:500]
                log.warning("model directory %s not made: %s", name, e)
    finally:
        os.close(top)
    models = {n: p.modelpack for n, p in plans.items() if p.modelpack is not None}
    return Built(built, problems, models)


def _remove(top: int, name: str) -> None:
    try:
        if stat.S_ISDIR(os.lstat(name, dir_fd=top).st_mode):
            shutil.rmtree(name, dir_fd=top)
        else:
            os.unlink(name, dir_fd=top)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("model directories: cannot remove %s: %s", name[:100], e)


def _build(layout: Layout, top: int, p: Plan, budget: _Budget) -> None:
    tmp = BUILDING + p.name
    _remove(top, tmp)
    os.mkdir(tmp, 0o755, dir_fd=top)
    try:
        dfd = _open_dir(top, (tmp,), create=False)
        try:
            made: set[Parts] = set()
            for parts, digest in p.links:
                if parts in made:
                    log.info("model directory %s: %s named twice", p.name, "/".join(parts)[:200])
                    continue
                # From the link's directory (views/models/<name>/<parts[:-1]>) to the cache's root.
                target = "../" * (len(parts) + 2) + f"blobs/{digest.algorithm}/{digest.hex}"
                _ensure_link(dfd, parts, target)
                made.add(parts)
            for digest, compression in p.archives:
                with open(layout.blob_path(digest), "rb") as raw:
                    _unpack(raw, compression, dfd, made, budget, str(digest))
            os.fsync(dfd)
        finally:
            os.close(dfd)
        os.rename(tmp, p.name, src_dir_fd=top, dst_dir_fd=top)
        os.fsync(top)
    except BaseException:
        _remove(top, tmp)
        raise


@contextlib.contextmanager
def _decompressed(raw: IO[bytes], compression: str) -> Iterator[IO[bytes]]:
    if compression == "zstd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as z:
            yield z
    elif compression in ("", "gzip"):
        yield raw
    else:
        raise Refused(f"unknown compression {compression!r}")


def member_parts(name: str) -> Parts | None:
    """A tar member's path as plain names (None for the archive's root);
    Refused when it is absolute or climbs out (``..``)."""
    trimmed = name.rstrip("/")
    while trimmed.startswith("./"):
        trimmed = trimmed[2:]
    if trimmed in ("", "."):
        return None
    parts = grammar.title_parts(trimmed)
    if parts is None or name.startswith("/"):
        raise Refused(f"{name[:100]!r}: not a relative path inside the directory")
    return tuple(parts)


def _unpack(
    raw: IO[bytes], compression: str, dfd: int, made: set[Parts], budget: _Budget, shown: str
) -> None:
    mode = "r|gz" if compression == "gzip" else "r|"
    with (
        _decompressed(raw, compression) as stream,
        tarfile.open(fileobj=stream, mode=mode, tarinfo=_BoundedTarInfo) as tar,  # type: ignore[call-overload]
    ):
        for count, member in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise Refused(f"{shown}: more than {MAX_MEMBERS} members")
            parts = member_parts(member.name)
            if parts is None:
                continue
            if member.isdir():
                os.close(_open_dir(dfd, parts, create=True))
                continue
            if not member.isfile():
                what = "link" if member.issym() or member.islnk() else "special file"
                raise Refused(
                    f"{shown}: {member.name[:100]!r} is a {what}: only files are unpacked"
                )
            budget.take(member.size, shown)
            if parts in made:
                log.info("model directory: %s named twice; the first is kept", member.name[:200])
                continue
            src = tar.extractfile(member)
            assert src is not None
            _write_file(dfd, parts, src, 0o755 if member.mode & 0o111 else 0o644)
            made.add(parts)


def _write_file(dfd: int, parts: Parts, src: IO[bytes], mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with _parent(dfd, parts) as (pfd, name):
        out = os.open(name, flags, mode, dir_fd=pfd)
        try:
            while chunk := src.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fsync(out)
        finally:
            os.close(out)
        os.fsync(pfd)


__all__ = ["Built", "Plan", "Refused", "Unsafe", "Views", "directory_name", "sync", "sync_all"]


def sync_all(layout: Layout, entries: list[Entry], limit: int | None = None) -> Built:
    """Every view in line with ``entries``: the hub caches, Ollama's models
    directory and the model directories (blocking; run in a thread)."""
    return Views(layout).sync_all(entries, limit)


Change = tuple[Entry | None, Entry | None]  # an entry as it was, and as it is now


class Views:
    """Every view of one cache kept in line with its entries: all of them at
    startup (:meth:`sync_all`, whatever a crash left), then change by change
    (:meth:`sync_changes`), so a change costs what its entries need -- their
    model directories, their hub cache repos, Ollama's view when it is an
    Ollama entry -- not what the cache holds. Each step leaves the views as a
    full sync would for what it touches, with the same atomic steps (a
    directory renamed in whole, links replaced by rename), so a crash leaves
    nothing the next start does not settle. Blocking; one call at a time (the
    caller serialises them)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        # The entries each view shows, by hub cache repo and by URL (hf and
        # ollama entries alone: a few, however many files the cache holds).
        self._hub: dict[Parts, dict[str, Entry]] = {}
        self._ollama: dict[str, Entry] = {}

    def _track(self, entry: Entry, present: bool) -> None:
        repo = views.repo_of(entry)
        if repo is not None:
            shown = self._hub.setdefault(repo, {})
            if present:
                shown[entry.url] = entry
            else:
                shown.pop(entry.url, None)
                if not shown:
                    del self._hub[repo]
        if entry.kind == "ollama":
            if present:
                self._ollama[entry.url] = entry
            else:
                self._ollama.pop(entry.url, None)

    def sync_all(self, entries: list[Entry], limit: int | None = None) -> Built:
        self._hub, self._ollama = {}, {}
        for entry in entries:
            self._track(entry, True)
        views.sync(self.layout, entries)
        ollamaview.sync(self.layout, entries)
        return sync(self.layout, entries, limit)

    def sync_changes(
        self, changes: list[Change], named: dict[str, Descriptor | None], limit: int | None
    ) -> Built:
        """After ``changes``: their hub cache repos and Ollama's view, and the
        model directories ``named`` (each name: the manifest it shows, None
        when no entry names it now; see :func:`sync_named`)."""
        repos: set[Parts] = set()
        ollama = False
        for old, new in changes:
            for entry, present in ((old, False), (new, True)):
                if entry is None:
                    continue
                repo = views.repo_of(entry)
                if repo is not None:
                    repos.add(repo)
                ollama = ollama or entry.kind == "ollama"
                self._track(entry, present)
        if repos:
            shown = [e for r in repos for e in self._hub.get(r, {}).values()]
            views.sync(self.layout, shown, only=repos)
        if ollama:
            ollamaview.sync(self.layout, list(self._ollama.values()))
        return sync_named(self.layout, named, limit)
