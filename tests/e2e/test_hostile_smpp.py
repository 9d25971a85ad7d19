"""Hostile SMPP clients against the real daemon (a subprocess, its memory read from /proc):
unbound floods that never read, connections that never bind, too many unbound connections,
and a bound client that stops reading. After each probe a normal client still binds and
submits, and /readyz answers 200."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.smpp.transport import CLOSE_GRACE
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    API_KEY,
    AUTH,
    DEADLINE,
    daemon,
    free_port,
    metric_samples,
    metric_value,
)

HEADER = struct.Struct("!IIII")
ENQUIRE_LINK = 0x00000015
BIND_TRANSCEIVER = 0x00000009
SUBMIT_SM = 0x00000004
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
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in smpp.items())
    path.write_text(f"""
[http]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[smpp]
listen = "127.0.0.1:{smpp_port}"
{extra}
[[accounts]]
name = "shop"
api_key = "{API_KEY}"
system_id = "shop"
password = "secret"
max_binds = 10
[[accounts]]
name = "bank"
api_key = "bank-key"
system_id = "bank"
password = "secret2"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = {smsc_port}
system_id = "smsagg"
password = "pw"
binds = 1
window = 10
max_tps = 500
reconnect_min = 0.05
reconnect_max = 0.5
[[routes]]
prefixes = ["*"]
providers = ["sim"]
""")


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
    import smpplib.client
    import smpplib.consts

    client = smpplib.client.Client("127.0.0.1", port, timeout=DEADLINE,
                                   allow_unknown_opt_params=True)
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


# -- 1: unbound clients (the flood that never reads is in test_fuzz.py, the bound client that
# stops reading in test_chaos.py) --


async def test_enquire_link_does_not_keep_an_unbound_session_open(tmp_path: Path) -> None:
    """A client that reads and answers nothing but keeps enquiring is closed at bind_timeout."""
    bind_timeout = 2.0

    def probe(port: int) -> float:
        started = time.monotonic()
        with connect(port) as sock:
            sock.settimeout(0.2)
            seq = 1
            while time.monotonic() - started < bind_timeout + 10:
                try:
                    sock.sendall(enquire_links(1, seq))
                    seq += 1
                    if sock.recv(4096) == b"":
                        return time.monotonic() - started
                except TimeoutError:
                    continue
                except OSError:
                    return time.monotonic() - started
                time.sleep(0.2)
        raise AssertionError("the unbound session stayed open")

    async with hostile_daemon(tmp_path, bind_timeout=bind_timeout) as d:
        closed_after = await asyncio.to_thread(probe, d.smpp_port)
        assert bind_timeout - 0.3 <= closed_after <= bind_timeout + 2.0, closed_after
        await still_served(d)


# -- 1: caps on connections that are not bound --


def open_unbound(port: int, source: str, n: int) -> list[socket.socket]:
    return [connect(port, source) for _ in range(n)]


def is_open(sock: socket.socket) -> bool:
    """True when the server still answers an enquire_link on this connection."""
    sock.settimeout(DEADLINE)
    try:
        sock.sendall(enquire_links(1, 7))
        return len(sock.recv(16)) == 16
    except OSError:
        return False


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(DEADLINE)
    try:
        return sock.recv(16) == b""
    except OSError:
        return True


async def test_unbound_connections_are_capped_in_total_and_per_address(tmp_path: Path) -> None:
    async with hostile_daemon(tmp_path, max_unbound=5, max_unbound_per_address=3,
                              bind_timeout=60.0) as d:
        port = d.smpp_port
        first = await asyncio.to_thread(open_unbound, port, "127.0.0.1", 3)
        extra = await asyncio.to_thread(open_unbound, port, "127.0.0.1", 4)
        second = await asyncio.to_thread(open_unbound, port, "127.0.0.2", 2)
        third = await asyncio.to_thread(open_unbound, port, "127.0.0.3", 1)
        try:
            assert all([await asyncio.to_thread(is_open, s) for s in first + second])
            assert all([await asyncio.to_thread(closed_by_server, s) for s in extra + third])
            snap = await scrape(d)
            assert metric_value(snap, "smsagg_smpp_connections_refused_total",
                                reason="unbound_per_address") == 4
            assert metric_value(snap, "smsagg_smpp_connections_refused_total",
                                reason="unbound_total") == 1
            assert metric_value(snap, "smsagg_buffer_depth", buffer="smpp_unbound") == 5
            assert metric_value(snap, "smsagg_buffer_bound", buffer="smpp_unbound") == 5
        finally:
            for s in first + extra + second + third:
                s.close()
        # Closing them frees their places (once the server has seen the closes): a normal
        # client binds again.
        deadline = time.monotonic() + 10
        while metric_value(await scrape(d), "smsagg_buffer_depth", buffer="smpp_unbound"):
            assert time.monotonic() < deadline, "closed connections still counted"
            await asyncio.sleep(0.05)
        await still_served(d)
    # The refusals are logged once per source address and window (with a count of the lines
    # held back), and so are the closes of the refused connections.
    lines = [json.loads(x) for x in d.log_text().splitlines() if "smpp_connection_refused" in x]
    assert {x["peer"] for x in lines} == {"127.0.0.1", "127.0.0.3"}
    assert len(lines) == 2, lines
    closes = [x for x in d.log_text().splitlines() if "smpp_session_closed" in x]
    assert len(closes) <= 3 + 1, closes  # one per address, and the normal client's


# -- 1: a bound client that stops reading --


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


# -- a peer that does not read: our close does not wait for it forever --


async def test_close_of_a_connection_whose_peer_does_not_read_is_aborted() -> None:
    """SmppConnection.close() with bytes the peer never takes: aborted after CLOSE_GRACE."""
    from aggregator.smpp.session import Role, SmppSession
    from aggregator.smpp.transport import SmppConnection, start_server

    conns: list[SmppConnection] = []

    def factory() -> SmppConnection:
        loop = asyncio.get_running_loop()
        conn = SmppConnection(SmppSession(Role.SERVER, now=loop.time(), bind_timeout=60))
        conns.append(conn)
        return conn

    server = await start_server("127.0.0.1", 0, factory)
    port = server.sockets[0].getsockname()[1]
    sock = await asyncio.to_thread(connect, port, "127.0.0.1", 4096)
    try:
        sock.setblocking(False)
        chunk = enquire_links(4096)
        deadline = time.monotonic() + DEADLINE
        while not conns or conns[0].writable:  # until the server's write side is paused
            assert time.monotonic() < deadline
            with suppress(BlockingIOError):
                sock.send(chunk)
            await asyncio.sleep(0.01)
        started = time.monotonic()
        conns[0].close()
        await asyncio.wait_for(conns[0].closed, CLOSE_GRACE + DEADLINE)
        assert time.monotonic() - started < CLOSE_GRACE + 2.0
    finally:
        sock.close()
        server.close()
        await server.wait_closed()


@pytest.fixture(autouse=True)
def _linux_only() -> None:
    if not os.path.exists("/proc/self/status"):
        pytest.skip("memory is read from /proc")


# -- 12: bind credentials longer than SMPP allows --


async def test_overlong_bind_password_or_system_id_gets_its_own_status(tmp_path: Path) -> None:
    """A 9-character password is a wrong password (ESME_RINVPASWD), a 16-character system_id a
    wrong system_id (ESME_RINVSYSID): not a server error (ESME_RSYSERR)."""
    from tests.helpers import running

    async def bind_status(port: int, system_id: bytes, password: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(bind_pdu(system_id, password))
            _, command_id, status, _ = HEADER.unpack(await reader.readexactly(16))
            assert command_id == 0x80000009
            return int(status)
        finally:
            writer.close()

    async with running(tmp_path, smpp={}, shop={"system_id": "shop", "password": "secret"},
                       prefixes=("+383",)) as r:
        assert r.app.smpp is not None
        port = r.app.smpp.port
        assert await bind_status(port, b"shop", b"secret123") == 0x0E
        assert await bind_status(port, b"shop567890123456", b"secret") == 0x0F
        assert await bind_status(port, b"shop", b"wrong") == 0x0E
