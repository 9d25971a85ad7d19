"""An SMPP client of the simulator SMSC for its tests: one bound connection with its deliver_sm
queue (each with the loop time it came), opened by the `connect` fixture of tests/sim/conftest.py,
a submit_sm builder, and `python -m simulator` as a subprocess stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiosmpplib import DeliverSmResp, PhoneNumber, SmppCommandStatus, SubmitSm

from aggregator.smpp.session import BindMode, Event, RequestReceived, SessionClosed
from aggregator.smpp.transport import SmppConnection, open_client
from simulator.smsc import Smsc
from tests.helpers import ROOT

DEADLINE = 5.0


@dataclass
class Client:
    conn: SmppConnection
    delivers: asyncio.Queue[tuple[float, Any]]  # (loop time received, deliver_sm)
    closed: asyncio.Event

    async def submit(self, pdu: Any) -> Any:
        return await asyncio.wait_for(self.conn.request(pdu), DEADLINE)

    async def next_deliver(self) -> Any:
        return (await self.next_timed())[1]

    async def next_timed(self) -> tuple[float, Any]:
        return await asyncio.wait_for(self.delivers.get(), DEADLINE)


Connect = Callable[..., Awaitable[Client]]


async def open_sim_client(
    target: Smsc | int,
    *,
    mode: BindMode = BindMode.TRANSCEIVER,
    system_id: str = "esme",
    password: str = "pw",
    deliver_status: Any = SmppCommandStatus.ESME_ROK,
    window: int = 50,
    response_timeout: float = DEADLINE,
) -> Client:
    """Bind to an SMSC (or a port); every deliver_sm is queued and answered with deliver_status."""
    delivers: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
    closed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_event(conn: SmppConnection, event: Event) -> None:
        if isinstance(event, RequestReceived):
            delivers.put_nowait((loop.time(), event.pdu))
            conn.respond(event.pdu, DeliverSmResp(command_status=deliver_status))
        elif isinstance(event, SessionClosed):
            closed.set()

    port = target if isinstance(target, int) else target.port
    conn = await open_client(
        "127.0.0.1", port, mode=mode, system_id=system_id, password=password,
        window=window, on_event=on_event, bind_timeout=DEADLINE,
        response_timeout=response_timeout,
    )
    return Client(conn, delivers, closed)


def make_submit(text: str = "hello", **kwargs: Any) -> Any:
    kwargs.setdefault("source", PhoneNumber("SENDER"))
    kwargs.setdefault("destination", PhoneNumber("4915112345678"))
    return SubmitSm(short_message=text, **kwargs)


@asynccontextmanager
async def simulator_process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m simulator ARGS` from this tree, output piped; killed at the end if it still
    runs (a test that wants a clean exit calls sigterm_and_wait first)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def stderr_match(proc: asyncio.subprocess.Process, pattern: str,
                       timeout: float = DEADLINE) -> re.Match[str]:
    """Read stderr lines until one starts with pattern (failing if the process ends first)."""
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout)).decode()
        assert line, f"simulator exited before printing {pattern!r}"
        match = re.match(pattern, line)
        if match:
            return match


async def sigterm_and_wait(proc: asyncio.subprocess.Process) -> bytes:
    """SIGTERM, then what the process wrote on stdout until it exited."""
    proc.send_signal(signal.SIGTERM)
    stdout, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    return stdout
