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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from proxy.client import Answer, Client, ClientError, content_path
from proxy.units import human_size, plural

OK, FAILED, NOT_FOUND, UNREACHABLE, INTERRUPTED = 0, 1, 3, 4, 130


def _err(message: str) -> None:
    print(f"storage-manager: {message}", file=sys.stderr)


def _dump(body: Any) -> None:
    print(json.dumps(body, indent=2))


def _failed(answer: Answer) -> int:
    _err(answer.error)
    return NOT_FOUND if answer.status == 404 else FAILED


def _shown(answer: Answer, as_json: bool, show: Callable[[Any], None]) -> int:
    """A 200's body, as JSON (``--json``) or by ``show``; any other answer's error."""
    if answer.status != 200:
        return _failed(answer)
    if as_json:
        _dump(answer.body)
    else:
        show(answer.body)
    return OK


# -- progress without a terminal -------------------------------------------------


STATUS_EVERY = 5.0  # seconds between two status lines (as docker pull in CI logs)


class StatusLine:
    """Plain progress lines for logs: one when the work starts, then at most
    every :data:`STATUS_EVERY` seconds, and one at the end."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = time.monotonic()
        self._last = self.started  # the next line comes STATUS_EVERY after this one
        print(f"{what}: started", file=sys.stderr, flush=True)

    def update(self, done: int, total: int | None, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < STATUS_EVERY:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        of = f" of {human_size(total)} ({100 * done // total}%)" if total else ""
        print(
            f"{self.what}: {human_size(done)}{of}, {human_size(int(done / elapsed))}/s",
            file=sys.stderr,
            flush=True,
        )

    def blobs_hashed(self, blobs: int, of: int, done: int, total: int) -> None:
        """``verify``'s progress (blobs hashed of all, bytes of all)."""
        self.update(done, total, final=blobs == of)


def _totals(body: Any) -> tuple[int, int | None]:
    """(bytes done, total bytes or None) of a /content answer."""
    if not isinstance(body, dict):
        return 0, None
    blobs = [b for b in body.get("blobs", []) if isinstance(b, dict)]
    if blobs:
        done = sum(int(b.get("bytesDone") or 0) for b in blobs)
        sizes = [b.get("size") for b in blobs]
        ints = [x for x in sizes if isinstance(x, int)]
        total = sum(ints) if len(ints) == len(sizes) else None
        return done, total
    return int(body.get("bytesDone") or 0), body.get("size")


# -- pull ---------------------------------------------------------------------


def pull(
    client: Client,
    url: str,
    as_json: bool,
    digest: str | None = None,
    credentials: str | None = None,
    credentials_type: str | None = None,
    detach: bool = False,
) -> int:
    body: dict[str, Any] = {"url": url}
    if digest:
        body["digest"] = digest
    if credentials:
        body["credentials"] = credentials
    if credentials_type:
        body["credentialsType"] = credentials_type
    if detach:
        return _pull_detached(client, url, body, as_json)
    result: list[Answer] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            result.append(client.request("POST", "/content/", body))
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    try:
        if as_json:
            worker.join()
        elif sys.stderr.isatty():
            _follow(client, url, worker)
        else:
            _status(client, url, worker)
    except KeyboardInterrupt:
        return _interrupted(client, url)
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
        if b.get("directory"):
            print(f"  dir    {b['directory']}")  # the model's files by name
        if b.get("ollamaModels"):
            print(f"  ollama OLLAMA_MODELS={b['ollamaModels']}")
        _print_files(b)
    return OK


def _pull_detached(client: Client, url: str, body: dict[str, Any], as_json: bool) -> int:
    if client.unix_path is not None and client.private:
        _err(
            "--detach needs a running server (storage-manager serve): this command's own "
            "server stops when it ends"
        )
        return FAILED
    answer = client.request("POST", "/content/", body, headers={"Prefer": "respond-async"})
    if answer.status not in (200, 201, 202):
        return _failed(answer)
    if as_json:
        _dump(answer.body)
    elif answer.status == 202:
        print(
            f"downloading in the background: {url}\n"
            f"  follow it: storage-manager inspect {url}\n"
            f"  cancel it: storage-manager rm {url}"
        )
    else:
        print(f"already cached: {url}\n  digest {answer.body.get('digest')}")
    return OK


