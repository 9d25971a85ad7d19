"""simulator.callback_server: the load generator's lean receiver of delivery callbacks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from simulator.callback_server import MAX_BODY, MAX_HEAD, CallbackServer

PATH = "/receipts"


@pytest.fixture
async def server() -> AsyncIterator[tuple[CallbackServer, list[dict[str, object]]]]:
    received: list[dict[str, object]] = []
    srv = CallbackServer("127.0.0.1", 0, PATH, received.append)
    await srv.start()
    yield srv, received
    srv.close()


def post(body: bytes, path: str = PATH, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, str]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head.split(" ")[1]), head


async def test_pipelined_and_split_posts_are_answered_in_order_on_one_connection(
        server: tuple[CallbackServer, list[dict[str, object]]]) -> None:
    srv, received = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    two = post(b'{"id": "a", "status": "delivered"}') + post(b'{"id": "b"}')
    writer.write(two)
    assert (await read_answer(reader))[0] == 204
    assert (await read_answer(reader))[0] == 204
    third = post(b'{"id": "c"}')
    for i in range(len(third)):  # one byte at a time
        writer.write(third[i:i + 1])
        await writer.drain()
    assert (await read_answer(reader))[0] == 204
    assert [r["id"] for r in received] == ["a", "b", "c"]
    assert received[0]["status"] == "delivered"
    writer.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (post(b'{"id": "a"}', path="/other"), 404),
    (b"GET /receipts HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (post(b"not json"), 400),
    (post(b'["a list"]'), 400),
])
async def test_bad_requests_get_their_status_and_the_connection_stays_usable(
        server: tuple[CallbackServer, list[dict[str, object]]], request_bytes: bytes,
        status: int) -> None:
    srv, received = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(request_bytes + post(b'{"id": "after"}'))
    assert (await read_answer(reader))[0] == status
    assert (await read_answer(reader))[0] == 204
    assert received == [{"id": "after"}]
    writer.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /receipts HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     411),
    (f"POST /receipts HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), 413),
    (b"POST /receipts HTTP/1.1\r\nX: " + b"y" * (MAX_HEAD + 1), 431),
    (post(b'{"id": "a"}', extra="Connection: close\r\n"), 204),
])
async def test_unframeable_requests_and_connection_close_end_the_connection(
        server: tuple[CallbackServer, list[dict[str, object]]], request_bytes: bytes,
        status: int) -> None:
    srv, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(request_bytes)
    answer, head = await read_answer(reader)
    assert answer == status
    if status != 204:
        assert "Connection: close" in head
    assert await read_to_close(reader) == b""
    writer.close()


async def read_to_close(reader: asyncio.StreamReader) -> bytes:
    """What is left before the server's close; a reset (bytes we sent that it never read) is a
    close too."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


async def test_aiohttp_client_posts_like_the_daemon_and_close_ends_kept_alive_connections(
        server: tuple[CallbackServer, list[dict[str, object]]]) -> None:
    srv, received = server
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.post(f"http://127.0.0.1:{srv.port}{PATH}",
                                    data=json.dumps({"id": str(i)}).encode(),
                                    headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 204
        assert [r["id"] for r in received] == ["0", "1", "2"]
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(post(b'{"id": "kept"}'))
    assert (await read_answer(reader))[0] == 204
    srv.close()
    assert await read_to_close(reader) == b""
    writer.close()
