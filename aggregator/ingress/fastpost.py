"""The fast lane for `POST /v1/messages`: the plainest form of the busiest request, read and
answered without aiohttp's request machinery.

A connection's bytes reach aiohttp through the connection guard (connections.py). While each
read holds exactly one whole request of this form, the guard hands it to `HttpApi.fast_post`
(the same code the aiohttp route runs) and writes the answer itself; the first read that holds
anything else (another path or method, a request split over reads, several requests, chunked
bodies, `Expect`, a header that is not printable ASCII, a body over max_body_bytes, ...) goes to
aiohttp unchanged, and so does every later one on that connection. So aiohttp still judges
everything unusual, and what the fast lane answers is what the route answers (same status,
body and headers; tests/e2e/test_http_fastpost.py sends each request both ways).

At 1,000 single-message requests a second, aiohttp's request objects, router, middlewares and
response writer cost about 70 µs of CPU per request on this machine beyond a bare asyncio
protocol (a trivial handler: 123 against 53 µs per request);
tests/e2e/test_http_fastpost.py::test_parse_and_render_cost_little guards the parse and the answer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from aiohttp.http import SERVER_SOFTWARE

PATH_LINE = b"POST /v1/messages HTTP/1.1\r\n"
MAX_HEAD = 8190  # bytes of request line and headers; aiohttp's own line limit
# A header line the fast lane understands: a token, a colon, and a value of printable ASCII
# (no obs-fold, no control characters, no bytes above 0x7E). Anything else: aiohttp's parser.
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e][\x20-\x7e\t]*)?)")
# Headers that change how the request is framed or answered: left to aiohttp.
_REFUSED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer",
                      b"content-encoding"})


@dataclass(slots=True, frozen=True)
class FastRequest:
    authorization: str  # "" without the header
    idempotency_key: str | None
    body: bytes

    async def read(self) -> bytes:
        """The body, as aiohttp's request.read() gives it."""
        return self.body


def parse(data: bytes, max_body: int) -> FastRequest | None:
    """The request when `data` is exactly one whole `POST /v1/messages` of the plain form;
    None for anything else (aiohttp then takes the bytes)."""
    if not data.startswith(PATH_LINE):
        return None
    start = len(PATH_LINE)
    end = data.find(b"\r\n\r\n", start - 2)
    if end < 0 or end > MAX_HEAD:
        return None
    length: int | None = None
    authorization: str | None = None
    key: str | None = None
    if end > start - 2:
        for line in data[start:end].split(b"\r\n"):
            match = _HEADER.fullmatch(line)
            if match is None:
                return None
            name, value = match[1].lower(), match[2].rstrip(b" \t")
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value.decode("ascii")
            elif name == b"idempotency-key":
                if key is not None:
                    return None
                key = value.decode("ascii")
            elif name == b"connection":
                if value.lower() != b"keep-alive":
                    return None
            elif name in _REFUSED:
                return None
    body_start = end + 4
    if length is None or length > max_body or len(data) != body_start + length:
        return None
    return FastRequest(authorization or "", key, data[body_start:])


_REASONS = {status.value: status.phrase for status in HTTPStatus}
_date_second = -1
_date_text = b""


def _date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date_second, _date_text
    now = time.time()
    if int(now) != _date_second:
        _date_second = int(now)
        _date_text = formatdate(now, usegmt=True).encode("ascii")
    return _date_text


_SERVER = SERVER_SOFTWARE.encode("ascii")


def render(status: int, body: bytes, headers: tuple[tuple[str, str], ...] = (),
           content_type: bytes = b"application/json", close: bool = False) -> bytes:
    """The whole HTTP/1.1 answer, with the headers aiohttp would give it."""
    extra = b"".join(b"%s: %s\r\n" % (name.encode("ascii"), value.encode("ascii"))
                     for name, value in headers)
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s; charset=utf-8\r\n%sContent-Length: %d\r\n" \
           b"Date: %s\r\nServer: %s\r\n%s\r\n%s" % (
               status, _REASONS.get(status, "").encode("ascii"), content_type, extra,
               len(body), _date(), _SERVER, b"Connection: close\r\n" if close else b"", body)
