"""Reassembly under attack (issue 17 item 4): parts held for reassembly are bounded in bytes, in
total and per account, so one account's flood of never-completed parts neither grows the
daemon's memory without bound nor blocks another account's long messages; the memory comes
back when the parts expire."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

from aggregator.ingress.reassembly import Reassembler, ReassemblyFull
from tests.helpers import DEADLINE, metric_value
from tests.hostile_helpers import (
    HEADER,
    bind_pdu,
    connect,
    hostile_daemon,
    read_pdu,
    rss_bytes,
    scrape,
)

SUBMIT_SM = 0x00000004
PART_BYTES = 60 * 1024
PARTS = 3000
ESME_RMSGQFUL = 0x14
ESME_RSUBMITFAIL = 0x45
ESME_RTHROTTLED = 0x58


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("!HH", tag, len(value)) + value


def sar_submit(seq: int, ref: int, total: int, part: int, payload: bytes) -> bytes:
    body = (b"\0" + b"\x05\x00" + b"ACME\0" + b"\x01\x01" + b"38344123456\0"
            + b"\x00\x00\x00" + b"\0" + b"\0" + b"\x00\x00\x00\x00" + b"\x00"  # sm_length 0
            + tlv(0x020C, struct.pack("!H", ref)) + tlv(0x020E, bytes([total]))
            + tlv(0x020F, bytes([part])) + tlv(0x0424, payload))
    return HEADER.pack(16 + len(body), SUBMIT_SM, 0, seq) + body


def bound(port: int, system_id: bytes, password: bytes) -> socket.socket:
    sock = connect(port)
    sock.settimeout(DEADLINE)
    sock.sendall(bind_pdu(system_id, password))
    command_id, status, _ = read_pdu(sock)
    assert (command_id, status) == (0x80000009, 0), (hex(command_id), status)
    return sock


class Responses:
    """Reads submit_sm_resp statuses on a socket in a thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.statuses: Counter[int] = Counter()
        self.ids: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(60)
        try:
            while True:
                command_id, status, body = read_pdu(self.sock)
                if command_id == 0x80000004:
                    self.statuses[status] += 1
                    if status == 0:
                        self.ids.append(body.rstrip(b"\0").decode())
        except (AssertionError, OSError):
            return

    def wait(self, count: int, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while sum(self.statuses.values()) < count:
            assert time.monotonic() < deadline, (count, self.statuses)
            time.sleep(0.02)


def flood_parts(port: int, pid: int) -> tuple[Responses, socket.socket, int]:
    """Account shop sends PARTS first parts of 2-part messages, PART_BYTES each (never the
    second part); the daemon's peak RSS meanwhile."""
    sock = bound(port, b"shop", b"secret")
    responses = Responses(sock)
    payload = b"x" * PART_BYTES
    peak = rss_bytes(pid)
    for i in range(PARTS):
        sock.sendall(sar_submit(i + 2, i, 2, 1, payload))
        if i % 50 == 0:
            peak = max(peak, rss_bytes(pid))
    deadline = time.monotonic() + DEADLINE
    # Every part is either held (no answer yet) or refused; wait until the refusals are in.
    last = -1
    while sum(responses.statuses.values()) != last and time.monotonic() < deadline:
        last = sum(responses.statuses.values())
        peak = max(peak, rss_bytes(pid))
        time.sleep(0.5)
    return responses, sock, max(peak, rss_bytes(pid))


def other_account_long_message(port: int) -> list[str]:
    """Account bank sends a 2-part message: both parts answered OK, with one id."""
    with bound(port, b"bank", b"secret2") as sock:
        payload = b"y" * 150
        sock.sendall(sar_submit(2, 7, 2, 1, payload) + sar_submit(3, 7, 2, 2, payload))
        ids = []
        while len(ids) < 2:
            command_id, status, body = read_pdu(sock)
            if command_id == 0x80000004:
                assert status == 0, hex(status)
                ids.append(body.rstrip(b"\0").decode())
        return ids


async def test_parts_flood_is_bounded_per_account_and_returned_after_expiry(
        tmp_path: Path) -> None:
    timeout = 8.0
    async with hostile_daemon(tmp_path, reassembly_timeout=timeout) as d:
        with bound(d.smpp_port, b"bank", b"secret2"):  # warm the bind path
            pass
        before = rss_bytes(d.pid)
        started = time.monotonic()
        responses, sock, peak = await asyncio.to_thread(flood_parts, d.smpp_port, d.pid)
        try:
            growth = peak - before
            snap = await scrape(d)
            held = metric_value(snap, "smsagg_buffer_depth", buffer="reassembly_bytes")
            refused = responses.statuses[ESME_RMSGQFUL] + responses.statuses[ESME_RTHROTTLED]
            print(f"{PARTS} SAR parts of {PART_BYTES} bytes: daemon RSS"
                  f" {before / 2**20:.1f} MiB -> peak {peak / 2**20:.1f} MiB"
                  f" (+{growth / 2**20:.1f} MiB); {held} bytes held, {refused} refused")
            assert held is not None and 0 < held <= 16 * 2**20
            assert responses.statuses[ESME_RMSGQFUL] > 0
            assert growth < 64 * 2**20, growth  # before: +362 MB
            # Another account's long message still goes through meanwhile.
            assert time.monotonic() - started < timeout, "too slow to test before expiry"
            ids = await asyncio.to_thread(other_account_long_message, d.smpp_port)
            assert len(set(ids)) == 1
            # The held parts expire: refused, and their memory is given back.
            unanswered = PARTS - sum(responses.statuses.values())
            await asyncio.to_thread(responses.wait, PARTS, timeout + DEADLINE)
            assert responses.statuses[ESME_RSUBMITFAIL] == unanswered
            snap = await scrape(d)
            assert metric_value(snap, "smsagg_buffer_depth", buffer="reassembly_bytes") == 0
            after = rss_bytes(d.pid)
            print(f"after expiry: RSS {after / 2**20:.1f} MiB"
                  f" (+{(after - before) / 2**20:.1f} MiB over the start)")
            assert after - before < 8 * 2**20, after - before  # before: 423 MB kept
        finally:
            sock.close()


def test_reassembler_bounds_bytes_per_account_and_in_total() -> None:
    r: Reassembler[int] = Reassembler(10.0, 1000, max_bytes=300, max_account_bytes=200)
    assert r.add(("a", 1), 2, 1, b"x" * 100, 1, 0.0, "a") is None
    assert r.add(("a", 2), 2, 1, b"x" * 100, 2, 0.0, "a") is None
    try:
        r.add(("a", 3), 2, 1, b"x", 3, 0.0, "a")
        raise AssertionError("account a is over its bytes")
    except ReassemblyFull:
        pass
    # Another account still has room, up to the total.
    whole = r.add(("b", 1), 2, 1, b"y" * 50, 4, 0.0, "b")
    assert whole is None
    whole = r.add(("b", 1), 2, 2, b"y" * 50, 5, 0.0, "b")
    assert whole is not None and whole.body == b"y" * 100
    assert r.account_bytes("b") == 0 and r.held_bytes == 200
    assert r.add(("b", 2), 2, 1, b"y" * 100, 6, 0.0, "b") is None
    try:
        r.add(("c", 1), 2, 1, b"z", 7, 0.0, "c")
        raise AssertionError("the total is reached")
    except ReassemblyFull:
        pass
    assert sorted(map(sorted, r.expire(10.0))) == [[1], [2], [6]]
    assert r.held_bytes == 0 and r.held == 0 and r.account_bytes("a") == 0
