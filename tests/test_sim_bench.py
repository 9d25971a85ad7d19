"""`smsagg-sim bench` and deploy/bench/kannel-vs-smsagg.sh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.bench import BenchOptions, config_text, options_from_args, parse_submits, submits_at
from simulator.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "bench" / "kannel-vs-smsagg.sh"


# -- the bench command --------------------------------------------------------------------------


def test_quick_bench_has_a_row_per_scenario(tmp_path: Path) -> None:
    markdown, results = tmp_path / "bench.md", tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "bench", "--count", "200", "--scenarios", "a,c",
         "--receipt-wait", "30", "--markdown", str(markdown), "--json", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    table = markdown.read_text()
    assert table in proc.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| scenario | accepted | accepted msg/s | relayed msg/s")
    assert [row.split("|")[1].strip()[:2] for row in rows[1:]] == ["a:", "c:"]
    data = json.loads(results.read_text())
    for scenario in data["scenarios"]:
        assert scenario["accepted"] == 200, scenario
        assert scenario["errors"] == 0, scenario
        assert scenario["receipts"] == scenario["receipts_expected"] == 200, scenario
        assert scenario["relayed_total"] >= 200, scenario
        assert scenario["relayed_msg_s"] > 0, scenario
        assert 0 < scenario["accept_latency_ms"]["p50"] <= scenario["accept_latency_ms"]["p99"]


def test_submit_counter_is_interpolated_between_samples() -> None:
    samples = [(10.0, 0), (10.5, 100), (11.0, 300)]
    assert submits_at(samples, 9.0) == 0
    assert submits_at(samples, 10.25) == 50
    assert submits_at(samples, 10.75) == 200
    assert submits_at(samples, 12.0) == 300
    assert submits_at([], 1.0) == 0
    line = "submits=1234 rate=10/s throttled=0 errors=0 receipts_sent=5"
    assert parse_submits(line) == 1234
    assert parse_submits("listening on 127.0.0.1:2776") is None


def test_options_and_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench"])
    options = options_from_args(args)
    assert (options.duration, options.count, options.window) == (10.0, None, 10)
    assert options.scenarios == ("a", "b", "c")
    args = parser.parse_args(["bench", "--count", "50", "--scenarios", "c", "--window", "20"])
    options = options_from_args(args)
    assert (options.duration, options.count, options.scenarios) == (None, 50, ("c",))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--count", "5", "--duration", "3"])
    with pytest.raises(ValueError, match="unknown d"):
        BenchOptions(scenarios=("a", "d")).check()
    http_only = config_text(Path("/tmp/x.db"), 2776, 20, smpp_ingress=False)
    assert "window = 20" in http_only and "[smpp]" not in http_only
    assert "workers = 0" in http_only
    assert "workers = 1" in config_text(Path("/tmp/x.db"), 2776, 10, False, workers=1)
    assert options_from_args(parser.parse_args(["bench", "--workers", "1"])).workers == 1
    with pytest.raises(ValueError, match="--workers"):
        BenchOptions(workers=65).check()
    assert "binds = 2" in http_only
    with_smpp = config_text(Path("/tmp/x.db"), 2776, 10, smpp_ingress=True)
    assert '[smpp]\nlisten = "127.0.0.1:0"' in with_smpp and 'system_id = "bench"' in with_smpp


def test_bad_scenario_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "bench", "--scenarios", "x", "--count", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--scenarios" in proc.stderr


# -- the Kannel comparison script ---------------------------------------------------------------


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_script_without_kannel_prints_the_install_hint(tmp_path: Path) -> None:
    env = dict(os.environ, TOOL_PATH=str(tmp_path))  # an empty directory: no tools at all
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "bearerbox smsbox wrk" in proc.stderr
    assert "apt-get install -y kannel wrk" in proc.stderr


@pytest.mark.skipif(
    not all(shutil.which(t, path=f"{os.environ.get('PATH', '')}:/usr/sbin") for t in
            ("bearerbox", "smsbox", "wrk")),
    reason="kannel and wrk are not installed",
)
def test_script_check_finds_the_tools() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--check"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
