"""A real S3 protocol peer for tests: moto's server in its own process on
loopback, and a TCP relay that can slow, cut or corrupt what it forwards.

``MotoS3`` runs ``python -m moto.server``; with ``auth=True`` moto checks
SigV4 signatures and IAM policies (``INITIAL_NO_AUTH_ACTION_COUNT``): the
first few calls set up a user and its keys, every later one is authenticated.
Its werkzeug access log (method, target, status per request) is kept in
``lines``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3

from tests.support.processes import access_requests, start_listening, stop_process

REGION = "us-east-1"
_METHODS = frozenset({b"GET", b"HEAD", b"PUT", b"POST", b"DELETE"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """moto's S3 (and IAM) on 127.0.0.1."""

    # Calls made without auth in auth mode: create_user, put_user_policy,
    # create_access_key, and creating the bucket "forbidden" the user may not
    # touch (the rest is set up with the user's own keys).
    SETUP_CALLS = 4

    def __init__(self, auth: bool = False) -> None:
        self.auth = auth
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.access_key = "testing"
        self.secret_key = "testing"

    def start(self) -> MotoS3:
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("AWS_"):
                del env[k]
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.SETUP_CALLS)
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = start_listening("moto server", argv, self.port, self.lines, env=env)
        if self.auth:
            self._make_user()
        return self

    def _make_user(self) -> None:
        iam = self.boto("iam")
        iam.create_user(UserName="node")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {
                    "Effect": "Deny",
                    "Action": "s3:*",
                    "Resource": ["arn:aws:s3:::forbidden", "arn:aws:s3:::forbidden/*"],
                },
            ],
        }
        iam.put_user_policy(UserName="node", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="node")["AccessKey"]
        self.boto().create_bucket(Bucket="forbidden")
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def boto(self, service: str = "s3") -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def server_env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for a storage-manager that reads this store."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, target, status) of every request moto logged."""
        return access_requests(self.lines)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Relay:
    """A TCP relay on 127.0.0.1 in front of ``target``.

    ``rate``: bytes/s from the target to the client (None: as fast as it can).
    ``cut_after``: close the first connection that carried this many bytes
    toward the client, then call ``on_cut``. ``corrupt_at``: flip the byte
    at this offset of a connection's stream toward the client (headers
    included), once: ``corrupted`` tells whether it happened.
    ``request_delay``: hold each request (a chunk from the client that starts
    with an HTTP method) this many seconds before it goes on.
    """

    def __init__(
        self,
        target: tuple[str, int],
        rate: float | None = None,
        cut_after: int | None = None,
        on_cut: Callable[[], None] | None = None,
        corrupt_at: int | None = None,
        request_delay: float | None = None,
    ) -> None:
        self.target = target
        self.rate = rate
        self.cut_after = cut_after
        self.on_cut = on_cut
        self.corrupt_at = corrupt_at
        self.request_delay = request_delay
        self.corrupted = False
        self.cuts = 0
        self.sent_up = bytearray()  # everything clients sent toward the target
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
        sent = 0
        cut = False
        with self._lock:
            if self.cut_after is not None and self.cuts == 0:
                cut = True
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                at = self.corrupt_at
                if at is not None and not self.corrupted and sent <= at < sent + len(data):
                    i = at - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                    self.corrupted = True
                if cut and self.cut_after is not None and sent + len(data) >= self.cut_after:
                    client.sendall(data[: self.cut_after - sent])
                    with self._lock:
                        self.cuts += 1
                    break
                client.sendall(data)
                sent += len(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        if cut and self.cuts and self.on_cut is not None:
            on_cut, self.on_cut = self.on_cut, None
            on_cut()

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                if len(self.sent_up) < 1 << 20:
                    self.sent_up += data
                if self.request_delay and data.split(b" ", 1)[0] in _METHODS:
                    time.sleep(self.request_delay)
                upstream.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._sock.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
