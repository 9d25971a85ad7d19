"""SIGHUP with a configuration path that blocks (issue 17 item 11): the read has a deadline and
runs off the thread pool the store uses, so store reads go on, the reload fails cleanly, a later
reload works, and the daemon still exits at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp

from aggregator.configread import CONFIG_READ_TIMEOUT
from tests.helpers import AUTH, DEADLINE, metric_value
from tests.hostile_helpers import Daemon, hostile_daemon, scrape

SIGHUPS = 10  # more than the default thread pool's threads on a small machine


async def reloads(d: Daemon, result: str) -> float:
    snap = await scrape(d)
    return metric_value(snap, "smsagg_config_reloads_total", result=result) or 0


async def test_sighup_with_a_fifo_config_starves_nothing_and_exit_is_prompt(
        tmp_path: Path) -> None:
    timeout = aiohttp.ClientTimeout(total=5.0)  # a starved store read fails, not hangs
    async with hostile_daemon(tmp_path) as d, aiohttp.ClientSession(headers=AUTH,
                                                                    timeout=timeout) as http:
        async with http.post(f"{d.base}/v1/messages",
                             json={"to": "+38344123456", "from": "ACME", "text": "hi"}) as r:
            assert r.status == 202
            message_id = (await r.json())["id"]
        text = d.config.read_text()
        d.config.unlink()
        os.mkfifo(d.config)  # opening it blocks until a writer comes
        for _ in range(SIGHUPS):
            d.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.02)  # each its own signal, not merged into one
        # Store reads are answered at once, although the reads of the file are blocked.
        started = time.monotonic()
        for _ in range(20):
            async with http.get(f"{d.base}/v1/messages/{message_id}") as r:
                assert r.status == 200
        assert time.monotonic() - started < 5.0
        # Every reload fails: the first at its deadline, the others at once (one read at a
        # time), and the running configuration stays.
        deadline = time.monotonic() + CONFIG_READ_TIMEOUT + DEADLINE
        while await reloads(d, "error") < SIGHUPS:
            assert time.monotonic() < deadline, await reloads(d, "error")
            await asyncio.sleep(0.1)
        assert await reloads(d, "ok") == 0
        # A writer unblocks the read (its result comes too late and is dropped); with a plain
        # file again, the next reload works.
        fifo = os.open(d.config, os.O_WRONLY)
        os.write(fifo, text.encode())
        os.close(fifo)
        d.config.unlink()
        d.config.write_text(text)
        deadline = time.monotonic() + DEADLINE
        while await reloads(d, "ok") < 1:
            assert time.monotonic() < deadline, "the reload after the FIFO did not work"
            d.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
        # A read blocked again does not hold the exit.
        d.config.unlink()
        os.mkfifo(d.config)
        d.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(d.proc.wait(), DEADLINE) == 0
        assert time.monotonic() - started < 10.0
