"""SIGTERM while an upstream ESME has submit_sm in flight (issue 16, items 2 and 4): the [smpp]
server stops taking submit_sm (those arriving now stay unanswered), answers every one being
accepted once committed, waits for the answers to the receipts it sent and records them, then
unbinds. A Kannel-like client that
resends only what was not answered OK then causes no duplicate and loses nothing, and no
receipt it acknowledged comes again after the restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections import Counter, deque
from pathlib import Path

import pytest

from simulator.handsets import Handset, HandsetBook
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import DEADLINE, daemon, free_port
from tests.kannel_esme import (
    BIND_TRANSMITTER,
    ESME_RTHROTTLED,
    SUBMIT_SM,
    Answer,
    KannelEsme,
    submit_body,
    udh8,
)
from tests.kannel_helpers import WINDOW, number, write_config

# The figure is for 2,000 messages; SMSAGG_RESTART_MESSAGES changes it.
MESSAGES = int(os.environ.get("SMSAGG_RESTART_MESSAGES", "2000"))


class Flow:
    """One Kannel-like client sending MESSAGES with WINDOW submit_sm in flight, reconnecting
    after the daemon goes away, and resending only what was not answered ESME_ROK."""

    def __init__(self, port: int) -> None:
        self.esme = KannelEsme("127.0.0.1", port)
        self.todo: deque[int] = deque(range(MESSAGES))
        self.accepted: dict[int, str] = {}  # message -> smsagg id
        self.accepted_twice = 0
        self.throttled = 0
        self.unanswered = 0
        self.connections = 0

    async def run(self, deadline: float) -> None:
        while len(self.accepted) < MESSAGES:
            assert time.monotonic() < deadline, f"{len(self.accepted)} of {MESSAGES} accepted"
            try:
                await self.esme.connect()
            except (OSError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.05)  # the daemon is restarting
                continue
            self.connections += 1
            await asyncio.gather(*(self._worker() for _ in range(WINDOW)))
            if self.esme.closed.is_set():
                await self.esme.close()
        # All accepted: the session stays bound for the receipts.

    async def _worker(self) -> None:
        esme = self.esme
        while self.todo and not esme.closed.is_set():
            i = self.todo.popleft()
            try:
                answer = await esme.submit(submit_body(number(i), f"m{i}".encode(),
                                                       registered_delivery=0x11))
            except ConnectionError:
                self.unanswered += 1
                self.todo.append(i)
                return
            if answer.status == 0:
                if i in self.accepted:
                    self.accepted_twice += 1
                self.accepted[i] = answer.message_id
            else:
                # ESME_RINVBNDSTS: it arrived after the server sent its unbind
                assert answer.status in (ESME_RTHROTTLED, 0x04), hex(answer.status)
                self.throttled += 1
                self.todo.append(i)
                await asyncio.sleep(0.1)  # Kannel's throttling-wait, shortened


async def test_sigterm_with_a_window_of_50_in_flight_duplicates_nothing_loses_nothing(
        tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile(latency=0.01))
    await smsc.start()
    config, log = tmp_path / "smsagg.toml", tmp_path / "daemon.log"
    smpp_port = free_port()
    write_config(config, tmp_path / "smsagg.db", smsc.port, smpp_port)
    flow = Flow(smpp_port)
    started = time.monotonic()
    try:
        async with daemon(config, log) as (proc, _):
            client = asyncio.create_task(flow.run(time.monotonic() + 240))
            while len(flow.accepted) < MESSAGES // 3:
                assert not client.done(), client
                await asyncio.sleep(0.005)
            accepted_at_sigterm = len(flow.accepted)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
        assert len(flow.accepted) < MESSAGES, "the flow ended before the SIGTERM"
        async with daemon(config, log) as (proc, _):
            await asyncio.wait_for(client, 240)
            # Every message reaches the SMSC and its receipt comes back to the client.
            deadline = time.monotonic() + 120
            while len({r for _, r, _ in flow.esme.delivers}) < MESSAGES:
                assert time.monotonic() < deadline, (
                    f"{len({r for _, r, _ in flow.esme.delivers})} of {MESSAGES} receipts")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a receipt sent twice would come now
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    finally:
        await smsc.stop()
    seen = Counter(s.destination for s in smsc.received)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    lost = sum(1 for i in range(MESSAGES) if seen[number(i)] == 0)
    receipts = Counter(r for _, r, _ in flow.esme.delivers)
    receipts_again = sum(n - 1 for n in receipts.values() if n > 1)
    drains = [json.loads(line) for line in log.read_text().splitlines()
              if '"smpp_draining"' in line]
    print(f"\nSIGTERM restart, {MESSAGES} messages, window {WINDOW}: accepted "
          f"{len(flow.accepted)} (at the SIGTERM {accepted_at_sigterm}), at the SMSC "
          f"{len(seen)} distinct / {len(smsc.received)} submits, duplicated {duplicated}, "
          f"lost {lost}; refused (ESME_RTHROTTLED or, once unbinding, ESME_RINVBNDSTS) "
          f"{flow.throttled}, unanswered at the close "
          f"{flow.unanswered}, connections {flow.connections}, receipts {len(receipts)} "
          f"(sent again {receipts_again}); drain {drains[0] if drains else None}; "
          f"{time.monotonic() - started:.1f} s")
    # The SIGTERM came mid-flow: submit_sm were being accepted or arrived while stopping.
    assert drains and drains[0]["submits_in_flight"] + flow.unanswered > 0
    assert flow.accepted_twice == 0
    assert len(set(flow.accepted.values())) == MESSAGES
    assert duplicated == 0 and lost == 0
    assert receipts_again == 0, f"{receipts_again} acknowledged receipts sent again"
    assert set(receipts) == set(flow.accepted.values())


RECEIPTS = 300


def outbox(store: Path) -> int:
    """Receipts waiting in the daemon's outbox (read-only look at its database)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM smpp_receipts").fetchone()[0])


