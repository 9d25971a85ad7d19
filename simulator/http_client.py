"""A lean keep-alive HTTP/1.1 client for the load generator.

The load generator shares the machine with the daemon it measures. aiohttp's client spent about
0.43 ms of CPU per request (measured with py-spy at 2,000 req/s on 2 cores: most of a core, taken
from the daemon under test). This client does the one thing the load needs, a POST of a JSON
body on a reused connection and its Content-Length-framed answer, in a few microseconds. It is
not a general HTTP client: it sends one request at a time per connection (no pipelining, so each
latency is one request's), and it does not follow redirects or decode chunked answers (smsagg
never sends them; such an answer is an error, not a guess).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

MAX_HEAD = 16 * 1024  # a response head longer than this is not one of smsagg's


class HttpError(Exception):
    """The request got no usable answer; `code` is what the load report counts it as."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.keep_alive = True
        self._head_end = -1
        self._status = 0
        self._length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError("connection_lost", str(exc or "closed by the server")))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: HttpError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._protocol_error("response head too long")
                return
            try:
                self._parse_head(bytes(buf[:end]))
            except ValueError as exc:
                self._protocol_error(str(exc))
                return
            self._head_end = end + 4
        total = self._head_end + self._length
        if len(buf) < total:
            return
        body = bytes(buf[self._head_end:total])
        del buf[:total]
        self._head_end = -1
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        self._status = int(parts[1])
        length = None
        self.keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                raise ValueError("chunked answers are not supported")
            elif name == b"connection":
                self.keep_alive = value.strip().lower() == b"keep-alive"
        if length is None or length < 0:
            raise ValueError("answer without Content-Length")
        self._length = length

    def _protocol_error(self, detail: str) -> None:
        self._fail(HttpError("bad_response", detail))
        self.close()


class HttpClient:
    """POSTs to one host over at most `size` kept-alive connections, opened as needed.

    Callers bound the requests in flight themselves (the load's concurrency); a request finding
    no idle connection opens one."""

    def __init__(self, host: str, port: int, headers: dict[str, str], timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"Host: {host_header}\r\nContent-Type: application/json\r\n{extra}"
        self._idle: deque[_Connection] = deque()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Return (status, body); raise HttpError when there is no complete answer."""
        conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = await self._connect()
        request = (f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n"
                   .encode("latin-1") + body)
        try:
            async with asyncio.timeout(self.timeout):
                status, answer = await conn.send(request)
        except TimeoutError:
            conn.close()
            raise HttpError("timeout") from None
        except BaseException:
            conn.close()
            raise
        if conn.keep_alive and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
        return status, answer

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except TimeoutError:
            raise HttpError("connect_timeout") from None
        except OSError as exc:
            raise HttpError(type(exc).__name__, str(exc)) from None
        return conn

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