def _interrupted(client: Client, url: str) -> int:
    """Ctrl-C: cancel the download this command started, as ``docker pull``
    does, unless another client waits for it too."""
    try:
        now = client.request("GET", content_path(url), timeout=10)
        state = now.body.get("state") if isinstance(now.body, dict) else None
        others = int(now.body.get("clients") or 1) - 1 if isinstance(now.body, dict) else 0
        if state not in ("queued", "downloading"):
            _err(f"interrupted ({url} is {state or 'unknown'})")
        elif others > 0:
            _err(
                f"interrupted: the download of {url} goes on, {others} other "
                f"client{'s' if others > 1 else ''} wait{'' if others > 1 else 's'} for it; "
                f"cancel it with: storage-manager rm {url}"
            )
        else:
            client.request("DELETE", content_path(url), timeout=30)
            _err(f"interrupted: cancelled the download of {url}")
    except (ClientError, ValueError, TypeError):
        _err("interrupted")
    return INTERRUPTED


def _status(client: Client, url: str, worker: threading.Thread) -> None:
    """Without a terminal: a status line at the start and every 5 seconds."""
    status = StatusLine(f"pull {url}")
    while worker.is_alive():
        worker.join(1.0)
        if not worker.is_alive():
            break
        try:
            answer = client.request("GET", content_path(url), timeout=10)
        except ClientError:
            continue
        done, total = _totals(answer.body)
        status.update(done, total)


class _Speed(ProgressColumn):
    """Transfer rate in binary units (MiB/s), as the sizes beside it and ``ls``."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "?" if speed is None else f"{human_size(int(speed))}/s", style="progress.data.speed"
        )


def _follow(client: Client, url: str, worker: threading.Thread) -> None:
    """A live progress bar per blob while the POST runs (on a terminal only)."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _Speed(),
        TimeRemainingColumn(),
    )
    tasks: dict[str, TaskID] = {}

    def show(progress: Progress, answer: Answer) -> None:
        blobs = answer.body.get("blobs", []) if isinstance(answer.body, dict) else []
        for i, blob in enumerate(blobs):
            key = blob.get("digest") or f"{i}:{blob.get('title')}"
            name = blob.get("title") or (blob.get("digest") or "blob")[:19]
            if key not in tasks:
                tasks[key] = progress.add_task(name, total=blob.get("size"))
            progress.update(
                tasks[key], completed=blob.get("bytesDone") or 0, total=blob.get("size")
            )

    with Progress(*columns, console=console, transient=False) as progress:
        while worker.is_alive():
            try:
                show(progress, client.request("GET", content_path(url), timeout=10))
            except ClientError:
                time.sleep(0.5)
                continue
            worker.join(0.25)
        # The last look: every bar ends where the download did (100% when stored).
        try:
            final = client.request("GET", content_path(url), timeout=10)
        except ClientError:
            return
        if final.status == 200:
            show(progress, final)


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
            human_size(e.get("size")),
            e.get("state", ""),
            e.get("lastUsed") or e.get("created") or e.get("failedAt") or "",
        ]
        if failed:
            error = e.get("error") or {}
            row.append(f"{error['code']}: {error['message']}" if error else "")
        table.add_row(*row)
    Console(width=max(160, Console().width)).print(table)
    return OK


def _is_digest(text: str) -> bool:
    return text.startswith("sha256:")


def resolve(client: Client, targets: list[str]) -> tuple[list[str], list[str]]:
    """The entry URLs that ``targets`` name (each a URL, a reference as ``ls``
    shows it, or an entry's digest), in order, once each; and the targets
    that name nothing. A URL that is not listed is kept as it is (the server
    says whether it knows it)."""
    answer = client.request("GET", "/content/")
    if answer.status != 200:
        raise ClientError(answer.error)
    entries = [e for e in answer.body.get("entries", []) if isinstance(e, dict)]
    urls: list[str] = []
    unknown: list[str] = []
    for t in targets:
        found = [
            e["url"]
            for e in entries
            if t in (e.get("url"), e.get("reference"))
            or (_is_digest(t) and t in (e.get("digest"), e.get("manifestDigest")))
        ]
        if not found and "://" in t:
            found = [t]
        if not found:
            unknown.append(t)
        urls.extend(u for u in found if u not in urls)
    return urls, unknown


