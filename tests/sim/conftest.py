"""The simulator tests' `connect` fixture: bound SMPP clients of an SMSC, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from simulator.smsc import Smsc
from tests.sim_helpers import Client, Connect, open_sim_client


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    clients: list[Client] = []

    async def open_(target: Smsc | int, **options: Any) -> Client:
        client = await open_sim_client(target, **options)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.conn.close()
