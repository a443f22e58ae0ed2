"""The ``storage-manager`` command: ``serve`` (the default) and its flags,
``verify``, and the operator commands of :mod:`proxy.commands` (``pull``,
``ls``, ``inspect``, ``rm``, ``gc``, ``du``, ``pin``, ``unpin``).

Exit codes: 0 success; 1 failure (``serve``: cache locked, cannot listen;
``verify``: a problem found; the others: the operation failed); 2 bad flags
or environment values; 3 no such entry; 4 no server reachable or startable.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from proxy import __version__
from proxy import config as config_mod
from proxy.cache.layout import CacheLocked

log = logging.getLogger("proxy")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _server_flags(p: argparse.ArgumentParser) -> None:
    """The server's flags, one per row of :data:`proxy.config.OPTIONS`."""
    for option in config_mod.OPTIONS:
        if option.metavar is None:
            p.add_argument(
                f"--{option.flag}",
                action="store_const",
                const="1",
                help=config_mod.help_text(option),
            )
        elif option.dest == "verbose":
            p.add_argument(
                "--verbose", metavar="N", nargs="?", const="1", help=config_mod.help_text(option)
            )
        else:
            p.add_argument(
                f"--{option.flag}", metavar=option.metavar, help=config_mod.help_text(option)
            )


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="storage-manager",
        description="Per-node storage manager for AI workloads: downloads images, models and "
        "files into a content-addressed OCI cache and serves it over /content and /v2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _server_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_serve_and_verify(sub)
    _add_pull(sub)
    _add_entry_commands(sub)
    _add_upkeep_commands(sub)
    _add_bundle_commands(sub)
    return parser


def _add_serve_and_verify(sub: Any) -> None:
    """``serve`` and ``verify``."""
    serve = sub.add_parser(
        "serve",
        help="run the server (the default)",
        description="Serve the cache over /content and /v2 (the default command).",
    )
    _server_flags(serve)
    verify = sub.add_parser(
        "verify",
        help="re-hash every blob and check index.json (exit 1 on any problem)",
        description="Re-hash every blob in the cache and check that index.json names only "
        "present blobs. Safe beside a running server (it only reads); --quarantine "
        "changes the cache and needs the server stopped.",
    )
    _client_flags(verify)
    verify.add_argument(
        "--quarantine",
        action="store_true",
        help="move corrupt blobs to <cache>/quarantine/ and drop the entries that need them "
        "from index.json, so the next POST fetches them again",
    )


def _add_pull(sub: Any) -> None:
    """``pull``."""
    pull = sub.add_parser(
        "pull",
        help="download a URL into the cache, with a progress bar",
        description="Download a URL into the cache (any scheme the server knows) and wait "
        "until it is stored; a progress bar per blob on a terminal, a status line every "
        "5 seconds otherwise. Ctrl-C cancels the download (unless another client waits "
        "for it too).",
    )
    pull.add_argument(
        "url",
        help="what to download: https://..., oci://docker.io/library/alpine:3, "
        "hf://org/repo, ollama://llama3, s3://bucket/key, file:///path",
    )
    pull.add_argument("--digest", metavar="sha256:HEX", help="the content must have this digest")
    pull.add_argument(
        "--credentials-env",
        metavar="VAR",
        help="read the download's credentials from this environment variable",
    )
    pull.add_argument(
        "--credentials-type", metavar="TYPE", help="Bearer (default) or Basic, as in POST /content"
    )
    pull.add_argument(
        "--detach",
        action="store_true",
        help="start the download on the running server and return at once (it goes on; "
        "follow it with inspect, cancel it with rm)",
    )
    _client_flags(pull)


def _add_entry_commands(sub: Any) -> None:
    """``ls``, ``inspect``, ``rm``, ``pin``, ``unpin``."""
    ls = sub.add_parser(
        "ls", help="list the cached entries", description="List the entries of the cache."
    )
    _client_flags(ls)
    for name, text in (
        ("inspect", "show entries and their files (a digest: every entry that holds it)"),
        ("rm", "remove entries (and the blobs only they use); cancels running downloads"),
        ("pin", "never evict these entries"),
        ("unpin", "let these entries be evicted again"),
    ):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("targets", nargs="+", metavar="TARGET", help=_TARGET_HELP)
        _client_flags(p)


