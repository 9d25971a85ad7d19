"""The load generator's lean HTTP client: keep-alive reuse, framing, and the errors it names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from simulator.http_client import HttpClient, HttpError
from simulator.load import http_target

Answer = Callable[[bytes], bytes | None]  # request bytes -> raw answer (None: hang)


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server answering each request with answer(request); yields (port, connections)."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                raw = answer(request)
                if raw is None:
                    await asyncio.Event().wait()
                    continue
                if raw == b"":
                    writer.close()
                    return
                writer.write(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()


def _json_answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n".encode() + extra + b"\r\n" + body)


async def test_sequential_requests_reuse_one_connection_and_send_headers() -> None:
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        return _json_answer(202, b'{"id": "m1"}')

    async with raw_server(answer) as (port, connections):
        client = HttpClient("127.0.0.1", port, {"Authorization": "Bearer k"}, timeout=5)
        for _ in range(3):
            assert await client.post("/v1/messages", b'{"to": "+38344123456"}') == (
                202, b'{"id": "m1"}')
        client.close()
    assert len(connections) == 1
    assert seen[0].startswith(b"POST /v1/messages HTTP/1.1\r\n")
    assert b"Authorization: Bearer k\r\n" in seen[0]
    assert b"Content-Length: 22\r\n" in seen[0] and seen[0].endswith(b'{"to": "+38344123456"}')


async def test_an_answer_split_across_reads_is_put_together() -> None:
    body = b'{"results": [' + b", ".join([b'{"status": 202}'] * 2000) + b"]}"
    async with raw_server(lambda _: _json_answer(200, body)) as (port, _):
        client = HttpClient("127.0.0.1", port, {}, timeout=5)
        assert await client.post("/b", b"{}") == (200, body)
        client.close()


@pytest.mark.parametrize(("raw", "code"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "bad_response"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", "bad_response"),
    (b"SMTP ready\r\n\r\n", "bad_response"),
    (b"", "connection_lost"),
])
async def test_unusable_answers_raise_a_named_error(raw: bytes, code: str) -> None:
    async with raw_server(lambda _: raw) as (port, _):
        client = HttpClient("127.0.0.1", port, {}, timeout=5)
        with pytest.raises(HttpError) as err:
            await client.post("/x", b"{}")
        client.close()
    assert err.value.code == code


async def test_a_hung_server_times_out_and_the_next_request_opens_a_new_connection() -> None:
    answers = iter([None, _json_answer(202, b"{}")])
    async with raw_server(lambda _: next(answers)) as (port, connections):
        client = HttpClient("127.0.0.1", port, {}, timeout=0.2)
        with pytest.raises(HttpError) as err:
            await client.post("/x", b"{}")
        assert err.value.code == "timeout"
        assert await client.post("/x", b"{}") == (202, b"{}")
        client.close()
    assert len(connections) == 2


async def test_connection_close_is_honoured() -> None:
    async with raw_server(lambda _: _json_answer(202, b"{}", b"Connection: close\r\n")) as (
            port, connections):
        client = HttpClient("127.0.0.1", port, {}, timeout=5)
        for _ in range(2):
            assert (await client.post("/x", b"{}"))[0] == 202
        client.close()
    assert len(connections) == 2


def test_only_plain_http_urls_are_driven() -> None:
    assert http_target("http://127.0.0.1:8080/base") == ("127.0.0.1", 8080)
    assert http_target("http://[::1]:81") == ("::1", 81)
    for bad in ("https://127.0.0.1:8443", "127.0.0.1:8080", "http://"):
        with pytest.raises(ValueError, match="--url"):
            http_target(bad)
