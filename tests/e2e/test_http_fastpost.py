"""The fast lane for plain POST /v1/messages (aggregator/ingress/fastpost.py): what it answers
is what aiohttp's route answers, byte for byte apart from the Date header and the message id;
whatever it does not take (split reads, pipelined or chunked requests, other paths) aiohttp
still answers, in order; and it costs less than aiohttp's path."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from aggregator.ingress import fastpost
from aggregator.ingress.connections import ConnectionGuard
from tests.helpers import (
    API_KEY,
    DEADLINE,
    Running,
    metric_samples,
    metric_value,
    running,
    wait_for,
)

OK = json.dumps({"to": "+38344123456", "from": "ACME", "text": "hello"}).encode()


def request(body: bytes, *headers: str, key: str | None = API_KEY) -> bytes:
    head = ["POST /v1/messages HTTP/1.1", "Host: x", *headers,
            f"Content-Length: {len(body)}"]
    if key is not None:
        head.insert(2, f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]
                                                    if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), DEADLINE)
    return int(lines[0].split()[1]), headers, body


async def connect(r: Running, *, aiohttp_lane: bool) -> tuple[asyncio.StreamReader,
                                                               asyncio.StreamWriter]:
    """A connection; with `aiohttp_lane` a first GET makes it aiohttp's for good."""
    host, port = r.base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    if aiohttp_lane:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await read_answer(reader)
        assert status == 200
    return reader, writer


async def lanes(r: Running) -> dict[str, float]:
    async with r.http.get(f"{r.base}/metrics") as resp:
        samples = metric_samples(await resp.text())
    return {lane: metric_value(samples, "smsagg_http_fast_lane_total", lane=lane) or 0.0
            for lane in ("fast", "aiohttp")}


CASES = [
    ("accepted, replayed by its key", request(OK, "Idempotency-Key: k1")),
    ("not JSON", request(b"{nope")),
    ("missing field", request(b'{"to": "+38344123456", "text": "x"}')),
    ("unknown field", request(b'{"to": "+38344123456", "from": "A", "text": "x", "y": 1}')),
    ("bad number", request(b'{"to": "+1", "from": "ACME", "text": "x"}')),
    ("no key", request(OK, key=None)),
    ("wrong key", request(OK, key="nope")),
    ("empty idempotency key", request(OK, "Idempotency-Key:")),
    ("keep-alive said", request(OK, "Connection: keep-alive", "Idempotency-Key: k2")),
]


