"""Live progress of a load run on a stream: one rewritten line on a terminal, else a line
every few seconds."""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

from simulator.load.recorder import Recorder

TTY_PROGRESS_INTERVAL = 1.0
PLAIN_PROGRESS_INTERVAL = 5.0


def progress_line(rec: Recorder, now: float, rate: float) -> str:
    r = rec.result
    return (f"t={now - rec.start:6.1f}s rate={rate:7.0f}/s in_flight={rec.in_flight:5d}"
            f" accepted={r.accepted} errors={r.errors_total} receipts={r.receipts}")


async def show_progress(rec: Recorder, stream: TextIO) -> None:
    tty = stream.isatty()
    interval = TTY_PROGRESS_INTERVAL if tty else PLAIN_PROGRESS_INTERVAL
    last_time, last_accepted = rec.start, 0
    try:
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            rate = (rec.result.accepted - last_accepted) / (now - last_time)
            last_time, last_accepted = now, rec.result.accepted
            line = progress_line(rec, now, rate)
            if tty:
                stream.write("\r" + line + "\x1b[K")
            else:
                stream.write(line + "\n")
            stream.flush()
    finally:
        if tty:
            stream.write("\n")
            stream.flush()
