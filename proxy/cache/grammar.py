"""The grammar of every annotation this server turns into a path or a name.

Descriptors arrive from outside: imported bundles (``POST /admin/import``,
``storage-manager import``, ``file://`` layouts and tars), a cache directory
written by another program (``index.json`` at startup), and the hf fetcher's
upstream answers. Whatever builds a path from them (the hub cache views of
:mod:`proxy.cache.views`) or a name (``/v2``, ``/hf``) relies on the fields
checked here, where they enter (:meth:`Store.adopt`, :meth:`Store.load`):

* ``hf.commit``: 40 lowercase hex digits (a git commit id);
* ``hf.revision``: a git ref name (``git check-ref-format`` rules, or a commit);
* ``hf.repo``: a Hub repository id, ``[<org>/]<name>`` (``huggingface_hub``'s
  ``validate_repo_id``: word characters, ``.`` and ``-``, no ``--`` or ``..``);
* ``hf.repo-type``: ``model``, ``dataset`` or ``space``;
* ``hf.endpoint``: ``http(s)://<host>[:port]``, nothing more;
* ``hf.oid`` / ``hf.lfs-sha256`` of a file: 40 / 64 lowercase hex;
* ``org.opencontainers.image.title`` of a file: a relative POSIX path, no
  empty, ``.`` or ``..`` parts, no backslash or NUL, at most 128 deep;
* ``org.opencontainers.image.ref.name``: the image-spec grammar of that
  annotation, or a distribution reference ``[host/]name[:tag][@digest]``
  (:mod:`proxy.naming`, what this server writes), or an absolute URL for
  entries of the Go storage-manager (their ref.name is the source URL);
* ``io.nekko.storage-manager.url``: a URL without control characters.

:func:`entry_problem` says what is wrong with an entry (None: nothing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from proxy.naming import DOMAIN_RE, NAME_RE, TAG_RE
from proxy.types import (
    ANNOTATION_HF_COMMIT,
    ANNOTATION_HF_ENDPOINT,
    ANNOTATION_HF_LFS,
    ANNOTATION_HF_OID,
    ANNOTATION_HF_REPO,
    ANNOTATION_HF_REPO_TYPE,
    ANNOTATION_HF_REVISION,
    ANNOTATION_REF_NAME,
    ANNOTATION_TITLE,
    ANNOTATION_URL,
    SHA256_HEX_RE,
)

if TYPE_CHECKING:
    from proxy.cache.store import Entry

MAX_URL = 8192
MAX_TITLE = 4096
MAX_TITLE_DEPTH = 128  # directories in a title (views walk them: keep it shallow)
MAX_REVISION = 255
MAX_REF_NAME = 1024

_COMMIT_RE = re.compile(r"[a-f0-9]{40}")
_REPO_PART_RE = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?", re.ASCII)
REPO_TYPES = frozenset({"model", "dataset", "space"})
# image-spec annotations.md, org.opencontainers.image.ref.name.
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_RE = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")
# distribution/reference: [domain/]name[:tag][@digest], as this server writes them.
_REFERENCE_RE = re.compile(
    rf"(?:{DOMAIN_RE.pattern}/)?{NAME_RE.pattern}(?::{TAG_RE.pattern})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_REF_FORBIDDEN_RE = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def is_commit(value: str) -> bool:
    return bool(_COMMIT_RE.fullmatch(value))


def is_revision(value: str) -> bool:
    """A git ref name (``git check-ref-format --allow-onelevel``) or a commit."""
    if not value or len(value) > MAX_REVISION or _REF_FORBIDDEN_RE.search(value):
        return False
    if ".." in value or "@{" in value or value == "@" or value.endswith((".", "/")):
        return False
    return all(
        part and not part.startswith(".") and not part.endswith(".lock")
        for part in value.split("/")
    )


def is_repo_id(value: str) -> bool:
    """``[<org>/]<name>`` as the Hub allows it (never ``..``, ``--`` or a path)."""
    parts = value.split("/")
    if len(parts) > 2 or ".." in value or "--" in value or value.endswith(".git"):
        return False
    return all(_REPO_PART_RE.fullmatch(p) for p in parts)


def is_repo_type(value: str) -> bool:
    return value in REPO_TYPES


def is_endpoint(value: str) -> bool:
    """``http(s)://<host>[:<port>]`` (an optional ``/``), no user, path or query."""
    if len(value) > MAX_URL or _CONTROL_RE.search(value) or " " in value:
        return False
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and "@" not in parts.netloc
        and bool(DOMAIN_RE.fullmatch(parts.netloc))
        and (port is None or 0 < port < 65536)
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
    )


