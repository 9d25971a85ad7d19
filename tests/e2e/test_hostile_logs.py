"""What a hostile peer can make the daemon write (issue 17 items 9 and 10): never the secrets it
presented, and not one line per attempt. The daemon runs as a subprocess; its whole output
(stdout and stderr) is what is checked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from aggregator.loglimit import LogLimiter
from tests.helpers import DEADLINE, metric_value
from tests.hostile_helpers import HEADER, bind_pdu, connect, hostile_daemon, read_pdu, scrape

SUBMIT_SM = 0x00000004


def submit_pdu(seq: int) -> bytes:
    text = b"still served"
    body = (b"\0" + b"\x05\x00" + b"ACME\0" + b"\x01\x01" + b"38344123456\0"
            + b"\x00\x00\x00" + b"\0" + b"\0" + b"\x00\x00\x00\x00" + bytes([len(text)]) + text)
    return HEADER.pack(16 + len(body), SUBMIT_SM, 0, seq) + body


def bind_and_submit(port: int, source: str) -> str:
    """A normal ESME from `source`: binds, submits one message; the message id."""
    with connect(port, source) as sock:
        sock.settimeout(DEADLINE)
        sock.sendall(bind_pdu())
        command_id, status, _ = read_pdu(sock)
        assert (command_id, status) == (0x80000009, 0), (hex(command_id), status)
        sock.sendall(submit_pdu(2))
        while True:
            command_id, status, body = read_pdu(sock)
            if command_id == 0x80000004:
                assert status == 0, status
                return body.rstrip(b"\0").decode()


def refused_binds(port: int, count: int, system_id: bytes, password: bytes) -> list[int]:
    """`count` binds with wrong credentials, one after the other on one connection (a
    refused bind leaves it open); their statuses."""
    statuses = []
    with connect(port) as sock:
        sock.settimeout(DEADLINE)
        for seq in range(1, count + 1):
            sock.sendall(bind_pdu(system_id, password, seq))
            statuses.append(read_pdu(sock)[1])
    return statuses


async def http_raw(base: str, head: bytes) -> int:
    host, _, port = base.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" + head
                     + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1])


# -- item 9: secrets presented by a peer never reach the log --


async def test_presented_secrets_are_not_logged(tmp_path: Path) -> None:
    secrets = [b"SysSECRET1", b"pwSECR2", b"pwSECR3", b"KEY-SECRET-4", b"SECRET5", b"SECRET6"]
    async with hostile_daemon(tmp_path) as d:
        port = d.smpp_port
        # Refused binds: an unknown system_id, and a known one with a wrong password.
        assert await asyncio.to_thread(refused_binds, port, 1, secrets[0], secrets[1]) == [0x0F]
        assert await asyncio.to_thread(refused_binds, port, 1, b"shop", secrets[2]) == [0x0E]
        # HTTP: an over-long Authorization header (aiohttp's parser refuses it and used to
        # quote it on stderr), a key that is not UTF-8, and a wrong key.
        assert await http_raw(d.base, b"Authorization: Bearer " + secrets[3] + b"K" * 9000
                              + b"\r\n") == 400
        assert await http_raw(d.base, b"Authorization: Bearer " + secrets[4] + b"\xff\r\n") == 401
        assert await http_raw(d.base, b"Authorization: Bearer " + secrets[5] + b"\r\n") == 401
        # A header name so long that the parser quotes the value after it.
        assert await http_raw(d.base, b"X-" + b"a" * 9000 + b": Bearer " + secrets[3]
                              + b"\r\n") == 400
    output = d.log.read_bytes()
    for secret in secrets:
        assert secret not in output, secret
    assert b"Got more than" not in output and b"Traceback" not in output
    lines = [json.loads(x) for x in output.splitlines() if x.startswith(b"{")]
    library = [x for x in lines if x["event"] == "library_log"]
    assert library and all(x["error"] == "LineTooLong" for x in library), library
    rejected = [x for x in lines if x["event"] == "smpp_bind_rejected"]
    assert rejected and all("system_id" not in x for x in rejected)


# -- item 10: refused binds do not flood the log --


async def test_a_thousand_refused_binds_write_one_line(tmp_path: Path) -> None:
    async with hostile_daemon(tmp_path) as d:
        statuses: list[int] = []
        for _ in range(4):  # also after the address is blocked (10 failures within 60 s)
            statuses += await asyncio.to_thread(refused_binds, d.smpp_port, 250, b"shop",
                                                b"wrong")
        assert statuses[:10] == [0x0E] * 10
        assert set(statuses[10:]) == {0x0D}  # blocked: ESME_RBINDFAIL without a check
        snap = await scrape(d)
        held = metric_value(snap, "smsagg_log_lines_suppressed_total",
                            event="smpp_bind_rejected")
        assert held is not None and held >= 990, held
        # Another client, from another address, still binds and submits.
        message_id = await asyncio.to_thread(bind_and_submit, d.smpp_port, "127.0.0.2")
        assert len(message_id) == 32
        async with aiohttp.ClientSession() as http, http.get(f"{d.base}/readyz") as r:
            assert r.status == 200
    lines = [json.loads(x) for x in d.log_text().splitlines() if x.startswith("{")]
    rejected = [x for x in lines if x["event"] == "smpp_bind_rejected"]
    # One per source address and 10 s window; the test takes less than two windows.
    assert 1 <= len(rejected) <= 2, rejected
    assert len([x for x in lines if x["event"] == "smpp_logins_blocked"]) == 1
    closes = [x for x in lines if x["event"] == "smpp_session_closed"]
    assert len(closes) <= 2 + 1, closes  # the refused ones (limited) and the normal client


def test_log_limiter_writes_one_line_per_key_and_window_with_a_count() -> None:
    now = [0.0]
    limiter = LogLimiter(10.0, max_keys=2, clock=lambda: now[0])
    assert limiter.allow("a") == 0
    assert [limiter.allow("a") for _ in range(5)] == [None] * 5
    assert limiter.allow("b") == 0  # another source has its own window
    now[0] = 10.0
    assert limiter.allow("a") == 5  # the next line says how many were held back
    assert limiter.allow("a") is None
    limiter.allow("c")  # a third key: the least recently written ("b") is forgotten
    assert limiter.allow("b") == 0
