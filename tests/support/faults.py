"""Network faults on loopback: a TCP proxy that refuses or stalls, and a trickling peer.

Both are plain sockets in threads, so that they behave the same whatever event
loop the code under test runs in, and nothing of ours is mocked.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum


class Mode(StrEnum):
    PASS = "pass"  # forward both ways
    STALL = "stall"  # accept, but forward nothing (held bytes go on once it passes again)
    REFUSE = "refuse"  # reset every connection, new and open


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` ("host:port"); set `mode` at will."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._flowing = threading.Event()
        self._flowing.set()
        self._mode = Mode.PASS
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self._mode = mode
        if mode == Mode.PASS:
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == Mode.REFUSE:
            with self._lock:
                for sock in self._open:
                    _abort(sock)

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for sock in self._open:
                _abort(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._mode == Mode.REFUSE:
                _reset(client)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a stalled proxy holds new connections too
        try:
            upstream = socket.create_connection(self._upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open |= {client, upstream}
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._open -= {client, upstream}
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                if self._closed or self._mode == Mode.REFUSE:
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):  # the other direction ends too
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a refusing peer or a broken path does."""
    _abort(sock)
    sock.close()


def _abort(sock: socket.socket) -> None:
    """Make the socket's close send RST, and wake the thread reading it (it closes it)."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RD)


@contextmanager
def proxy(upstream: str) -> Iterator[Proxy]:
    running = Proxy(upstream)
    try:
        yield running
    finally:
        running.close()


@contextmanager
def trickling_server(
    head: bytes = b"HTTP/1.1 200 OK\r\nX-Drip: ", every_s: float = 0.5
) -> Iterator[str]:
    """An HTTP peer that reads the request, sends `head`, then one byte every `every_s`
    for as long as the client stays: an answer that never ends. Yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            with suppress(OSError):
                conn.recv(65536)
                conn.sendall(head)
                while not stopped.wait(every_s):
                    conn.sendall(b"x")

    def accept() -> None:
        while not stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopped.set()
        listener.close()
