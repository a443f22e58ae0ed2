"""The operator commands: ``pull``, ``ls``, ``inspect``, ``rm``, ``gc``, ``du``,
``pin``, ``unpin``, ``export`` and ``import``.

Each talks to the server of the cache (see :mod:`proxy.client`) through the
same API as any client, and prints for a person (a table, a progress bar on
a terminal) or, with ``--json``, for a script.

Exit codes: 0 done; 1 the operation failed (download error, server error);
3 no such entry; 4 no server could be reached or started.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from proxy.client import Answer, Client, content_path

OK, FAILED, NOT_FOUND, UNREACHABLE = 0, 1, 3, 4


def _err(message: str) -> None:
    print(f"storage-manager: {message}", file=sys.stderr)


def _dump(body: Any) -> None:
    print(json.dumps(body, indent=2))


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _failed(answer: Answer) -> int:
    _err(answer.error)
    return NOT_FOUND if answer.status == 404 else FAILED


# -- pull ---------------------------------------------------------------------


def pull(
    client: Client,
    url: str,
    as_json: bool,
    digest: str | None = None,
    credentials: str | None = None,
    credentials_type: str | None = None,
) -> int:
    body: dict[str, Any] = {"url": url}
    if digest:
        body["digest"] = digest
    if credentials:
        body["credentials"] = credentials
    if credentials_type:
        body["credentialsType"] = credentials_type
    result: list[Answer] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            result.append(client.request("POST", "/content/", body))
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    if sys.stderr.isatty() and not as_json:
        _follow(client, url, worker)
    worker.join()
    if errors:
        raise errors[0]
    answer = result[0]
    if answer.status not in (200, 201):
        _err(answer.error)
        return FAILED  # whatever the upstream said: the download failed
    if as_json:
        _dump(answer.body)
    else:
        b = answer.body
        verb = "stored" if answer.status == 201 else "already cached"
        print(f"{verb}: {b['url']}\n  digest {b['digest']}\n  path   {b.get('path', '')}")
        _print_files(b)
    return OK


def _follow(client: Client, url: str, worker: threading.Thread) -> None:
    """A live progress bar per blob while the POST runs (on a terminal only)."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        while worker.is_alive():
            try:
                answer = client.request("GET", content_path(url), timeout=10)
            except Exception:
                time.sleep(0.5)
                continue
            blobs = answer.body.get("blobs", []) if isinstance(answer.body, dict) else []
            for i, blob in enumerate(blobs):
                key = blob.get("digest") or f"{i}:{blob.get('title')}"
                name = blob.get("title") or (blob.get("digest") or "blob")[:19]
                if key not in tasks:
                    tasks[key] = progress.add_task(name, total=blob.get("size"))
                progress.update(
                    tasks[key], completed=blob.get("bytesDone") or 0, total=blob.get("size")
                )
            worker.join(0.25)


# -- ls / inspect -------------------------------------------------------------


def ls(client: Client, as_json: bool) -> int:
    answer = client.request("GET", "/content/")
    if answer.status != 200:
        return _failed(answer)
    entries = answer.body.get("entries", [])
    if as_json:
        _dump(entries)
        return OK
    table = Table(box=None, header_style="bold")
    columns = ["URL", "REFERENCE", "DIGEST", "SIZE", "STATE", "LAST USED"]
    failed = any(e.get("error") for e in entries)
    for col in [*columns, "ERROR"] if failed else columns:  # ERROR only when one failed
        table.add_column(col, overflow="fold")
    for e in entries:
        row = [
            e.get("url", ""),
            e.get("reference") or "",
            (e.get("digest") or "")[:19],
            _size(e.get("size")),
            e.get("state", ""),
            e.get("lastUsed") or e.get("created") or e.get("failedAt") or "",
        ]
        if failed:
            error = e.get("error") or {}
            row.append(f"{error['code']}: {error['message']}" if error else "")
        table.add_row(*row)
    Console(width=max(160, Console().width)).print(table)
    return OK


def inspect(client: Client, target: str, as_json: bool) -> int:
    """An entry by URL, or every entry that holds a digest."""
    if target.startswith("sha256:"):
        answer = client.request("GET", "/content/")
        if answer.status != 200:
            return _failed(answer)
        found = [
            e
            for e in answer.body.get("entries", [])
            if target in (e.get("digest"), e.get("manifestDigest"))
            or any(b.get("digest") == target for b in e.get("blobs", []))
        ]
        if not found:
            _err(f"no entry holds {target}")
            return NOT_FOUND
        body: Any = {"digest": target, "entries": found}
    else:
        answer = client.request("GET", content_path(target))
        if answer.status not in (200, 206):
            return _failed(answer)
        body = answer.body
    if as_json:
        _dump(body)
        return OK
    for e in body.get("entries", [body]):
        print(e["url"])
        for key in (
            "state",
            "kind",
            "reference",
            "digest",
            "manifestDigest",
            "path",
            "created",
            "lastUsed",
        ):
            if e.get(key):
                print(f"  {key:<15}{e[key]}")
        print(f"  {'size':<15}{_size(e.get('size'))} ({e.get('bytesDone', 0)} done)")
        _print_files(e, all_files=True)
    return OK


