"""[store] commit_gather_ms: validated, handed to the writer process, and a caller writing alone
(each write waiting for the answer to the last) is not held back write after write."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aggregator.config import ConfigError, parse_config
from aggregator.store.factory import build_store
from tests.config_helpers import minimal
from tests.store_helpers import make_message, opened_sqlite


def test_the_gather_time_is_validated() -> None:
    for bad in (-1, 51, "5"):
        data = minimal()
        data["store"] = {"commit_gather_ms": bad}
        with pytest.raises(ConfigError) as err:
            parse_config(data, "smsagg.toml")
        assert "commit_gather_ms" in str(err.value)


async def test_the_configured_gather_reaches_the_writer_process(tmp_path: Path) -> None:
    data = minimal()
    data["store"] = {"path": str(tmp_path / "smsagg.db"), "commit_gather_ms": 12.5}
    store = build_store(parse_config(data, "smsagg.toml"))
    await store.open()
    try:
        assert store.writer.proc is not None
        args = [str(a) for a in store.writer.proc.args]  # type: ignore[union-attr]
        assert args[args.index("aggregator.store.writer_process") + 5] == "0.0125"
    finally:
        await store.close()


async def test_a_caller_writing_alone_waits_once_at_most(tmp_path: Path) -> None:
    """30 accepts one after the other with a 100 ms gather: after one wait that found no
    company the writer commits each at once (waiting every time would take 3 s)."""
    async with opened_sqlite(tmp_path / "smsagg.db", commit_gather=0.1) as store:
        await store.accept(make_message(), None)
        started = time.monotonic()
        for _ in range(30):
            await store.accept(make_message(), None)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, elapsed
