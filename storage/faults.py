"""A fault-injecting HTTP proxy for an S3 endpoint: the object store as it really behaves.

Tests and benchmarks put :class:`FaultProxy` between s3fs and a ``moto_server``; s3fs sees
the faults on the wire exactly as it would from S3, and every layer (botocore, s3fs, bevkd's
:mod:`~bevkd.storage.retry`) handles them as it would in production. Faults, chosen per
request at ``FaultPlan.rate``:

- ``500``: InternalError, before the request reaches the store;
- ``503``: SlowDown (S3's throttling reply), before the request reaches the store;
- ``reset``: the connection is reset (TCP RST) with no reply; for a PUT or DELETE, half of
  them after the store has applied the request (the reply is what was lost);
- ``truncate``: a GET's reply announces its full length and sends half the body, then the
  connection closes;
- ``corrupt``: a GET of a chunk object returns the right length with flipped bytes, other
  bytes each time (only checksums can catch it: S3's own where the client asks for them, and
  the chunks' crc32c). Only chunks: zarr metadata, listings and the writer lease carry no
  checksum of their own (on real S3, TLS guards them), so they are spared;
- ``latency``: the request waits ``latency_s`` first, then succeeds (not a failure).

Choices are seeded and deterministic per request: the n-th request of a method and path
fails the same way in every run, whatever the order of concurrent requests. ``only`` (a
regex on the path) confines faults to matching objects; with ``rate=1`` that object never
answers, as a store whose one object is unreachable.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULT_KINDS = ("500", "503", "reset", "truncate", "corrupt", "latency")
# Mixed faults: every failure kind alike (latency is not a failure, so it is left out).
MIXED = {"500": 1.0, "503": 1.0, "reset": 1.0, "truncate": 1.0, "corrupt": 1.0}

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
    "</Message><RequestId>bevkd-fault</RequestId></Error>"
)
_REPLIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}
# Hop-by-hop headers: they describe one connection, not the message, so they are not forwarded.
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail, and how: ``rate`` of them, kinds drawn by ``kinds``' weights."""

    rate: float = 0.05
    kinds: dict[str, float] = field(default_factory=lambda: dict(MIXED))
    seed: int = 0
    only: str | None = None  # a regex on the request path; None: every request may fail
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE")
    latency_s: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")
        if unknown := sorted(set(self.kinds) - set(FAULT_KINDS)):
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        if not self.kinds or sum(self.kinds.values()) <= 0:
            raise ValueError("fault kinds need a positive total weight")

    def choose(self, method: str, path: str, nth: int) -> str | None:
        """The fault for the ``nth`` request (from 0) of ``method`` on ``path``, or None."""
        if method not in self.methods or (self.only and not re.search(self.only, path)):
            return None
        digest = hashlib.blake2b(f"{self.seed}|{method}|{path}|{nth}".encode(), digest_size=16)
        draw, pick = (x / 2**64 for x in struct.unpack("<QQ", digest.digest()))
        if draw >= self.rate:
            return None
        total = sum(self.kinds.values())
        edge = 0.0
        for kind, weight in sorted(self.kinds.items()):
            edge += weight / total
            if pick < edge:
                return kind
        return sorted(self.kinds)[-1]


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` that injects :class:`FaultPlan`'s faults.

    ``with FaultProxy(endpoint, plan) as proxy:`` then point s3fs at ``proxy.endpoint``.
    ``proxy.plan`` may be replaced while it runs (e.g. to clear the faults); ``proxy.counts``
    holds requests seen and faults injected, by kind (a ``truncate`` or ``corrupt`` drawn for
    a request with no body to damage is not injected, and not counted).
    """

    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.plan = plan or FaultPlan(rate=0.0)
        self.counts: Counter[str] = Counter()
        self.methods: Counter[str] = Counter()  # requests seen, by HTTP method
        self._seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decide(self, method: str, path: str) -> tuple[str | None, int]:
        """The fault for this request (or None), and which request of its method and path it is."""
        with self._lock:
            nth = self._seen[(method, path)]
            self._seen[(method, path)] += 1
            self.counts["requests"] += 1
            self.methods[method] += 1
            return self.plan.choose(method, path, nth), nth

    def applied(self, kind: str) -> None:
        """Count a fault that was injected (a ``corrupt`` drawn for a HEAD is not)."""
        with self._lock:
            self.counts[kind] += 1

    def injected(self) -> int:
        """Failures injected so far (latency is not one)."""
        return sum(n for kind, n in self.counts.items() if kind not in ("requests", "latency"))


def _is_chunk(path: str) -> bool:
    """Whether ``path`` names a zarr chunk object (``.../c.0.1`` or ``.../c/0/1``)."""
    parts = path.rstrip("/").split("/")
    return parts[-1].startswith("c.") or (
        len(parts) > 1 and "c" in parts[:-1] and parts[-1].isdigit()
    )


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            for attempt in range(2):  # a kept-alive upstream connection may have gone stale
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    self.upstream.request(self.command, self.path, body=body, headers=headers)
                    reply = self.upstream.getresponse()
                    data = reply.read()
                    return reply.status, reply.reason, reply.getheaders(), data
                except (ConnectionError, http.client.HTTPException, OSError):
                    self.upstream.close()
                    self.upstream = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes,
                   send: int | None = None) -> None:  # fmt: skip
            self.send_response_only(status, reason)
            head = self.command == "HEAD"  # its Content-Length is the object's, with no body
            for key, value in headers:
                if key.lower() not in _HOP and (head or key.lower() != "content-length"):
                    self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data if send is None else data[:send])
            self.wfile.flush()

        def _reset(self) -> None:
            # SO_LINGER with a zero timeout: close() sends RST, as a dropped connection does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _handle(self) -> None:
            body = self._body()
            path = urlsplit(self.path).path
            kind, nth = proxy.decide(self.command, path)
            if kind is not None and kind not in ("truncate", "corrupt"):
                proxy.applied(kind)
            if kind == "latency":
                time.sleep(proxy.plan.latency_s)
                kind = None
            if kind in _REPLIES:
                status, code, message = _REPLIES[kind]
                data = _ERROR_BODY.format(code=code, message=message).encode()
                self._reply(status, code, [("Content-Type", "application/xml")], data)
                return
            if kind == "reset" and (self.command in ("GET", "HEAD") or len(path) % 2 == 0):
                self._reset()
                return
            status, reason, headers, data = self._forward(body)
            if kind == "reset":  # the store applied the request; its reply is lost
                self._reset()
                return
            ok = status == 200 and self.command == "GET" and len(data) > 1
            if kind == "truncate" and ok:
                proxy.applied(kind)
                self._reply(status, reason, headers, data, send=len(data) // 2)
                self._reset()
                return
            if kind == "corrupt" and ok and _is_chunk(path) and not urlsplit(self.path).query:
                proxy.applied(kind)
                # Other bytes each time, as noise on a wire would hit.
                flipped, step, noise = bytearray(data), max(1, len(data) // 8), 1 + nth * 37 % 255
                for at in range(nth % step, len(flipped), step):
                    flipped[at] ^= noise
                data = bytes(flipped)
            self._reply(status, reason, headers, data)

        def do_GET(self) -> None:
            self._handle()

        do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    return Handler


@contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A real S3 API on loopback for tests and benchmarks: ``moto_server`` (moto's dev extra)
    on a free port with ``bucket`` made; yields the fsspec ``storage_options`` a user's S3
    would take (endpoint and credentials) and stops the server on exit."""
    import subprocess
    import sys
    from pathlib import Path

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1",
                     ).create_bucket(Bucket=bucket)  # fmt: skip
        yield {"endpoint_url": endpoint, "key": "test", "secret": "test"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