def _print_files(entry: dict[str, Any], all_files: bool = False) -> None:
    """The entry's total and, when it has several (or ``all_files``), each file."""
    blobs = entry.get("blobs") or []
    count = entry.get("fileCount", len(blobs))
    if not all_files:
        print(f"  size   {_size(entry.get('size'))} in {count} file{'s' if count != 1 else ''}")
    if count > 1 or all_files:
        for b in blobs:
            print(f"  - {b.get('title') or ''} {b.get('digest')} {_size(b.get('size'))}")


# -- rm / gc / du -------------------------------------------------------------


def rm(client: Client, url: str, as_json: bool) -> int:
    answer = client.request("DELETE", content_path(url))
    if answer.status != 204:
        return _failed(answer)
    if as_json:
        _dump({"url": url, "deleted": True})
    else:
        print(f"deleted {url}")
    return OK


def gc(client: Client, ingest_age: float, as_json: bool) -> int:
    answer = client.request("POST", f"/admin/gc?ingest-age={ingest_age:g}")
    if answer.status != 200:
        return _failed(answer)
    b = answer.body
    if as_json:
        _dump(b)
    else:
        print(
            f"removed {b['blobsRemoved']} unreferenced blobs and {b['ingestRemoved']} "
            f"stale downloads: {_size(b['bytesFreed'])} freed"
        )
    return OK


def pin(client: Client, url: str, on: bool, as_json: bool) -> int:
    answer = client.request("POST", "/admin/pin", {"url": url, "pin": on})
    if answer.status != 200:
        return _failed(answer)
    if as_json:
        _dump(answer.body)
    else:
        print(f"{'pinned' if on else 'unpinned'} {url}")
    return OK


def du(client: Client, as_json: bool) -> int:
    answer = client.request("GET", "/admin/du")
    if answer.status != 200:
        return _failed(answer)
    b = answer.body
    if as_json:
        _dump(b)
        return OK
    fs = b["filesystem"]
    print(f"{_size(b['totalBytes'])} in all: {b['entries']} entries, {b['blobs']} blobs")
    print(f"  blobs        {_size(b['blobBytes'])}")
    print(f"  unreferenced {_size(b['unreferencedBytes'])} (storage-manager gc frees it)")
    print(f"  downloading  {_size(b['ingestBytes'])}")
    print(f"  filesystem   {_size(fs['free'])} free of {_size(fs['bytes'])}")
    return OK


def import_bundle(client: Client, path: str, as_json: bool) -> int:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        _err(f"cannot read {path}: {e.strerror}")
        return FAILED
    with f:
        answer = client.upload(
            "/admin/import", f, os.fstat(f.fileno()).st_size, "application/x-tar"
        )
    if answer.status != 200:
        return _failed(answer)
    b = answer.body
    if as_json:
        _dump(b)
    else:
        print(
            f"imported {len(b['entries'])} entries: {b['blobsAdded']} blobs added, "
            f"{b['blobsSkipped']} already here"
        )
        for url in b["entries"]:
            print(f"  {url}")
    return OK


def export_bundle(cache_dir: str, targets: list[str], output: str, as_json: bool) -> int:
    """Write the entries named by URL or reference to an OCI layout tar
    (reads the cache directly: blobs never change, index.json is atomic)."""
    from proxy.cache import bundle
    from proxy.cache.layout import Layout
    from proxy.cache.store import Store

    layout = Layout(Path(cache_dir))
    if not layout.blobs_dir.is_dir():
        _err(f"{cache_dir} is not a cache directory")
        return FAILED
    store = Store(layout, None)  # type: ignore[arg-type]  # loading needs no reactor
    store.load()
    chosen: list[Any] = []
    for t in targets:
        found = [e for e in store.entries() if t in (e.url, e.reference)]
        if not found:
            _err(f"{t} is not in the cache (give a URL or a reference, see storage-manager ls)")
            return NOT_FOUND
        chosen.extend(e for e in found if e not in chosen)
    tmp = Path(output + ".part")
    with open(tmp, "wb") as out:
        count, size = bundle.export(layout, chosen, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, output)
    if as_json:
        _dump({"output": output, "entries": [e.url for e in chosen], "blobs": count, "bytes": size})
    else:
        print(f"wrote {output}: {len(chosen)} entries, {count} blobs, {_size(size)}")
    return OK


def env_secret(name: str | None) -> str | None:
    """A secret named by an environment variable (flags show in ``ps``)."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise KeyError(name)
    return value
