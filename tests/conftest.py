from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aggregator.log import setup_logging
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import Start
from tests.pg import pg_dsn, pg_server  # noqa: F401  (a real PostgreSQL server: tests/pg.py)

# Per-message events are debug; keep test output to what explains a failure.
setup_logging("info", "console")


@pytest.fixture
async def start_smsc() -> AsyncIterator[Start]:
    """Start simulator SMSCs with a profile's fields; all are stopped after the test."""
    started: list[Smsc] = []

    async def start(**profile: Any) -> Smsc:
        smsc = Smsc(SmscProfile(**profile))
        await smsc.start()
        started.append(smsc)
        return smsc

    yield start
    for smsc in started:
        await smsc.stop(timeout=1.0)