def _add_upkeep_commands(sub: Any) -> None:
    """``gc`` and ``du``."""
    gc = sub.add_parser(
        "gc",
        help="remove unreferenced blobs and stale partial downloads, report bytes freed",
        description="Remove blobs no entry references and partial downloads untouched "
        "for --ingest-age.",
    )
    gc.add_argument(
        "--ingest-age",
        metavar="SECONDS",
        type=float,
        default=24 * 3600.0,
        help="partial downloads untouched this long are removed (default a day; 0: all "
        "that are not running)",
    )
    _client_flags(gc)
    peers = sub.add_parser(
        "peers",
        help="the peers of this node's cache array and their state",
        description="List the peers of the server's cache array (--peers) and whether each is up.",
    )
    _client_flags(peers)
    du = sub.add_parser(
        "du", help="disk usage of the cache", description="Show what the cache holds on disk."
    )
    _client_flags(du)


def _add_bundle_commands(sub: Any) -> None:
    """``export`` and ``import``."""
    export = sub.add_parser(
        "export",
        help="write entries to an OCI image layout tarball (skopeo oci-archive:, oras, umoci)",
        description="Write entries (and every blob they need) to an OCI image layout tar.",
    )
    export.add_argument("targets", nargs="*", metavar="TARGET", help=_TARGET_HELP)
    to = export.add_mutually_exclusive_group(required=True)
    to.add_argument("-o", "--output", metavar="FILE", help="the tar to write")
    to.add_argument(
        "--to",
        metavar="STORE",
        help="an object store instead of a tar (s3://bucket/prefix, gs://bucket/prefix, "
        "azure://account/container/prefix; the --shared-store layout), through the server; "
        "no TARGET: every entry",
    )
    _client_flags(export)
    imp = sub.add_parser(
        "import",
        help="load an OCI image layout tarball into the cache (every digest verified)",
        description="Load an OCI image layout tar (from export, skopeo, oras) into the "
        "cache; a new or empty cache directory is created.",
    )
    fro = imp.add_mutually_exclusive_group(required=True)
    fro.add_argument("bundle", nargs="?", metavar="FILE", help="the OCI image layout tar to load")
    fro.add_argument(
        "--from",
        dest="from_store",
        metavar="STORE",
        help="every entry of an object store in the --shared-store layout "
        "(s3://bucket/prefix...) instead of a tar",
    )
    _client_flags(imp)


_TARGET_HELP = "an entry: its URL, its reference (as ls shows it) or its digest; several at once"
_WRITES = frozenset({"pull", "import"})  # commands that create a new cache


def _client_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every client command, accepted after the subcommand."""
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"the cache to act on (env CACHE_DIR, default {config_mod.DEFAULT_CACHE_DIR}): "
        "its running server is used, or a private one is started on it",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help="a server to use when none holds the cache's lock, e.g. one elsewhere with the "
        f"same cache path (env NEKKO_ADDRESS, default {config_mod.DEFAULT_ADDRESS}); used only "
        "if it serves that cache",
    )
    p.add_argument(
        "--api-token",
        metavar="TOKEN",
        default=argparse.SUPPRESS,
        help="the server's API token (env NEKKO_API_TOKEN; prefer the environment)",
    )
    p.add_argument(
        "--verbose",
        metavar="N",
        nargs="?",
        const="1",
        default=argparse.SUPPRESS,
        help="log level of a private server: 0 info, 1 debug, 2 trace (env VERBOSE)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _given(args: argparse.Namespace, dest: str) -> bool:
    """Whether an option was given as a flag or in its environment variable."""
    var = config_mod.ENV[dest][0]
    return getattr(args, dest, None) is not None or bool(os.environ.get(var, ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in config_mod.ENV}
    try:
        cfg = config_mod.build(flags)
    except config_mod.ConfigError as e:
        print(f"storage-manager: error: {e}", file=sys.stderr)
        return 2
    if args.command in (None, "serve"):
        return serve(cfg, list(sys.argv[1:] if argv is None else argv))
    from proxy import commands
    from proxy.client import ClientError, Target

    target = Target(
        cache=cfg.cache_dir,
        address=cfg.address,
        cache_given=_given(args, "cache_dir"),
        address_given=_given(args, "address"),
        writes=args.command in _WRITES,
    )
    try:
        if args.command == "export" and not args.targets and not args.to:
            parser.error("export: give at least one TARGET (or --to STORE for every entry)")
        if args.command == "verify" or (args.command == "export" and not args.to):
            return _offline(args, cfg, target)
        return run_command(args, cfg, target)
    except ClientError as e:
        print(f"storage-manager: error: {e}", file=sys.stderr)
        return commands.UNREACHABLE
    except KeyboardInterrupt:
        print("storage-manager: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _offline(args: argparse.Namespace, cfg: config_mod.Config, target: Any) -> int:
    """``verify`` and ``export``: they read the cache's files themselves."""
    from proxy import commands
    from proxy.client import NotACache, locate_cache

    try:
        cache = locate_cache(target, cfg.api_token)
    except NotACache as e:
        print(f"storage-manager: error: {e}", file=sys.stderr)
        return commands.FAILED
    if args.command == "verify":
        return verify(cache, as_json=args.json, quarantine=args.quarantine)
    return commands.export_bundle(str(cache), args.targets, args.output, args.json)