@pytest.mark.parametrize("kind", ["receipt", "mo"])
async def test_receipts_and_mo_acknowledged_before_a_sigterm_are_not_sent_again(
        tmp_path: Path, kind: str) -> None:
    # kind "mo": every handset replies, no receipt is asked; the replies take the same outbox.
    # (A prefix entry: the SMSC ignores a book with only a default, being empty.)
    handsets = HandsetBook({"383": Handset(reply="hello there")}) if kind == "mo" else None
    smsc = Smsc(SmscProfile(handsets=handsets))
    await smsc.start()
    config, log, store = tmp_path / "smsagg.toml", tmp_path / "daemon.log", tmp_path / "s.db"
    smpp_port = free_port()
    write_config(config, store, smsc.port, smpp_port)
    # A gateway that answers deliver_sm 0.5 s late (after storing the receipt), and unbind at
    # once: acks are still on their way when the daemon stops.
    receiver = KannelEsme("127.0.0.1", smpp_port, ack_delay=0.5)

    async def keep_bound() -> None:
        while True:
            try:
                await receiver.connect()
            except (OSError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            await receiver.closed.wait()

    try:
        async with daemon(config, log) as (proc, _):
            sender = KannelEsme("127.0.0.1", smpp_port, bind_command=BIND_TRANSMITTER)
            await sender.connect()
            window = asyncio.Semaphore(WINDOW)

            async def one(i: int) -> Answer:
                async with window:
                    return await sender.submit(submit_body(
                        number(i), b"r", registered_delivery=1 if kind == "receipt" else 0))

            answers = await asyncio.gather(*(one(i) for i in range(RECEIPTS)))
            assert all(a.status == 0 for a in answers)
            await sender.close()
            deadline = time.monotonic() + 60
            while outbox(store) < RECEIPTS:  # every receipt waits for a receiver
                assert time.monotonic() < deadline, f"{outbox(store)} receipts in the outbox"
                await asyncio.sleep(0.05)
            binding = asyncio.create_task(keep_bound())
            while len(receiver.delivers) < 100:
                assert not binding.done(), binding
                await asyncio.sleep(0.002)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
        received_before = len(receiver.delivers)
        async with daemon(config, log) as (proc, _):
            deadline = time.monotonic() + 60
            while len({r for _, r, _ in receiver.delivers}) < RECEIPTS:
                assert time.monotonic() < deadline, f"{len(receiver.delivers)} receipts"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a receipt sent twice would come now
            binding.cancel()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    finally:
        await smsc.stop()
    drains = [json.loads(line) for line in log.read_text().splitlines()
              if '"smpp_draining"' in line]
    counts = Counter(r for _, r, _ in receiver.delivers)
    again = sum(n - 1 for n in counts.values() if n > 1)
    print(f"\n{kind} {RECEIPTS}: before the SIGTERM {received_before}, sent again {again}; "
          f"drain {drains[0] if drains else None}")
    if kind == "receipt":
        assert set(counts) == {a.message_id for a in answers}
    else:  # an MO's key is the handset's number
        assert set(counts) == {number(i) for i in range(RECEIPTS)}
    assert again == 0, f"{again} receipts acknowledged before the stop were sent again"
    assert drains[0]["receipts_in_flight"] > 0, "no receipt was in flight at the SIGTERM"


async def test_parts_held_at_a_sigterm_are_left_unanswered_and_sent_again_after_the_restart(
        tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config, smpp_port = tmp_path / "smsagg.toml", free_port()
    write_config(config, tmp_path / "s.db", smsc.port, smpp_port)
    parts = [udh8(7, 2, 1) + b"first half, ", udh8(7, 2, 2) + b"second half"]
    bodies = [submit_body(number(1), p, esm_class=0x40, registered_delivery=0x11 if i == 0
                          else 0) for i, p in enumerate(parts)]
    try:
        async with daemon(config) as (proc, _):
            client = KannelEsme("127.0.0.1", smpp_port)
            await client.connect()
            first = client.request(SUBMIT_SM, bodies[0])  # held, waiting for part 2
            await asyncio.sleep(0)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionError):  # nothing stored: the client keeps it
                await asyncio.wait_for(first, DEADLINE)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
            await client.close()
        async with daemon(config) as (proc, _):
            client = KannelEsme("127.0.0.1", smpp_port)
            await client.connect()
            answers = await asyncio.gather(*(client.submit(b) for b in bodies))
            assert [a.status for a in answers] == [0, 0]
            await smsc.wait_for_submits(1, DEADLINE)
            await client.close()
    finally:
        await smsc.stop()
    assert [s.destination for s in smsc.received] == [number(1)]
