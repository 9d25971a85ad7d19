"""One load run: `run_load(LoadOptions(...))` returns its `LoadResult`."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import TextIO

from simulator.load.content import segment_text
from simulator.load.httpload import run_http
from simulator.load.options import LoadOptions, LoadResult
from simulator.load.progress import show_progress
from simulator.load.recorder import Recorder
from simulator.load.smppload import run_smpp


async def run_load(options: LoadOptions, stop: asyncio.Event | None = None,
                   progress_stream: TextIO | None = None) -> LoadResult:
    """Run one load test and return its figures. `stop` ends sending early (no receipt wait)."""
    options.check()
    stop = stop or asyncio.Event()
    text = segment_text(options.text, options.segments) if options.segments else options.text
    rng = random.Random(options.seed)
    result = LoadResult(options)
    start = time.perf_counter()
    rec = Recorder(result, start, options.receipts)
    reporter = (asyncio.create_task(show_progress(rec, progress_stream or sys.stderr))
                if options.progress else None)
    try:
        if options.mode == "smpp":
            await run_smpp(options, rec, start, stop, text, rng)
        else:
            await run_http(options, rec, start, stop, text, rng)
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
    end = time.perf_counter()
    result.elapsed = rec.last_answer - start
    result.total_elapsed = end - start
    result.stopped = stop.is_set()
    rec.finish(end)
    return result
