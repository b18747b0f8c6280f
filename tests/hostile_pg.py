"""A hostile PostgreSQL server for redaction tests: it asks for the password in clear text
and rejects it with an error message that quotes the password back (SQLSTATE 28P01).

libpq (psycopg and ADBC alike) then reports that text, so any path that prints a server
message without redacting it leaks the password. Answers in microseconds, so property
tests can afford hundreds of logins. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(5)
        while True:  # SSLRequest / GSSENCRequest come first: decline, then the startup
            (length,) = struct.unpack("!i", _read_exactly(conn, 4))
            body = _read_exactly(conn, length - 4)
            (code,) = struct.unpack("!i", body[:4])
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                conn.sendall(b"N")
                continue
            break
        params = body[4:].split(b"\0")
        user = params[params.index(b"user") + 1] if b"user" in params else b"?"
        conn.sendall(_message(b"R", struct.pack("!i", 3)))  # AuthenticationCleartextPassword
        kind = _read_exactly(conn, 1)
        (length,) = struct.unpack("!i", _read_exactly(conn, 4))
        password = _read_exactly(conn, length - 4).rstrip(b"\0")
        if kind != b"p":
            return
        text = b'password authentication failed for user "' + user + b'": got "' + password + b'"'
        fields = b"SFATAL\0VFATAL\0C28P01\0M" + text + b"\0\0"
        conn.sendall(_message(b"E", fields))


@contextmanager
def hostile_server() -> Iterator[int]:
    """Run the server in a thread; yields its port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_quietly, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


def _quietly(conn: socket.socket) -> None:
    # A client that hung up early is not this server's problem.
    with contextlib.suppress(OSError, ConnectionError, struct.error, ValueError):
        _serve_one(conn)


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
