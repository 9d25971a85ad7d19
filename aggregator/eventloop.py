"""Running a command's main coroutine: on uvloop when it is installed, and stop signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run `main` to its end on uvloop ("auto": when it is installed; "uvloop": ImportError
    without it) or on asyncio's own loop ("asyncio")."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set `stop`; a second one forces exit (the clean stop may hang)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            print(f"signal {signum} again: forced exit", file=sys.stderr, flush=True)
            os._exit(1)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