async def test_the_fast_lane_answers_as_the_aiohttp_route_does(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        fast_reader, fast_writer = await connect(r, aiohttp_lane=False)
        slow_reader, slow_writer = await connect(r, aiohttp_lane=True)
        before = await lanes(r)
        for name, raw in CASES:
            slow_writer.write(raw)
            slow = await read_answer(slow_reader)
            fast_writer.write(raw)
            fast = await read_answer(fast_reader)
            assert fast[0] == slow[0], (name, fast, slow)
            assert fast[2] == slow[2], (name, fast, slow)
            fast_headers = {k: v for k, v in fast[1].items() if k != "date"}
            slow_headers = {k: v for k, v in slow[1].items() if k != "date"}
            assert fast_headers == slow_headers, name
        after = await lanes(r)
        assert after["fast"] - before["fast"] == len(CASES)
        assert after["aiohttp"] == before["aiohttp"]  # the GET's lane was counted before
        for writer in (fast_writer, slow_writer):
            writer.close()


async def test_a_429_is_the_same_on_both_lanes(tmp_path: Path) -> None:
    """After too many wrong keys from one address: 429 with Retry-After, both ways."""
    async with running(tmp_path) as r:
        fast_reader, fast_writer = await connect(r, aiohttp_lane=False)
        slow_reader, slow_writer = await connect(r, aiohttp_lane=True)
        for _ in range(12):
            fast_writer.write(request(OK, key="wrong"))
            if (await read_answer(fast_reader))[0] == 429:
                break
        slow_writer.write(request(OK))
        slow = await read_answer(slow_reader)
        fast_writer.write(request(OK))
        fast = await read_answer(fast_reader)
        assert fast[0] == slow[0] == 429, (fast, slow)
        assert fast[2] == slow[2]
        assert {k for k in fast[1] if k != "date"} == {k for k in slow[1] if k != "date"}
        assert fast[1]["content-type"] == slow[1]["content-type"]
        assert "retry-after" in fast[1]
        for writer in (fast_writer, slow_writer):
            writer.close()


async def test_what_the_fast_lane_does_not_take_aiohttp_answers_in_order(
        tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        # Two requests in one write (pipelined): aiohttp answers both, in order.
        reader, writer = await connect(r, aiohttp_lane=False)
        before = await lanes(r)
        writer.write(request(OK, "Idempotency-Key: p1") + request(b"{nope"))
        assert (await read_answer(reader))[0] == 202
        assert (await read_answer(reader))[0] == 400
        assert (await lanes(r))["aiohttp"] - before["aiohttp"] == 1
        writer.close()
        # Headers and body in two writes; then a chunked body.
        reader, writer = await connect(r, aiohttp_lane=False)
        raw = request(OK)
        writer.write(raw[:20])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(raw[20:])
        assert (await read_answer(reader))[0] == 202
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + API_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n0\r\n\r\n" % (len(OK), OK))
        assert (await read_answer(reader))[0] == 202
        writer.close()


class Inner(asyncio.Protocol):
    """Stands in for aiohttp's protocol: records what reaches it."""

    def __init__(self) -> None:
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data


async def test_a_request_arriving_while_an_answer_is_pending_waits_its_turn() -> None:
    guard = ConnectionGuard(header_timeout=5, body_timeout=5, keepalive_timeout=5,
                            max_connections=10)
    gate = asyncio.Event()

    async def fast_post(peer: str, req: fastpost.FastRequest) -> bytes:
        await gate.wait()
        return b"answer to " + req.body + b";"

    guard.fast_post, guard.max_body = fast_post, 1000
    inner = Inner()
    ours, theirs = socket.socketpair()
    _, conn = await asyncio.get_running_loop().connect_accepted_socket(
        guard.factory(lambda: inner), ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    writer.write(request(b"1"))
    await wait_for(lambda: bool(guard.answering), what="the first answer under way")
    writer.write(request(b"2"))  # while the first is pending: held, then the fast lane's
    await wait_for(lambda: conn.held > 0, what="the second held")  # type: ignore[attr-defined]
    gate.set()
    assert await reader.readexactly(24) == b"answer to 1;answer to 2;"
    gate.clear()
    writer.write(request(b"3"))
    await wait_for(lambda: bool(guard.answering), what="the third answer under way")
    writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")  # not the fast lane's: aiohttp's, after
    await wait_for(lambda: conn.held > 0, what="the GET held")  # type: ignore[attr-defined]
    assert inner.data == b""
    gate.set()
    assert await reader.readexactly(12) == b"answer to 3;"
    await wait_for(lambda: inner.data == b"GET /healthz HTTP/1.1\r\n\r\n", what="handed over")
    writer.close()


def test_parse_takes_only_the_plain_form() -> None:
    plain = request(OK, "Idempotency-Key: k")
    got = fastpost.parse(plain, 1 << 20)
    assert got == fastpost.FastRequest(f"Bearer {API_KEY}", "k", OK)
    refused = {
        "another path": plain.replace(b"/v1/messages", b"/v1/messages/batch", 1),
        "a query": plain.replace(b"/v1/messages", b"/v1/messages?x=1", 1),
        "HTTP/1.0": plain.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        "body short": plain[:-1],
        "body long": plain + b" ",
        "too large": request(OK.ljust(100)),
        "no length": plain.replace(b"Content-Length", b"X-Length"),
        "two lengths": request(OK, f"Content-Length: {len(OK)}"),
        "non-digit length": request(OK).replace(b"Content-Length: ", b"Content-Length: +"),
        "chunked": request(OK, "Transfer-Encoding: chunked"),
        "expect": request(OK, "Expect: 100-continue"),
        "connection close": request(OK, "Connection: close"),
        "obs-fold": request(OK, "X-A: 1", " folded"),
        "not ASCII": request(OK, "X-A: \u00e9"),
        "two keys": request(OK, "Idempotency-Key: a", "Idempotency-Key: b"),
        "two authorizations": request(OK, "Authorization: Bearer x"),
        "control character": request(OK, "X-A: a\x01b"),
        "bare LF": plain.replace(b"Host: x\r\n", b"Host: x\n", 1),
    }
    for name, raw in refused.items():
        assert fastpost.parse(raw, 99) is None, name


def test_parse_and_render_cost_little() -> None:
    """Micro-benchmark of the fast lane's own work per request (best of 3, 2,000 requests):
    about 5 µs here; a loose bound for a loaded machine."""
    raw = request(OK, "Accept: */*", "User-Agent: load", "Content-Type: application/json")
    body = b'{"id": "0123456789abcdef0123456789abcdef", "status": "accepted"}'
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(2000):
            fastpost.parse(raw, 1 << 20)
            fastpost.render(202, body)
        best = min(best, (time.process_time() - started) / 2000)
    assert best < 60e-6, best
