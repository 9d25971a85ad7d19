"""The load generator (`smsagg-sim load`): HTTP, batch and SMPP modes, pacing, figures, CLI."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import phonenumbers
import pytest
from aiohttp import web

from aggregator.model import Encoding
from aggregator.text import count_segments
from simulator import load as load_module
from simulator.load import Destinations, LoadOptions, LoadResult, run_load, segment_text
from simulator.load import progress as load_progress
from simulator.stats import LatencyHistogram
from tests.helpers import API_KEY, DEADLINE, running, serve_app
from tests.sim_helpers import simulator_process

ROOT = Path(__file__).resolve().parents[2]


def assert_ordered(summary: dict[str, Any]) -> None:
    assert 0 < summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"], summary


# -- a fake API server ----------------------------------------------------------------------------


@dataclass
class FakeApi:
    url: str = ""
    singles: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    callbacks: bool = True
    pending: set[asyncio.Task[None]] = field(default_factory=set)


def _verdict(n: int, message: dict[str, Any]) -> dict[str, Any]:
    if not message["to"].startswith("+38344"):
        return {"status": 422, "error": {"code": "invalid_number", "message": "bad number"}}
    return {"status": 202, "id": f"id{n}", "segments": 1, "encoding": "gsm7"}


@asynccontextmanager
async def fake_api() -> AsyncIterator[FakeApi]:
    """POST /v1/messages and /v1/messages/batch as the API answers them; accepted messages
    with a callback_url get a delivered callback soon after."""
    api = FakeApi()
    counter = [0]
    client = aiohttp.ClientSession()

    async def callback(url: str, message_id: str) -> None:
        await asyncio.sleep(0.01)
        async with client.post(url, json={"id": message_id, "status": "delivered"}) as resp:
            await resp.read()

    def handle(message: dict[str, Any]) -> dict[str, Any]:
        counter[0] += 1
        verdict = _verdict(counter[0], message)
        url = message.get("callback_url")
        if verdict["status"] == 202 and url and api.callbacks:
            task = asyncio.create_task(callback(url, verdict["id"]))
            api.pending.add(task)
            task.add_done_callback(api.pending.discard)
        return verdict

    async def single(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer k"
        api.singles += 1
        verdict = handle(await request.json())
        if verdict["status"] != 202:
            return web.json_response({"error": verdict["error"]}, status=verdict["status"])
        return web.json_response({**verdict, "status": "accepted"}, status=202)

    async def batch(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer k"
        messages = (await request.json())["messages"]
        api.batch_sizes.append(len(messages))
        return web.json_response({"results": [handle(m) for m in messages]})

    async with serve_app([web.post("/v1/messages", single),
                          web.post("/v1/messages/batch", batch)]) as api.url:
        try:
            yield api
        finally:
            for task in list(api.pending):
                task.cancel()
            await client.close()


# -- against the real daemon ----------------------------------------------------------------------


async def test_http_mode_against_the_daemon(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        result = await run_load(LoadOptions(
            mode="http", url=r.base, api_key=API_KEY, count=200, concurrency=20,
            receipt_wait=DEADLINE, seed=1,
        ))
    assert (result.sent, result.accepted, result.errors) == (200, 200, {})
    assert result.receipts == result.receipts_expected == 200
    assert result.receipts_by_status == {"delivered": 200}
    assert_ordered(result.accept_latency.summary_ms())
    assert_ordered(result.receipt_latency.summary_ms())
    assert result.throughput > 0
    assert sum(p.accepted for p in result.timeline) == 200
    assert sum(p.receipts for p in result.timeline) == 200


async def test_smpp_mode_against_the_daemon_smpp_server(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={}, shop={"system_id": "shop", "password": "secret"}) as r:
        assert r.app.smpp is not None
        result = await run_load(LoadOptions(
            mode="smpp", smpp_port=r.app.smpp.port, system_id="shop", password="secret",
            binds=2, window=10, count=200, receipt_wait=DEADLINE, seed=2,
        ))
    assert (result.sent, result.accepted, result.errors) == (200, 200, {})
    assert result.receipts == 200
    assert result.receipts_by_status == {"delivered": 200}
    assert_ordered(result.accept_latency.summary_ms())
    assert_ordered(result.receipt_latency.summary_ms())


async def test_smpp_long_messages_use_one_receipt_each(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={}, shop={"system_id": "shop", "password": "secret"}) as r:
        assert r.app.smpp is not None
        result = await run_load(LoadOptions(
            mode="smpp", smpp_port=r.app.smpp.port, system_id="shop", password="secret",
            count=10, segments=3, receipt_wait=DEADLINE,
        ))
    assert result.accepted == 10 and result.receipts == 10


async def test_errors_are_counted_by_code(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        bad = await run_load(LoadOptions(url=r.base, api_key=API_KEY, count=10,
                                         prefix="+99999", receipts=False))
        unauthorized = await run_load(LoadOptions(url=r.base, api_key="wrong", count=3,
                                                  receipts=False))
    assert bad.accepted == 0 and bad.errors == {"invalid_number": 10}
    assert unauthorized.errors == {"unauthorized": 3}
    assert bad.to_dict()["errors_total"] == 10


async def test_connection_errors_are_counted_by_exception() -> None:
    async with fake_api() as api:
        url = api.url
    result = await run_load(LoadOptions(url=url, api_key="k", count=3, receipts=False))
    assert result.errors == {"ConnectionRefusedError": 3} and result.sent == 3


# -- against the fake API -------------------------------------------------------------------------


async def test_batch_mode_splits_into_batches_and_matches_results_in_order() -> None:
    async with fake_api() as api:
        result = await run_load(LoadOptions(
            mode="batch", url=api.url, api_key="k", count=100, batch_size=30, concurrency=2,
            receipt_wait=DEADLINE,
        ))
    assert sorted(api.batch_sizes) == [10, 30, 30, 30] and api.singles == 0
    assert (result.sent, result.accepted, result.errors) == (100, 100, {})
    assert result.receipts == 100
    assert_ordered(result.accept_latency.summary_ms())


async def test_batch_mode_counts_item_errors_by_code() -> None:
    async with fake_api() as api:
        result = await run_load(LoadOptions(
            mode="batch", url=api.url, api_key="k", count=20, prefix="+1202",
            digits=7, receipts=False,
        ))
    assert result.accepted == 0 and result.errors == {"invalid_number": 20}


async def test_rate_pacing() -> None:
    async with fake_api() as api:
        started = time.perf_counter()
        result = await run_load(LoadOptions(url=api.url, api_key="k", count=50, rate=100,
                                            receipts=False))
        elapsed = time.perf_counter() - started
    assert result.accepted == 50
    assert 0.45 <= elapsed < 5, elapsed
    assert result.elapsed >= 0.45


async def test_duration_bounds_sending() -> None:
    async with fake_api() as api:
        result = await run_load(LoadOptions(url=api.url, api_key="k", duration=0.3, rate=100,
                                            receipts=False))
    assert 10 <= result.sent <= 31 and result.accepted == result.sent


async def test_stop_event_ends_sending_early() -> None:
    stop = asyncio.Event()
    async with fake_api() as api:
        task = asyncio.create_task(run_load(
            LoadOptions(url=api.url, api_key="k", count=10_000, rate=50), stop))
        while api.singles < 5:
            await asyncio.sleep(0.01)
        stop.set()
        result = await asyncio.wait_for(task, DEADLINE)
    assert result.stopped and 5 <= result.sent < 10_000


async def test_missing_receipts_end_after_receipt_wait() -> None:
    async with fake_api() as api:
        api.callbacks = False
        result = await run_load(LoadOptions(url=api.url, api_key="k", count=5,
                                            receipt_wait=0.2))
    assert result.accepted == 5 and result.receipts == 0 and result.receipts_expected == 5
    assert result.total_elapsed >= 0.2


async def test_json_shape() -> None:
    async with fake_api() as api:
        result = await run_load(LoadOptions(url=api.url, api_key="k", count=30,
                                            receipt_wait=DEADLINE, password="pw"))
    data = json.loads(json.dumps(result.to_dict()))
    assert {"mode", "sent", "accepted", "errors", "errors_total", "elapsed_s",
            "throughput_msg_s", "accept_latency_ms", "receipt_latency_ms", "receipts",
            "receipts_expected", "timeline", "options"} <= set(data)
    for key in ("accept_latency_ms", "receipt_latency_ms"):
        assert {"p50", "p95", "p99", "max", "count"} <= set(data[key])
    assert data["timeline"] and {"t", "sent", "accepted", "errors", "receipts", "accept_p50_ms",
                                 "accept_p99_ms"} <= set(data["timeline"][0])
    assert [p["t"] for p in data["timeline"]] == list(range(len(data["timeline"])))
    assert data["options"]["api_key"] == "***" and data["options"]["password"] == "***"
    assert data["accepted"] == data["receipts"] == 30


async def test_progress_lines_when_not_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_progress, "PLAIN_PROGRESS_INTERVAL", 0.05)
    stream = io.StringIO()
    async with fake_api() as api:
        await run_load(LoadOptions(url=api.url, api_key="k", count=30, rate=100,
                                   receipts=False, progress=True), progress_stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines and "\r" not in stream.getvalue()
    assert all("accepted=" in x and "in_flight=" in x and "receipts=" in x for x in lines)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_rewrites_one_line_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_progress, "TTY_PROGRESS_INTERVAL", 0.05)
    stream = _Tty()
    async with fake_api() as api:
        await run_load(LoadOptions(url=api.url, api_key="k", count=30, rate=100,
                                   receipts=False, progress=True), progress_stream=stream)
    text = stream.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n") and text.count("\n") == 1


# -- units ----------------------------------------------------------------------------------------


def test_histogram_percentiles_are_ordered_and_close() -> None:
    h = LatencyHistogram()
    for i in range(1, 10_001):
        h.record(i / 10_000)  # 0.1 ms .. 1 s
    assert h.percentile(50) == pytest.approx(0.5, rel=0.01)
    assert h.percentile(99) == pytest.approx(0.99, rel=0.01)
    assert h.percentile(50) <= h.percentile(95) <= h.percentile(99) <= h.max == 1.0
    assert len(h.counts) < 1000  # bounded by buckets, not samples
    assert LatencyHistogram().percentile(99) == 0.0


@pytest.mark.parametrize("segments", [1, 2, 3, 7])
@pytest.mark.parametrize("text", ["hello world", "curly {braces} cost two"])
def test_segment_text_fills_exactly_k_segments(text: str, segments: int) -> None:
    out = segment_text(text, segments)
    assert count_segments(out, Encoding.GSM7) == segments
    assert count_segments(out + "xxxxxxxxx", Encoding.GSM7) == segments + 1


def test_destinations_are_valid_mobile_numbers() -> None:
    import random

    numbers = Destinations("+38344", 6, random.Random(3))
    for _ in range(200):
        n = numbers.next()
        assert len(n) == len("+38344") + 6
        parsed = phonenumbers.parse(n)
        assert phonenumbers.is_valid_number(parsed)


@pytest.mark.parametrize("options", [
    LoadOptions(mode="ftp"), LoadOptions(prefix="38344"), LoadOptions(digits=0),
    LoadOptions(segments=2, text="Привет"), LoadOptions(rate=-1),
])
async def test_bad_options_raise_value_error(options: LoadOptions) -> None:
    with pytest.raises(ValueError):
        await run_load(options)


def test_result_to_dict_of_an_empty_run() -> None:
    data = LoadResult(LoadOptions()).to_dict()
    assert data["accept_latency_ms"]["p99"] == 0.0 and data["throughput_msg_s"] == 0.0


# -- command line ---------------------------------------------------------------------------------


def test_cli_help() -> None:
    done = subprocess.run([sys.executable, "-m", "simulator", "load", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--mode", "--rate", "--batch-size", "--binds", "--window", "--json",
                   "--plot", "--receipt-wait", "--segments"):
        assert option in done.stdout


async def _cli(*args: str) -> tuple[int, str, str]:
    async with simulator_process("load", *args) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_run_writes_json(tmp_path: Path) -> None:
    out_file = tmp_path / "load.json"
    async with fake_api() as api:
        code, out, err = await _cli("--url", api.url, "--api-key", "k", "--count", "20",
                                    "--json", str(out_file), "--receipt-wait", "20")
    assert code == 0, err
    assert "accepted 20" in out and "receipts 20/20" in out and "p99" in out
    data = json.loads(out_file.read_text())
    assert data["accepted"] == 20 and data["receipts"] == 20


async def test_ids_records_every_accepted_id(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids.txt"
    async with fake_api() as api:
        recorded = await run_load(LoadOptions(url=api.url, api_key="k", count=10, batch_size=4,
                                              mode="batch", receipts=False, record_ids=True))
        plain = await run_load(LoadOptions(url=api.url, api_key="k", count=3, receipts=False))
        code, _, err = await _cli("--url", api.url, "--api-key", "k", "--count", "5",
                                  "--no-receipts", "--ids", str(ids_file))
    assert sorted(recorded.ids) == sorted(f"id{n}" for n in range(1, 11))
    assert plain.ids == [] and plain.accepted == 3  # only kept when asked for
    assert code == 0, err
    assert sorted(ids_file.read_text().splitlines()) == sorted(f"id{n}" for n in range(14, 19))


async def test_cli_bad_option_exits_2() -> None:
    code, _, err = await _cli("--prefix", "abc")
    assert code == 2 and "--prefix" in err


async def test_cli_plot_without_matplotlib_exits_2(tmp_path: Path) -> None:
    if load_module.plot_available():
        pytest.skip("matplotlib is installed")
    code, _, err = await _cli("--count", "1", "--plot", str(tmp_path / "x.png"))
    assert code == 2 and "matplotlib" in err
