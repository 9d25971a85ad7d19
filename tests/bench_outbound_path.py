"""CPU per message of the daemon's whole outbound path in one process, without HTTP: messages
stored at a paced rate (accept_many, 10 every 10 ms), then claimed, routed, submitted over the
provider binds to the simulator SMSC (a child process, not counted), recorded, and their receipts
decoded, applied and answered. The store is SQLite with its writer process (not counted either).
Run by hand, on this tree and on another, back to back, to compare:

    PYTHONPATH=. python tests/bench_outbound_path.py [--rate 1000] [--seconds 10] [--rounds 3]

Prints CPU microseconds (user + system, this process: what `smsagg run` spends with
[http] workers = 1), read and write system calls and wake-ups per relayed message for each
round, and the best CPU figure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path

from aggregator import metrics
from aggregator.app import App
from aggregator.config import load_config_or_default
from aggregator.eventloop import run_loop
from aggregator.gctune import settle_after_start, tune_collector
from aggregator.log import setup_logging
from aggregator.model import Encoding, Message, Sender, SenderKind
from simulator.bench import config_text
from simulator.harness import start_smsc

_ids = itertools.count(1)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _counts() -> tuple[int, int, int]:
    """This process's read and write system calls (/proc/self/io) and voluntary context
    switches (its waits for the next event: wake-ups)."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    waits = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    return int(io["syscr"]), int(io["syscw"]), waits


def _message(now: float) -> Message:
    return Message(
        id=f"bench{next(_ids):08d}", account="bench", to=f"+38344{next(_ids) % 1_000_000:06d}",
        sender=Sender("LOAD", SenderKind.ALPHANUMERIC), text="smsagg load test",
        encoding=Encoding.GSM7, segments=1, concat_ref=7, created_at=now,
        region="XK", receipt_mode=1, expires_at=now + 86_400)


def _delivered() -> float:
    return metrics.REGISTRY.get_sample_value(
        "smsagg_messages_final_total", {"status": "delivered"}) or 0.0


async def _pace(app: App, count: int, rate: float) -> None:
    """Store `count` messages, 10 at a time, at `rate` a second."""
    step = 10 / rate
    start = time.monotonic()
    for i in range(count // 10):
        await app.store.accept_many([_message(time.time()) for _ in range(10)])
        app.dispatcher.wake()
        delay = start + (i + 1) * step - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _until_delivered(target: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _delivered() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{_delivered():.0f} of {target:.0f} delivered in time")
        await asyncio.sleep(0.1)


async def _round(app: App, count: int, rate: float) -> float:
    before = _delivered()
    cpu, counts = _cpu(), _counts()
    await _pace(app, count, rate)
    await _until_delivered(before + count, 60)
    used = (_cpu() - cpu) / count * 1e6
    reads, writes, waits = ((b - a) / count for a, b in zip(counts, _counts(), strict=True))
    print(f"{used:.1f} CPU-us a message ({count} at {rate:g}/s); a message: {reads:.2f} reads, "
          f"{writes:.2f} writes, {waits:.2f} wake-ups", file=sys.stderr)
    return used


async def main(rate: float, seconds: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="smsagg-bench-path-") as tmp:
        smsc, port = await start_smsc()
        smsc.follow(smsc.proc.stderr)
        smsc.follow(smsc.proc.stdout)
        try:
            path = Path(tmp) / "smsagg.toml"
            path.write_text(config_text(Path(tmp) / "smsagg.db", port, 10, False, 0),
                            encoding="utf-8")
            config = load_config_or_default(str(path))
            setup_logging("warning", "console")
            app = App(config, str(path))
            await app.start()
            settle_after_start()
            while not all(p.binds_up == len(p.binds) for p in app.pools.values()):
                await asyncio.sleep(0.05)
            await _round(app, 2_000, rate)  # warm-up
            count = int(rate * seconds) // 10 * 10
            results = []
            for _ in range(rounds):
                results.append(await _round(app, count, rate))
            print(f"best {min(results):.1f}, median {sorted(results)[len(results) // 2]:.1f} "
                  f"CPU-us a message")
            await app.stop(2.0)
        finally:
            await smsc.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tune_collector()
    run_loop(main(args.rate, args.seconds, args.rounds))
