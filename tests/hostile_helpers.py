"""Hostile SMPP clients' tooling: the daemon as a subprocess with its memory read from /proc, raw
PDUs over plain sockets, floods that never read, and the check that a normal client is still
served afterwards."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulator import harness
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, SHOP, daemon, free_port, metric_samples
from tests.smpp_helpers import smpplib_client

HEADER = struct.Struct("!IIII")
ENQUIRE_LINK = 0x00000015
BIND_TRANSCEIVER = 0x00000009
FLOOD_BYTES = 32 * 1024 * 1024
MOBILE = "38344123456"


def enquire_links(count: int, first_seq: int = 1) -> bytes:
    return b"".join(HEADER.pack(16, ENQUIRE_LINK, 0, first_seq + i) for i in range(count))


def bind_pdu(system_id: bytes = b"shop", password: bytes = b"secret", seq: int = 1) -> bytes:
    body = system_id + b"\0" + password + b"\0\0\x34\0\0\0"
    return HEADER.pack(16 + len(body), BIND_TRANSCEIVER, 0, seq) + body


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class Daemon:
    pid: int
    base: str
    smpp_port: int
    log: Path
    proc: asyncio.subprocess.Process
    config: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(path: Path, store: Path, smsc_port: int, smpp_port: int,
                 smpp: dict[str, Any]) -> None:
    accounts = [{**SHOP, "system_id": "shop", "password": "secret", "max_binds": 10},
                {"name": "bank", "api_key": "bank-key", "system_id": "bank",
                 "password": "secret2"}]
    harness.write_config(path, harness.daemon_config(
        smsc_port, {"path": str(store)}, accounts,
        provider={"binds": 1, "max_tps": 500, **harness.QUICK_RECONNECT},
        sections={"smpp": {"listen": f"127.0.0.1:{smpp_port}", **smpp}}))


@asynccontextmanager
async def hostile_daemon(tmp_path: Path, **smpp: Any) -> AsyncIterator[Daemon]:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    port = free_port()
    write_config(config, tmp_path / "smsagg.db", smsc.port, port, smpp)
    log = tmp_path / "daemon.log"
    try:
        async with daemon(config, log) as (proc, base):
            yield Daemon(proc.pid, base, port, log, proc, config)
    finally:
        await smsc.stop(timeout=1.0)


async def scrape(d: Daemon) -> dict[Any, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{d.base}/metrics") as r:
        return metric_samples(await r.text())


def normal_client_submits(port: int) -> str:
    """An independent client (python-smpplib) binds, submits one message, unbinds; its id."""
    import smpplib.consts

    client = smpplib_client(port)
    ids: list[str] = []
    client.set_message_sent_handler(lambda pdu: ids.append(pdu.message_id.decode()))
    client.connect()
    try:
        client.bind_transceiver(system_id="shop", password="secret")
        client.send_message(
            source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
            dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=MOBILE,
            short_message=b"still served", data_coding=0, registered_delivery=False,
        )
        while not ids:
            client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return ids[0]


async def still_served(d: Daemon) -> None:
    """A normal SMPP client still binds and submits; HTTP still takes a message and is ready."""
    pytest.importorskip("smpplib")
    message_id = await asyncio.to_thread(normal_client_submits, d.smpp_port)
    assert len(message_id) == 32
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{d.base}/v1/messages",
                             json={"to": "+" + MOBILE, "from": "ACME", "text": "hi"}) as r:
            assert r.status == 202
        async with http.get(f"{d.base}/readyz") as r:
            assert r.status == 200


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # a small window: the server's answers pile up on its side
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@dataclass
class Flood:
    sent: int = 0
    peak_rss: int = 0
    closed_after: float | None = None  # seconds from connect to the server's close


def flood_without_reading(sock: socket.socket, pid: int, total: int, deadline: float,
                          stop_on_full: bool = False) -> Flood:
    """Send `total` bytes of enquire_link and never read, until the server closes or the
    deadline; the daemon's RSS is sampled meanwhile. `stop_on_full`: return once the
    server has stopped taking bytes for a second (it no longer reads)."""
    started = time.monotonic()
    chunk = enquire_links(4096)  # 64 KiB
    out = Flood(peak_rss=rss_bytes(pid))
    sock.setblocking(False)
    stalled_since: float | None = None
    next_sample = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_sample:
            out.peak_rss = max(out.peak_rss, rss_bytes(pid))
            next_sample = now + 0.05
        if out.sent >= total:
            # Everything sent: wait for the close, still without reading.
            try:
                sock.send(b"")
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    out.closed_after = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except OSError:
                out.closed_after = time.monotonic() - started
                break
            time.sleep(0.05)
            continue
        try:
            pos = out.sent % len(chunk)  # a partial send leaves the rest of a PDU to send
            n = sock.send(chunk[pos: pos + min(len(chunk) - pos, total - out.sent)])
            out.sent += n
            stalled_since = None
        except BlockingIOError:
            if stalled_since is None:
                stalled_since = now
            elif stop_on_full and now - stalled_since > 1.0:
                break
            time.sleep(0.01)
        except OSError:  # reset or broken pipe: the server closed the connection
            out.closed_after = time.monotonic() - started
            break
    out.peak_rss = max(out.peak_rss, rss_bytes(pid))
    return out


def warm_up(port: int) -> None:
    """One short unbound exchange, so that the baseline includes what any first client costs."""
    with connect(port) as sock:
        sock.sendall(enquire_links(100))
        got = b""
        sock.settimeout(DEADLINE)
        while len(got) < 1600:
            data = sock.recv(65536)
            assert data
            got += data


def bound_flood_then_read(port: int, pid: int) -> tuple[int, int, int]:
    """Bind, flood enquire_link without reading until the server stops taking bytes, then
    read everything: (bytes sent, peak RSS during the flood, answers read)."""
    sock = connect(port, rcvbuf=4096)
    try:
        sock.settimeout(DEADLINE)
        sock.sendall(bind_pdu())
        resp = sock.recv(16)
        length, command_id, status, _ = HEADER.unpack(resp)
        assert (command_id, status) == (0x80000009, 0), (hex(command_id), status)
        rest = length - 16
        while rest > 0:
            rest -= len(sock.recv(rest))
        flood = flood_without_reading(sock, pid, FLOOD_BYTES, time.monotonic() + 30,
                                      stop_on_full=True)
        assert flood.closed_after is None, "the bound session was closed"
        sock.setblocking(True)
        sock.settimeout(DEADLINE)
        wanted = flood.sent // 16 * 16  # each whole enquire_link is answered by 16 bytes
        got = 0
        while got < wanted:
            data = sock.recv(1 << 20)
            assert data, f"closed after {got} of {wanted} answer bytes"
            got += len(data)
        return flood.sent, flood.peak_rss, got // 16
    finally:
        sock.close()


def read_pdu(sock: socket.socket) -> tuple[int, int, bytes]:
    """(command_id, command_status, body) of the next PDU."""
    head = b""
    while len(head) < 16:
        chunk = sock.recv(16 - len(head))
        assert chunk, "closed"
        head += chunk
    length, command_id, status, _ = HEADER.unpack(head)
    body = b""
    while len(body) < length - 16:
        chunk = sock.recv(length - 16 - len(body))
        assert chunk, "closed"
        body += chunk
    return command_id, status, body
