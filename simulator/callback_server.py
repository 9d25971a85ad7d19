"""A lean HTTP/1.1 server for the load generator's delivery callbacks.

The load generator shares the machine with the daemon it measures, and at 2,000 callbacks a
second aiohttp's server took about 0.1 core of it: the load process used 0.36 core with its
aiohttp receiver and 0.29-0.30 core with this one (measured from /proc). This server does the
one thing the load needs: it reads POSTs framed by Content-Length on kept-alive connections,
hands each JSON body to a function, and answers 204. Anything else gets a plain error status:
404 for another path, 405 for another method, 400 for a body that is not a JSON object, 411
without Content-Length (chunked bodies included), 413 for a body over MAX_BODY, 431 for a head
over MAX_HEAD; the last three close the connection, as the rest of its bytes cannot be framed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import cast

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024

# on_callback(body): one parsed JSON object per request.
OnCallback = Callable[[dict[str, object]], None]

_REASONS = {204: "No Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large",
            431: "Request Header Fields Too Large"}


def _answer(status: int, close: bool) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    length = "" if status == 204 else "Content-Length: 0\r\n"
    return f"HTTP/1.1 {status} {_REASONS[status]}\r\n{length}{connection}\r\n".encode("latin-1")


class _CallbackProtocol(asyncio.Protocol):
    def __init__(self, path: bytes, on_callback: OnCallback,
                 open_connections: set[asyncio.Transport]) -> None:
        self._path = path
        self._on_callback = on_callback
        self._open = open_connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._open.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._open.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        # Several requests may arrive together; answer each in order.
        while self._transport is not None and not self._transport.is_closing():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(431)
                return
            head = bytes(buf[:end]).split(b"\r\n")
            request_line = head[0].split(b" ")
            length: int | None = None
            close = len(request_line) != 3 or request_line[2] != b"HTTP/1.1"
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length" and value.strip().isdigit():
                    length = int(value.strip())
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            method = request_line[0]
            if method == b"POST" and length is None:
                self._fail(411)
                return
            length = length or 0
            if length > MAX_BODY:
                self._fail(413)
                return
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            status = self._handle(method, request_line[1] if len(request_line) > 1 else b"",
                                  body)
            self._transport.write(_answer(status, close))
            if close:
                self._transport.close()

    def _handle(self, method: bytes, target: bytes, body: bytes) -> int:
        if target.split(b"?", 1)[0] != self._path:
            return 404
        if method != b"POST":
            return 405
        try:
            data = json.loads(body)
        except ValueError:
            return 400
        if not isinstance(data, dict):
            return 400
        self._on_callback(data)
        return 204

    def _fail(self, status: int) -> None:
        assert self._transport is not None
        self._transport.write(_answer(status, close=True))
        self._transport.close()


class CallbackServer:
    """Callbacks POSTed to `path` on host:port (0: any free port) go to on_callback(body)."""

    def __init__(self, host: str, port: int, path: str, on_callback: OnCallback) -> None:
        self._host, self._port = host, port
        self._path = path.encode("latin-1")
        self._on_callback = on_callback
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Transport] = set()

    @property
    def port(self) -> int:
        """The port listened on (after start)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _CallbackProtocol(self._path, self._on_callback, self._open),
            self._host, self._port)

    def close(self) -> None:
        """Stop listening and close the kept-alive connections the daemon would hold open."""
        if self._server is not None:
            self._server.close()
        for transport in list(self._open):
            transport.close()