def title_parts(value: str) -> list[str] | None:
    """The parts of a file title that is a safe relative path, else None."""
    if not value or len(value) > MAX_TITLE:
        return None
    parts = value.split("/")
    if len(parts) > MAX_TITLE_DEPTH:
        return None
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        return None
    return parts


def safe_name(name: str, fallback: str = "file") -> str:
    """A one-part title made of a name from outside (a URL's last segment,
    an object key's base name): separators and NUL replaced, never ``.``/``..``."""
    name = re.sub(r"[/\\\0]", "_", name)[:255]
    return fallback if name in ("", ".", "..") else name


def is_title(value: str) -> bool:
    return title_parts(value) is not None


def is_ref_name(value: str) -> bool:
    """The image-spec grammar of ``ref.name`` or a distribution reference, or
    the source URL an entry of the Go storage-manager keeps there."""
    if "://" in value:
        return is_url(value)
    if len(value) > MAX_REF_NAME:
        return False
    return bool(_REF_NAME_RE.fullmatch(value) or _REFERENCE_RE.fullmatch(value))


def is_url(value: str) -> bool:
    """An absolute URL (``scheme:...``) of a sane length, no control characters."""
    if not value or len(value) > MAX_URL or _CONTROL_RE.search(value):
        return False
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value))


# annotation -> its check, on an entry's own descriptor and on its files.
_DESCRIPTOR_CHECKS = {
    ANNOTATION_HF_COMMIT: is_commit,
    ANNOTATION_HF_REVISION: is_revision,
    ANNOTATION_HF_REPO: is_repo_id,
    ANNOTATION_HF_REPO_TYPE: is_repo_type,
    ANNOTATION_HF_ENDPOINT: is_endpoint,
    ANNOTATION_REF_NAME: is_ref_name,
    ANNOTATION_URL: is_url,
}
_FILE_CHECKS = {
    ANNOTATION_TITLE: is_title,
    ANNOTATION_HF_COMMIT: is_commit,
    ANNOTATION_HF_OID: is_commit,  # a git blob id: 40 hex as well
    ANNOTATION_HF_LFS: lambda v: bool(SHA256_HEX_RE.fullmatch(v)),
}


def _problem(annotations: Mapping[str, str], checks: Mapping[str, object]) -> str | None:
    for key, check in checks.items():
        value = annotations.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not check(value):  # type: ignore[operator]
            return f"annotation {key} = {str(value)[:100]!r} is not valid"
    return None


def annotations_problem(annotations: Mapping[str, str]) -> str | None:
    """What is wrong with an entry descriptor's annotations (None: nothing)."""
    return _problem(annotations, _DESCRIPTOR_CHECKS)


def _is_hf(entry: Entry) -> bool:
    ann = entry.descriptor.annotations
    return entry.kind == "hf" or ANNOTATION_HF_REPO in ann or ANNOTATION_HF_COMMIT in ann


def entry_problem(entry: Entry, every_title: bool = True) -> str | None:
    """What is wrong with an entry's names (None: nothing): its descriptor's
    annotations, its reference, and its files' annotations -- of every entry
    (``every_title``: an import), or only of the hf entries whose titles
    become paths in the views and /hf (an index.json loaded at startup, where
    another entry's odd title is a name shown, never a path)."""
    found = annotations_problem(entry.descriptor.annotations)
    if found is None and not is_ref_name(entry.reference):
        found = f"reference {entry.reference[:100]!r} is not valid"
    if every_title or _is_hf(entry):
        for f in entry.files:
            if found is not None:
                break
            found = _problem(f.annotations, _FILE_CHECKS)
    return found
