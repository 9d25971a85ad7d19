"""simulator.harness (the processes of `smsagg demo`, `smsagg-sim bench` and the tests) and the
demo built on it and on the load generator."""

from __future__ import annotations

import asyncio
import os
import sys
import tomllib
from pathlib import Path

import pytest

from aggregator.config import load_config
from simulator.harness import (
    LOOPBACK_CALLBACKS,
    daemon_config,
    start_daemon,
    start_smsc,
    started_record,
    toml_text,
    wait_ready,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_the_config_builder_writes_toml_the_daemon_loads(tmp_path: Path) -> None:
    data = daemon_config(
        2776, {"path": str(tmp_path / "x.db")},
        [{"name": "shop", "api_key": "k", "system_id": "shop", "password": "s"}],
        provider={"binds": 1, "max_tps": 12.5}, prefixes=("+383", "+49"),
        http={"workers": 0}, sections={"smpp": {"listen": "127.0.0.1:0", "window": 7},
                                       "callbacks": LOOPBACK_CALLBACKS})
    assert tomllib.loads(toml_text(data)) == data
    config = load_config(str(write_config(tmp_path / "smsagg.toml", data)))
    [provider] = config.providers
    assert (provider.name, provider.port, provider.binds, provider.window) == ("sim", 2776, 1, 10)
    assert provider.max_tps == 12.5 and config.smpp is not None and config.smpp.window == 7
    assert [list(r.prefixes) for r in config.routes] == [["+383", "+49"]]


def test_the_started_record_is_found_beside_a_childs_record() -> None:
    worker = '{"component": "smsagg.worker", "event": "worker_started", "port": 1}'
    daemon = '{"http": "127.0.0.1:8080", "smpp": null, "event": "started"}'
    assert started_record(worker + daemon)["http"] == "127.0.0.1:8080"
    assert started_record(daemon + worker)["smpp"] is None
    with pytest.raises(RuntimeError, match="no"):
        started_record(worker)


async def test_processes_start_serve_and_stop_cleanly(tmp_path: Path) -> None:
    smsc, port = await start_smsc("--stats-interval", "0")
    try:
        smsc.follow_all()
        config = write_config(tmp_path / "smsagg.toml", daemon_config(
            port, {"path": str(tmp_path / "smsagg.db")}, [{"name": "shop", "api_key": "k"}],
            provider={"max_tps": 100}))
        daemon, started = await start_daemon(config, env=ENV)
        daemon.follow(daemon.proc.stdout)
        await wait_ready(f"http://{started['http']}")
        assert await daemon.stop() == 0  # SIGTERM: a clean stop
        assert any('"event": "stopped"' in line for line in daemon.tail), daemon.describe_tail()
    finally:
        assert await smsc.stop() == 0


async def test_a_daemon_that_cannot_start_is_reported_with_its_last_lines(
        tmp_path: Path) -> None:
    config = tmp_path / "smsagg.toml"
    config.write_text("[http]\nlisten = 5\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="smsagg exited before printing") as caught:
        await start_daemon(config, merge_stderr=True, env=ENV)
    assert "configuration is invalid" in str(caught.value)


async def test_demo_sends_waits_for_every_receipt_and_reports() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator", "demo", "--count", "60", "--concurrency", "10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=ENV)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "accepted 60/60  delivered 60  failed 0  not final 0  rejected 0" in text
    assert "accept latency  p50" in text and "receipt latency p50" in text
    assert "demo: OK, every message reached a final state" in text