def _not_found(unknown: list[str]) -> None:
    for t in unknown:
        _err(
            f"{t} is not in the cache (give a URL, a reference or a digest: see storage-manager ls)"
        )


def inspect(client: Client, targets: list[str], as_json: bool) -> int:
    """Entries by URL or reference; a digest: every entry that holds it
    (as its digest, its manifest or one of its blobs)."""
    bodies: list[Any] = []
    status = OK
    for t in targets:
        body, code = _inspect_one(client, t)
        if body is None:
            status = max(status, code)
        else:
            bodies.append(body)
    if as_json:
        if len(targets) == 1 and bodies:
            _dump(bodies[0])
        elif bodies:
            _dump(bodies)
        return status
    for body in bodies:
        for e in body.get("entries", [body]):
            _print_entry(e)
    return status


def _inspect_one(client: Client, target: str) -> tuple[Any, int]:
    if _is_digest(target):
        listing = client.request("GET", "/content/")
        if listing.status != 200:
            return None, _failed(listing)
        found = [
            e
            for e in listing.body.get("entries", [])
            if target in (e.get("digest"), e.get("manifestDigest"))
            or any(b.get("digest") == target for b in e.get("blobs", []))
        ]
        if found:
            return {"digest": target, "entries": found}, OK
        _err(f"no entry holds {target}")
        return None, NOT_FOUND
    urls, _ = resolve(client, [target])
    if not urls:
        _not_found([target])
        return None, NOT_FOUND
    bodies = []
    for url in urls:
        answer = client.request("GET", content_path(url))
        if answer.status not in (200, 206):
            return None, _failed(answer)
        bodies.append(answer.body)
    return (bodies[0], OK) if len(bodies) == 1 else ({"target": target, "entries": bodies}, OK)


def _print_entry(e: dict[str, Any]) -> None:
    print(e["url"])
    for key in (
        "state",
        "kind",
        "reference",
        "digest",
        "manifestDigest",
        "path",
        "directory",
        "directoryError",
        "ollamaModels",
        "created",
        "lastUsed",
    ):
        if e.get(key):
            print(f"  {key:<15}{e[key]}")
    if isinstance(e.get("error"), dict):
        print(f"  {'error':<15}{e['error'].get('code')}: {e['error'].get('message')}")
    print(f"  {'size':<15}{human_size(e.get('size'))} ({human_size(e.get('bytesDone') or 0)} done)")
    _print_files(e, all_files=True)


def _print_files(entry: dict[str, Any], all_files: bool = False) -> None:
    """The entry's total and, when it has several (or ``all_files``), each file."""
    blobs = entry.get("blobs") or []
    count = entry.get("fileCount", len(blobs))
    if not all_files:
        print(f"  size   {human_size(entry.get('size'))} in {plural(count, 'file')}")
    if count > 1 or all_files:
        for b in blobs:
            print(f"  - {b.get('title') or ''} {b.get('digest')} {human_size(b.get('size'))}")


# -- rm / gc / du -------------------------------------------------------------


def rm(client: Client, targets: list[str], as_json: bool) -> int:
    urls, unknown = resolve(client, targets)
    _not_found(unknown)
    status = NOT_FOUND if unknown else OK
    done = []
    for url in urls:
        answer = client.request("DELETE", content_path(url))
        if answer.status != 204:
            status = max(status, _failed(answer))
            continue
        done.append(url)
        if not as_json:
            print(f"deleted {url}")
    if as_json:
        _dump(
            [{"url": u, "deleted": True} for u in done]
            if len(targets) > 1
            else ({"url": done[0], "deleted": True} if done else [])
        )
    return status


def gc(client: Client, ingest_age: float, as_json: bool) -> int:
    answer = client.request("POST", f"/admin/gc?ingest-age={ingest_age:g}")

    def show(b: Any) -> None:
        print(
            f"removed {b['blobsRemoved']} unreferenced blobs and {b['ingestRemoved']} "
            f"stale downloads: {human_size(b['bytesFreed'])} freed"
        )

    return _shown(answer, as_json, show)


