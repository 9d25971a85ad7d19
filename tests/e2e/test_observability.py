"""Metrics after an end-to-end run (parsed, promtool-checked, matching what was sent) and logs
(JSON lines, numbers masked, no message text, no secrets)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    AUTH,
    DEADLINE,
    Samples,
    daemon,
    metric_samples,
    metric_value,
    running,
    shop_config,
)

PHONE_LIKE = re.compile(r"^\+?\d{7,15}$")


def value(snap: Samples, name: str, **labels: str) -> float:
    return metric_value(snap, name, **labels) or 0.0


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


async def test_metrics_match_what_was_sent_and_pass_promtool(tmp_path: Path) -> None:
    async with running(tmp_path, SmscProfile(undeliverable_ratio=0.0),
                       metrics={"listen": "127.0.0.1:0"}) as r:
        before = metric_samples(await scrape(r.http, f"{r.base}/metrics"))
        ids = await r.post_many(30, first=700000, tag="m")
        for bad in ("+38338123456", "123"):
            status, _ = await r.post({"to": bad, "from": "ACME", "text": "x"})
            assert status == 422
        for mid in ids:
            await r.wait_status(mid, {"delivered"})
        text = await scrape(r.http, f"{r.base}/metrics")
        after = metric_samples(text)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("smsagg_messages_accepted_total", account="shop") == 30
        assert delta("smsagg_messages_rejected_total", reason="not_mobile") == 1
        assert delta("smsagg_messages_rejected_total", reason="invalid_number") == 1
        assert delta("smsagg_submits_total", provider="sim", status="ok") == 30
        assert delta("smsagg_receipts_total", provider="sim", status="delivered") == 30
        assert delta("smsagg_messages_final_total", status="delivered") == 30
        assert delta("smsagg_submit_latency_seconds_count", provider="sim") == 30
        assert delta("smsagg_receipt_latency_seconds_count", provider="sim") == 30
        # Accepts are durable writes: the store counts its group commits.
        assert delta("smsagg_store_commit_seconds_count") >= 1
        assert value(after, "smsagg_bind_up", provider="sim", bind="1") == 1
        assert value(after, "smsagg_breaker_state", provider="sim") == 0
        # Durations are histograms in seconds, 1 ms to 60 s.
        assert ("smsagg_submit_latency_seconds_bucket",
                (("le", "0.001"), ("provider", "sim"))) in after
        assert ("smsagg_submit_latency_seconds_bucket",
                (("le", "60.0"), ("provider", "sim"))) in after
        for name, labels in after:
            for _, label_value in labels:
                assert not PHONE_LIKE.match(label_value), (name, label_value)
        assert "38344" not in text  # no number anywhere, not even in help text
        # The separate metrics listener serves the same registry.
        m_port = r.app.metrics_port
        assert "smsagg_messages_accepted_total" in await scrape(
            r.http, f"http://127.0.0.1:{m_port}/metrics")

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); .ci/run installs it")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


async def test_logs_are_json_with_masked_numbers_and_no_text_or_secrets(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = shop_config(tmp_path, smsc.port,
                         provider={"password": "hunter2", "binds": 1, "max_tps": 100},
                         sections={"log": {"level": "debug"}})
    log = tmp_path / "daemon.log"
    try:
        async with daemon(config, log) as (proc, base):
            async with aiohttp.ClientSession(headers=AUTH) as http:
                for _ in range(100):
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                    await asyncio.sleep(0.05)
                async with http.post(f"{base}/v1/messages", json={
                    "to": "+38344123456", "from": "ACME", "text": "SECRET-TEXT-4711"}) as resp:
                    mid = (await resp.json())["id"]
                for _ in range(200):
                    async with http.get(f"{base}/v1/messages/{mid}") as resp:
                        if (await resp.json())["status"] == "delivered":
                            break
                    await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), DEADLINE)
    finally:
        await smsc.stop()
    lines = log.read_text().splitlines()
    assert proc.returncode == 0
    records = [json.loads(line) for line in lines if line.strip()]
    assert all({"event", "level", "timestamp"} <= rec.keys() for rec in records)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", rec["timestamp"])
               for rec in records)
    everything = "\n".join(lines)
    assert "+38344***456" in everything  # the number, masked, with the message id
    assert "38344123456" not in everything
    assert "SECRET-TEXT-4711" not in everything
    assert "hunter2" not in everything and "shop-key" not in everything
    accepted = [rec for rec in records if rec["event"] == "accepted"]
    assert accepted and accepted[0]["message_id"] == mid and accepted[0]["level"] == "debug"
    assert any(rec.get("provider") == "sim" and rec.get("bind") == "1" for rec in records)
