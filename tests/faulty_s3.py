"""A fault injector in front of the moto server: S3 answers throttling or 5xx for a while.

`FaultyS3` is an HTTP proxy on 127.0.0.1 that forwards every request to moto unchanged,
except while it is armed: then the next `count` requests (optionally only those whose
method and path match) get an S3 error document with the status and code asked for
(`503 SlowDown`, `500 InternalError`, ...), exactly as S3 sends it. Both of the lake's
clients (pyarrow's C++ S3 client and boto3) see it as a real S3 would answer, so their
own retries run first, and what is left is what the pipeline must handle.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Faults:
    count: int = 0
    status: int = 503
    code: str = "SlowDown"
    methods: tuple[str, ...] = ()  # empty: every method
    path: str = ""  # only requests whose path contains this
    injected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, method: str, path: str) -> bool:
        with self.lock:
            if self.count <= 0 or (self.methods and method not in self.methods):
                return False
            if self.path not in path:
                return False
            self.count -= 1
            self.injected.append(f"{method} {path} -> {self.status} {self.code}")
            return True


class FaultyS3:
    """Start with `running(upstream)`; `arm(...)` makes the next requests fail."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.faults = Faults()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self._body()
                if proxy.faults.take(self.command, self.path):
                    self._error()
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                try:
                    skip = {"host", "transfer-encoding", "content-length", "expect"}
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                    headers["Host"] = proxy.upstream.netloc
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    upstream = conn.getresponse()
                    data = upstream.read()
                    self.send_response(upstream.status, upstream.reason)
                    head = self.command == "HEAD"  # no body, but the object's real length
                    for key, value in upstream.getheaders():
                        if key.lower() in _HOP_BY_HOP or (
                            key.lower() == "content-length" and not head
                        ):
                            continue
                        self.send_header(key, value)
                    if not head:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _error(self) -> None:
                faults = proxy.faults
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                    f"{faults.code}</Code><Message>injected {faults.status} {faults.code}"
                    "</Message><RequestId>FAULTY</RequestId></Error>"
                ).encode()
                self.send_response(faults.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def arm(
        self,
        count: int,
        status: int = 503,
        code: str = "SlowDown",
        methods: tuple[str, ...] = (),
        path: str = "",
    ) -> None:
        """Fail the next `count` requests (of `methods`, whose path contains `path`)."""
        with self.faults.lock:
            self.faults.count, self.faults.status, self.faults.code = count, status, code
            self.faults.methods, self.faults.path = methods, path

    def disarm(self) -> None:
        with self.faults.lock:
            self.faults.count = 0


@contextmanager
def running(upstream: str) -> Iterator[FaultyS3]:
    proxy = FaultyS3(upstream)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