def pin(client: Client, targets: list[str], on: bool, as_json: bool) -> int:
    urls, unknown = resolve(client, targets)
    _not_found(unknown)
    status = NOT_FOUND if unknown else OK
    bodies = []
    for url in urls:
        answer = client.request("POST", "/admin/pin", {"url": url, "pin": on})
        if answer.status != 200:
            status = max(status, _failed(answer))
            continue
        bodies.append(answer.body)
        if not as_json:
            print(f"{'pinned' if on else 'unpinned'} {url}")
    if as_json:
        _dump(bodies[0] if len(targets) == 1 and bodies else bodies)
    return status


def peers(client: Client, as_json: bool) -> int:
    """The server's peers (``GET /admin/peers``)."""
    answer = client.request("GET", "/admin/peers")
    if answer.status == 404:
        _err("this server is not in a cache array (start it with --peers)")
        return NOT_FOUND

    def show(b: Any) -> None:
        table = Table(box=None, header_style="bold")
        for col in ("PEER", "STATE", "FROM", "FAILURES", "LAST ERROR"):
            table.add_column(col, overflow="fold")
        for p in b.get("peers", []):
            table.add_row(
                p.get("address", ""),
                p.get("state", ""),
                p.get("from", ""),
                str(p.get("failures", 0)),
                p.get("lastError") or "",
            )
        print(f"this node: {b.get('self')}")
        Console(width=max(120, Console().width)).print(table)

    return _shown(answer, as_json, show)


def du(client: Client, as_json: bool) -> int:
    answer = client.request("GET", "/admin/du")

    def show(b: Any) -> None:
        fs = b["filesystem"]
        entries, blobs = plural(b["entries"], "entry", "entries"), plural(b["blobs"], "blob")
        print(f"{human_size(b['totalBytes'])} in all: {entries}, {blobs}")
        print(f"  blobs        {human_size(b['blobBytes'])}")
        print(f"  unreferenced {human_size(b['unreferencedBytes'])} (storage-manager gc frees it)")
        print(f"  downloading  {human_size(b['ingestBytes'])}")
        if b.get("viewBytes"):
            print(f"  unpacked     {human_size(b['viewBytes'])} (tar layers in model directories)")
        print(f"  filesystem   {human_size(fs['free'])} free of {human_size(fs['bytes'])}")

    return _shown(answer, as_json, show)


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

    def show(b: Any) -> None:
        print(
            f"imported {plural(len(b['entries']), 'entry', 'entries')}: "
            f"{plural(b['blobsAdded'], 'blob')} added, {b['blobsSkipped']} already here"
        )
        for url in b["entries"]:
            print(f"  {url}")

    return _shown(answer, as_json, show)


def export_store(client: Client, to: str, targets: list[str], as_json: bool) -> int:
    """Every entry (or the ones named) to an object store, by the server."""
    urls: list[str] | None = None
    if targets:
        urls, unknown = resolve(client, targets)
        if unknown:
            _not_found(unknown)
            return NOT_FOUND
    answer = client.request("POST", "/admin/export-store", {"to": to, "urls": urls})
    return _store_copied(answer, "exported", "to", to, as_json)


def import_store(client: Client, source: str, as_json: bool) -> int:
    """Every entry an object store has a record of, into the cache, by the server."""
    answer = client.request("POST", "/admin/import-store", {"from": source})
    return _store_copied(answer, "imported", "from", source, as_json)


def _store_copied(answer: Answer, did: str, way: str, where: str, as_json: bool) -> int:
    if answer.status != 200:
        return _failed(answer)
    b = answer.body
    if as_json:
        _dump(b)
    else:
        print(f"{did} {plural(len(b['entries']), 'entry', 'entries')} {way} {where}")
        for url in b["entries"]:
            print(f"  {url}")
        for f in b["failed"]:
            _err(f"{f['what']}: {f['error']}")
    return FAILED if b["failed"] else OK


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
        entries, blobs = plural(len(chosen), "entry", "entries"), plural(count, "blob")
        print(f"wrote {output}: {entries}, {blobs}, {human_size(size)}")
    return OK


def env_secret(name: str | None) -> str | None:
    """A secret named by an environment variable (flags show in ``ps``)."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise KeyError(name)
    return value
