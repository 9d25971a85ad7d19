"""Callback receivers for tests: one that accepts connections, reads the requests and never
answers (a stuck customer endpoint)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class StuckReceiver:
    """Accepts HTTP connections, reads the requests and never answers."""

    url: str = ""
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


@asynccontextmanager
async def stuck_receiver() -> AsyncIterator[StuckReceiver]:
    stuck = StuckReceiver()
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stuck.connections += 1
        stuck.writers.append(writer)
        try:
            while await reader.read(65536):
                pass
            await never.wait()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stuck.url = f"http://127.0.0.1:{port}/cb"
    try:
        yield stuck
    finally:
        for writer in stuck.writers:
            writer.close()
        server.close()
