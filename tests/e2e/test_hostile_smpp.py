"""Hostile SMPP clients against the real daemon (a subprocess, its memory read from /proc):
unbound floods that never read, connections that never bind, too many unbound connections,
and a bound client that stops reading. After each probe a normal client still binds and
submits, and /readyz answers 200."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from contextlib import suppress
from pathlib import Path

import pytest

from aggregator.smpp.transport import CLOSE_GRACE
from tests.helpers import DEADLINE, metric_value
from tests.hostile_helpers import (
    HEADER,
    bind_pdu,
    connect,
    enquire_links,
    hostile_daemon,
    scrape,
    still_served,
)

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