def run_command(args: argparse.Namespace, cfg: config_mod.Config, target: Any) -> int:
    from proxy import commands
    from proxy.client import connect

    try:
        secret = commands.env_secret(getattr(args, "credentials_env", None))
    except KeyError as e:
        print(f"storage-manager: error: environment variable {e} is not set", file=sys.stderr)
        return 2
    with connect(target, cfg.api_token) as client:
        if args.command == "pull":
            return commands.pull(
                client,
                args.url,
                args.json,
                args.digest,
                secret,
                args.credentials_type,
                detach=args.detach,
            )
        if args.command == "ls":
            return commands.ls(client, args.json)
        if args.command == "inspect":
            return commands.inspect(client, args.targets, args.json)
        if args.command == "rm":
            return commands.rm(client, args.targets, args.json)
        if args.command == "import" and args.from_store:
            return commands.import_store(client, args.from_store, args.json)
        if args.command == "import":
            return commands.import_bundle(client, args.bundle, args.json)
        if args.command == "export":
            return commands.export_store(client, args.to, args.targets, args.json)
        if args.command in ("pin", "unpin"):
            return commands.pin(client, args.targets, args.command == "pin", args.json)
        if args.command == "peers":
            return commands.peers(client, args.json)
        if args.command == "gc":
            return commands.gc(client, args.ingest_age, args.json)
        return commands.du(client, args.json)


def verify(cache: Path, as_json: bool, quarantine: bool) -> int:
    from proxy.cache import verify as verify_mod
    from proxy.cache.layout import Layout
    from proxy.commands import StatusLine

    layout = Layout(cache)
    lock_fd = None
    if quarantine:
        try:
            lock_fd = layout.lock()
        except CacheLocked as e:
            print(f"storage-manager: error: {e}; stop it to quarantine", file=sys.stderr)
            return 1
    status = None if as_json or sys.stderr.isatty() else StatusLine(f"verify {cache}")
    try:
        report = verify_mod.verify(layout, progress=None if status is None else status.blobs_hashed)
        if quarantine:
            report = verify_mod.quarantine(layout, report)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    print(verify_mod.dumps(report) if as_json else verify_mod.render(report))
    return 0 if not report.problems else 1


def serve(cfg: config_mod.Config, argv: list[str] | None = None) -> int:
    """The server; with ``--workers`` above 1, the writer of
    :mod:`proxy.workers`, which starts the readers (this same command, run
    again with the listening socket and a link to the writer)."""
    reader_family = os.environ.pop("NEKKO_READER", None)
    if reader_family is not None:
        return _serve_reader(cfg, int(reader_family))
    metrics_dir = None
    if cfg.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before prometheus_client is imported: every process counts in this directory.
        import tempfile

        metrics_dir = tempfile.mkdtemp(prefix="storage-manager-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from proxy.web import reactor as reactors

    reactor = reactors.install()
    from proxy import logs, server

    logs.setup(cfg.verbose, json_lines=cfg.log_format == "json", clock=reactor)
    port = None
    try:
        site = server.new_site()
        if cfg.address.unix_path is None:
            # Bound first: a port in use is said before the cache is created or locked.
            port = server.listen_tcp(cfg.address, site, reactor)
        srv = server.build(cfg, reactor, site)
        port = server.listen(srv, reactor, port)
        server.listen_tls(srv, reactor)
        server.start_readers(srv, reactor, port, argv or [])
    except (server.StartupError, CacheLocked) as e:
        if port is not None:
            port.stopListening()
        print(f"storage-manager: error: {e}", file=sys.stderr)
        return 1
    finally:
        if metrics_dir is not None:
            reactor.addSystemEventTrigger(
                "after", "shutdown", shutil.rmtree, metrics_dir, ignore_errors=True
            )
    reactor.run()
    log.info("stopped")
    return 0


def _serve_reader(cfg: config_mod.Config, family: int) -> int:
    """A reader of ``--workers`` (:mod:`proxy.workers.reader`)."""
    from proxy.web import reactor as reactors

    reactor = reactors.install()
    from proxy import logs
    from proxy.workers import reader

    logs.setup(cfg.verbose, json_lines=cfg.log_format == "json", clock=reactor)
    return reader.run(cfg, family)


if __name__ == "__main__":
    sys.exit(main())
