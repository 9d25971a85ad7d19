"""A real Kannel (bearerbox + smsbox) bound to smsagg's [smpp] server, where the machine has it
(skipped otherwise): long messages get their final DLR, and a SIGTERM of smsagg with Kannel's
window of 50 in flight duplicates nothing and loses nothing (issue 16)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from simulator.smsc import Smsc, SmscProfile
from tests.helpers import DEADLINE, daemon, free_port, serve_app
from tests.kannel_helpers import WINDOW, number, write_config

BEARERBOX = shutil.which("bearerbox") or shutil.which("/usr/sbin/bearerbox")
SMSBOX = shutil.which("smsbox") or shutil.which("/usr/sbin/smsbox")
pytestmark = pytest.mark.skipif(BEARERBOX is None or SMSBOX is None,
                                reason="Kannel (bearerbox, smsbox) is not installed")
MESSAGES = int(os.environ.get("SMSAGG_KANNEL_MESSAGES", "2000"))


@dataclass
class Kannel:
    sendsms: str  # base URL of smsbox's sendsms interface
    dlrs: list[tuple[str, int]] = field(default_factory=list)  # (our reference, DLR type)
    dlr_url: str = ""


def kannel_config(path: Path, smpp_port: int, ports: dict[str, int]) -> None:
    """The smsc group documented in docs/incoming/h1-smpp-server.md."""
    path.write_text(f"""
group = core
admin-port = {ports["admin"]}
admin-password = adminpw
smsbox-port = {ports["smsbox"]}
log-file = "{path.parent}/bearerbox.log"
log-level = 1
box-allow-ip = "127.0.0.1"
dlr-storage = internal

group = smsc
smsc = smpp
smsc-id = smsagg
host = 127.0.0.1
port = {smpp_port}
transceiver-mode = true
smsc-username = "shop"
smsc-password = "secret"
system-type = ""
max-pending-submits = {WINDOW}
enquire-link-interval = 30
reconnect-delay = 1
source-addr-ton = 5
source-addr-npi = 0
source-addr-autodetect = true
dest-addr-ton = 1
dest-addr-npi = 1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {ports["smsbox"]}
sendsms-port = {ports["sendsms"]}
log-file = "{path.parent}/smsbox.log"
log-level = 1

group = sendsms-user
username = "u"
password = "p"
max-messages = 5
concatenation = true
""")


@asynccontextmanager
async def kannel(tmp_path: Path, smpp_port: int) -> AsyncIterator[Kannel]:
    assert BEARERBOX is not None and SMSBOX is not None
    ports = {"admin": free_port(), "smsbox": free_port(), "sendsms": free_port()}
    conf = tmp_path / "kannel.conf"
    kannel_config(conf, smpp_port, ports)
    k = Kannel(f"http://127.0.0.1:{ports['sendsms']}/cgi-bin/sendsms")

    async def on_dlr(request: web.Request) -> web.Response:
        k.dlrs.append((request.query["ref"], int(request.query["type"])))
        return web.Response(text="ok")

    async with serve_app([web.get("/dlr", on_dlr)]) as dlr_base:
        k.dlr_url = f"{dlr_base}/dlr"
        log = (tmp_path / "kannel.out").open("ab")
        boxes = [await asyncio.create_subprocess_exec(BEARERBOX, str(conf), stdout=log,
                                                      stderr=log)]
        try:
            await asyncio.sleep(0.5)  # smsbox connects to bearerbox's box port
            boxes.append(await asyncio.create_subprocess_exec(SMSBOX, str(conf), stdout=log,
                                                              stderr=log))
            yield k
        finally:
            for box in reversed(boxes):
                if box.returncode is None:
                    box.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(box.wait(), 10)
                    except TimeoutError:
                        box.kill()
                        await box.wait()
            log.close()


async def send_all(k: Kannel, texts: dict[int, str], http: aiohttp.ClientSession) -> None:
    """sendsms for each message, 10 at a time, as an application in front of Kannel does."""
    todo = list(texts.items())

    async def worker() -> None:
        while todo:
            i, text = todo.pop()
            params = {"username": "u", "password": "p", "from": "ACME", "to": number(i),
                      "text": text, "dlr-mask": "31",
                      "dlr-url": f"{k.dlr_url}?ref={i}&type=%d"}
            deadline = time.monotonic() + DEADLINE
            while True:
                try:
                    async with http.get(k.sendsms, params=params) as r:
                        if r.status == 202:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "smsbox does not take sendsms"
                await asyncio.sleep(0.1)

    await asyncio.gather(*(worker() for _ in range(10)))


async def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_kannel_long_messages_get_their_final_dlr(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config, smpp_port = tmp_path / "smsagg.toml", free_port()
    write_config(config, tmp_path / "s.db", smsc.port, smpp_port)
    texts = {i: f"long {i} " + "x" * 300 for i in range(5)}  # 3 parts each
    try:
        async with daemon(config) as _, kannel(tmp_path, smpp_port) as k, \
                aiohttp.ClientSession() as http:
            await send_all(k, texts, http)
            await wait_until(lambda: {r for r, t in k.dlrs if t == 1} == {str(i) for i in texts},
                             20, f"final DLRs for 5 long messages: {k.dlrs}")
    finally:
        await smsc.stop()


async def test_kannel_sigterm_restart_duplicates_nothing_loses_nothing(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile(latency=0.01))
    await smsc.start()
    config, log, smpp_port = tmp_path / "smsagg.toml", tmp_path / "daemon.log", free_port()
    write_config(config, tmp_path / "s.db", smsc.port, smpp_port)
    texts = {i: f"m{i}" for i in range(MESSAGES)}
    started = time.monotonic()
    try:
        async with kannel(tmp_path, smpp_port) as k, aiohttp.ClientSession() as http:
            async with daemon(config, log) as (proc, _):
                sending = asyncio.create_task(send_all(k, texts, http))
                await wait_until(lambda: smsc.submits_total >= MESSAGES // 3, 120,
                                 "Kannel sends nothing")
                at_sigterm = smsc.submits_total
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
            async with daemon(config, log) as (proc, _):
                await sending
                await wait_until(lambda: len({s.destination for s in smsc.received})
                                 >= MESSAGES, 240, "messages at the SMSC")
                await wait_until(lambda: len({r for r, t in k.dlrs if t in (1, 2)})
                                 >= MESSAGES, 120, "final DLRs at Kannel's dlr-url")
                await asyncio.sleep(2.0)  # a late duplicate would come now
                proc.send_signal(signal.SIGTERM)
                with suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), DEADLINE)
    finally:
        await smsc.stop()
    seen = Counter(s.destination for s in smsc.received)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    lost = sum(1 for i in texts if seen[number(i)] == 0)
    finals = Counter(r for r, t in k.dlrs if t in (1, 2))
    print(f"\nKannel SIGTERM restart, {MESSAGES} messages, max-pending-submits {WINDOW}: at the "
          f"SIGTERM {at_sigterm} at the SMSC; at the SMSC {len(seen)} distinct / "
          f"{len(smsc.received)} submits, duplicated {duplicated}, lost {lost}; final DLRs "
          f"{len(finals)} (twice {sum(n - 1 for n in finals.values() if n > 1)}); "
          f"{time.monotonic() - started:.1f} s")
    assert duplicated == 0 and lost == 0
