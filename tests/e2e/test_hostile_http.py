"""Hostile and careless HTTP clients (issue 17): header bytes that are not UTF-8, batch contract
gaps, and the default body limit against the largest batch. The attacker and the normal client
are separate clients (the normal one from another source address)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.config import HttpConfig
from tests.helpers import API_KEY, AUTH, Running, metric_samples, metric_value, running

MOBILE = "+38344123456"
OK = {"to": MOBILE, "from": "ACME", "text": "hello"}


@pytest.fixture
async def r(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(tmp_path, prefixes=("+383",)) as run:
        yield run


async def raw_request(run: Running, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request written byte for byte; the status and the body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", run.app.http_port)
    try:
        writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def post_head(auth: bytes, extra: bytes = b"", path: bytes = b"/v1/messages") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: " + auth + b"\r\n" + extra)


async def normal_client_still_served(run: Running) -> None:
    """Another client (source 127.0.0.2) still gets 202 and /readyz 200."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector, headers=AUTH) as http:
        async with http.post(f"{run.base}/v1/messages", json=OK) as resp:
            assert resp.status == 202
        async with http.get(f"{run.base}/readyz") as resp:
            assert resp.status == 200


async def scrape(run: Running) -> dict[Any, float]:
    async with run.http.get(f"{run.base}/metrics") as resp:
        return metric_samples(await resp.text())


# -- item 8: bytes that are not UTF-8 in headers --


async def test_non_utf8_authorization_is_401_and_a_failed_login(r: Running) -> None:
    body = json.dumps(OK).encode()
    before = metric_value(await scrape(r), "smsagg_auth_failures_total", interface="http") or 0
    for _ in range(10):
        status, answer = await raw_request(r, post_head(b"Bearer \xff\xfe\x80key"), body)
        assert status == 401, answer
        assert json.loads(answer)["error"]["code"] == "unauthorized"
    # They counted as failed logins: the address now cools down.
    status, answer = await raw_request(r, post_head(b"Bearer \xc3\x28"), body)
    assert status == 429, answer
    snap = await scrape(r)
    assert metric_value(snap, "smsagg_auth_failures_total", interface="http") == before + 11
    await normal_client_still_served(r)


async def test_non_utf8_authorization_on_every_endpoint_is_401(r: Running) -> None:
    for method, path in ((b"GET", b"/v1/messages/x"), (b"GET", b"/v1/optouts"),
                         (b"POST", b"/v1/messages/batch")):
        head = (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer \xed\xa0\x80\r\n")
        status, answer = await raw_request(r, head, b"{}" if method == b"POST" else b"")
        assert status == 401, (path, answer)


async def test_non_utf8_idempotency_key_is_400(r: Running) -> None:
    auth = f"Bearer {API_KEY}".encode()
    status, answer = await raw_request(
        r, post_head(auth, b"Idempotency-Key: k\xff\xfe\r\n"), json.dumps(OK).encode())
    assert status == 400, answer
    error = json.loads(answer)["error"]
    assert error["code"] == "bad_request" and "Idempotency-Key" in error["message"]
    await normal_client_still_served(r)


# -- item 12: batch contract --


async def test_batch_with_idempotency_key_is_refused(r: Running) -> None:
    async with r.http.post(f"{r.base}/v1/messages/batch", json={"messages": [OK]},
                           headers={**AUTH, "Idempotency-Key": "k1"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "idempotency_key_unsupported"
    async with r.http.post(f"{r.base}/v1/messages/batch", json={"messages": [OK]},
                           headers=AUTH) as resp:
        assert resp.status == 200
        assert (await resp.json())["results"][0]["status"] == 202


async def test_batch_with_unknown_top_level_field_is_refused(r: Running) -> None:
    for body in ({"messages": [OK], "callback_url": "https://example.com/cb"},
                 {"messages": [OK], "mesages": []}):
        async with r.http.post(f"{r.base}/v1/messages/batch", json=body, headers=AUTH) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["code"] == "bad_request"
            assert "unknown field" in error["message"], error


def longest_batch(text: str) -> list[dict[str, Any]]:
    return [{"to": MOBILE, "from": "ACME", "text": text, "reference": f"r{i}"}
            for i in range(1000)]


async def test_default_body_limit_fits_the_largest_batch(r: Running) -> None:
    """1,000 messages of the longest text (10 segments: 1,530 GSM-7 characters, or 670 UCS-2
    characters even as JSON \\u escapes) fit [http] max_body_bytes' default."""
    default = HttpConfig().max_body_bytes
    assert r.app.config.http.max_body_bytes == default
    ucs2 = json.dumps({"messages": longest_batch("ж" * 670)}).encode()  # ensure_ascii: \u0436
    assert len(ucs2) <= default, len(ucs2)
    gsm = longest_batch("x" * 1530)
    async with r.http.post(f"{r.base}/v1/messages/batch", json={"messages": gsm},
                           headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        results = (await resp.json())["results"]
    assert len(results) == 1000
    assert {x["status"] for x in results} == {202}
    assert {x["segments"] for x in results} == {10}
