"""`smsagg-sim bench` and deploy/bench/kannel-vs-smsagg.sh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.bench import (
    SCENARIOS,
    BenchOptions,
    ScenarioResult,
    config_text,
    cpu_text,
    final_messages,
    options_from_args,
    parse_submits,
    submits_at,
    submits_by,
    target_lines,
)
from simulator.cli import build_parser
from simulator.load import LoadOptions, LoadResult
from simulator.proctree import cpu_delta, per_message_us, role_of, tree_cpu, tree_rss_mb

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "bench" / "kannel-vs-smsagg.sh"


# -- the bench command --------------------------------------------------------------------------


def test_quick_bench_has_a_row_per_scenario(tmp_path: Path) -> None:
    markdown, results = tmp_path / "bench.md", tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "bench", "--count", "200", "--scenarios", "a,c,d,e,f",
         "--receipt-wait", "30", "--markdown", str(markdown), "--json", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    table = markdown.read_text()
    assert table in proc.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| scenario | accepted | accepted msg/s | relayed msg/s")
    assert [row.split("|")[1].strip()[:2] for row in rows[1:]] == ["a:", "c:", "d:", "e:",
                                                                   "f:"]
    assert rows[0].rstrip(" |").endswith("smsagg RSS MB ¼ / end | CPU-µs/msg (per process)")
    data = json.loads(results.read_text())
    # Only the fixed-rate scenarios get a verdict on the latency target.
    assert [line[:33] for line in data["targets"]] == ["scenario d: 2,000 msg/s offered, ",
                                                       "scenario e: 2,000 msg/s offered, ",
                                                       "scenario f: 1,000 msg/s offered, "]
    assert "accept p99" in data["targets"][0] and "CPU" not in data["targets"][0]
    assert "µs per relayed message (target at most 450:" in data["targets"][2]
    assert all(line in proc.stdout for line in data["targets"])
    offered = {s["scenario"]: (s["offered_msg_s"], s["load"]["options"]["rate"],
                               s["load"]["options"]["receipts"]) for s in data["scenarios"]}
    assert offered == {"a": (None, 0.0, True), "c": (None, 0.0, True),
                       "d": (2000.0, 2000.0, False), "e": (2000.0, 2000.0, True),
                       "f": (1000.0, 1000.0, False)}
    # Without callbacks the receipts are counted where smsagg processed them.
    for d in [s for s in data["scenarios"] if s["scenario"] in ("d", "f")]:
        assert d["final_in_smsagg"] == 200 and d["receipts_expected"] == 0
    assert "| 200/200 final in smsagg |" in table
    for scenario in data["scenarios"]:
        # The daemon, its writer process and nothing smaller than a Python interpreter.
        assert scenario["smsagg_rss_mb"]["end"] > 20, scenario["smsagg_rss_mb"]
        assert scenario["accepted"] == 200, scenario
        assert scenario["errors"] == 0, scenario
        if scenario["scenario"] not in ("d", "f"):  # no callbacks asked for
            assert scenario["receipts"] == scenario["receipts_expected"] == 200, scenario
        assert scenario["relayed_total"] >= 200, scenario
        assert scenario["relayed_msg_s"] > 0, scenario
        assert 0 < scenario["accept_latency_ms"]["p50"] <= scenario["accept_latency_ms"]["p99"]
        # CPU per relayed message: the daemon and its writer did work, and so did the HTTP
        # worker (one by default) where the load came over HTTP; the parts add up to the total,
        # and every message relayed was counted.
        cpu = scenario["cpu_us_per_msg"]
        assert {"daemon", "writer", "worker", "total"} <= set(cpu), cpu
        busy = ("daemon", "writer") if scenario["scenario"] == "c" else (
            "daemon", "writer", "worker")
        assert all(cpu[role] > 0 for role in busy), cpu
        assert cpu["total"] == pytest.approx(
            sum(v for k, v in cpu.items() if k != "total"), abs=1.0)
        assert scenario["cpu_messages"] >= 200, scenario


def test_submit_counter_is_interpolated_between_samples() -> None:
    samples = [(10.0, 0), (10.5, 100), (11.0, 300)]
    assert submits_at(samples, 9.0) == 0
    assert submits_at(samples, 10.25) == 50
    assert submits_at(samples, 10.75) == 200
    assert submits_at(samples, 12.0) == 300
    assert submits_at([], 1.0) == 0
    assert [submits_by(samples, t) for t in (9.0, 10.25, 10.5, 12.0)] == [0, 0, 100, 300]
    line = "submits=1234 rate=10/s throttled=0 errors=0 receipts_sent=5"
    assert parse_submits(line) == 1234
    assert parse_submits("listening on 127.0.0.1:2776") is None


def test_options_and_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench"])
    options = options_from_args(args)
    assert (options.duration, options.count, options.window) == (10.0, None, 10)
    assert options.scenarios == ("a", "b", "c", "d", "e", "f")
    args = parser.parse_args(["bench", "--count", "50", "--scenarios", "c", "--window", "20"])
    options = options_from_args(args)
    assert (options.duration, options.count, options.scenarios) == (None, 50, ("c",))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--count", "5", "--duration", "3"])
    with pytest.raises(ValueError, match="unknown g"):
        BenchOptions(scenarios=("a", "g")).check()
    http_only = config_text(Path("/tmp/x.db"), 2776, 20, smpp_ingress=False)
    assert "window = 20" in http_only and "[smpp]" not in http_only
    assert "workers = 0" in http_only
    assert "workers = 1" in config_text(Path("/tmp/x.db"), 2776, 10, False, workers=1)
    assert options_from_args(parser.parse_args(["bench"])).workers == 1
    assert options_from_args(parser.parse_args(["bench", "--workers", "0"])).workers == 0
    with pytest.raises(ValueError, match="--workers"):
        BenchOptions(workers=65).check()
    assert "binds = 2" in http_only
    with_smpp = config_text(Path("/tmp/x.db"), 2776, 10, smpp_ingress=True)
    assert '[smpp]\nlisten = "127.0.0.1:0"' in with_smpp and 'system_id = "bench"' in with_smpp


def _fixed_rate_result(p99_s: float, errors: int = 0) -> ScenarioResult:
    load = LoadResult(options=LoadOptions(rate=2000), accepted=100, elapsed=0.05)
    for _ in range(100):
        load.accept_latency.record(p99_s)
    if errors:
        load.errors["queue_full"] = errors
    return ScenarioResult(scenario=SCENARIOS["d"], load=load, window_s=0.05, relayed=100,
                          relayed_total=100, memory=[(0.0, 60.0), (0.02, 61.0), (0.05, 62.5)],
                          final=100)


def test_final_messages_are_summed_over_statuses() -> None:
    exposition = (
        "# HELP smsagg_messages_final_total Messages that reached a final state\n"
        "# TYPE smsagg_messages_final_total counter\n"
        'smsagg_messages_final_total{status="delivered"} 180.0\n'
        'smsagg_messages_final_total{status="undeliverable"} 20.0\n'
        'smsagg_messages_final_created{status="delivered"} 1.7e+09\n'
        'smsagg_receipts_total{provider="sim",status="delivered"} 999.0\n'
    )
    assert final_messages(exposition) == 200
    assert final_messages("") == 0


def test_target_verdict_follows_p99_and_errors() -> None:
    (met,) = target_lines([_fixed_rate_result(0.005)])
    assert "target under 20 ms: met" in met
    assert "61.0 MB at a quarter of the run, 62.5 MB at its end, 62.5 MB at most" in met
    (slow,) = target_lines([_fixed_rate_result(0.040)])
    assert "target under 20 ms: missed" in slow
    (refused,) = target_lines([_fixed_rate_result(0.005, errors=3)])
    assert "3 errors" in refused and "missed" in refused
    unprocessed = _fixed_rate_result(0.005)
    unprocessed.final = 99  # of 100 accepted
    (missing,) = target_lines([unprocessed])
    assert "99/100 final in smsagg" in missing and "missed" in missing
    unprocessed.final = 100
    assert "met" in target_lines([unprocessed])[0]
    paced = _fixed_rate_result(0.005)
    paced.scenario = SCENARIOS["f"]
    paced.cpu_s, paced.cpu_messages = {"daemon": 0.02, "writer": 0.01}, 100
    (cpu_met,) = target_lines([paced])
    assert "CPU 300 µs per relayed message (target at most 450: met)" in cpu_met
    assert cpu_text(paced) == "300 (daemon 200, writer 100)"
    paced.cpu_s["worker"] = 0.02
    assert "CPU 500 µs per relayed message (target at most 450: missed)" in target_lines(
        [paced])[0]
    paced.cpu_messages = 0
    assert cpu_text(paced) == "-" and "no message relayed" in target_lines([paced])[0]
    as_fast_as_possible = _fixed_rate_result(0.005)
    as_fast_as_possible.scenario = SCENARIOS["a"]
    assert target_lines([as_fast_as_possible]) == []


def test_memory_of_a_process_tree_counts_its_children() -> None:
    alone = tree_rss_mb(os.getpid())
    assert alone is not None and alone > 5
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while (mb := tree_rss_mb(os.getpid())) is not None and mb < alone + 3:
            assert time.monotonic() < deadline, "the child's memory was never counted"
            time.sleep(0.05)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
    assert tree_rss_mb(2**22 + 12345) is None  # no such process


def test_roles_of_smsagg_processes_and_others() -> None:
    python = "/usr/bin/python3"
    assert role_of([python, "-m", "aggregator", "run", "--config", "x.toml"], "python3") == "daemon"
    assert role_of([python, "/venv/bin/smsagg", "run"], "smsagg") == "daemon"
    assert role_of([python, "-m", "aggregator.store.writer_process", "5", "db"],
                   "python3") == "writer"
    assert role_of([python, "-m", "aggregator", "ingress-worker", "--rpc", "s"],
                   "python3") == "worker"
    assert role_of(["/usr/sbin/bearerbox", "-v", "2", "k.conf"], "bearerbox") == "bearerbox"
    assert role_of([], "kworker") == "kworker"


def test_cpu_of_a_process_tree_counts_a_busy_child() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nend = time.process_time() + 0.3\n"
         "while time.process_time() < end: pass\nsys.stdin.read()"],
        stdin=subprocess.PIPE)
    try:
        before = tree_cpu([os.getpid()])
        deadline = time.monotonic() + 30
        # The child is named by its command name (python3...), this process likewise.
        while sum(cpu_delta(before, tree_cpu([os.getpid()])).values()) < 0.25:
            assert time.monotonic() < deadline, "the child's CPU was never counted"
            time.sleep(0.05)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
    assert tree_cpu([2**22 + 12345]) == {}  # no such process
    assert per_message_us({"daemon": 0.3, "writer": 0.1}, 1000) == pytest.approx(
        {"daemon": 300.0, "writer": 100.0, "total": 400.0})
    assert per_message_us({"daemon": 0.3}, 0) == {}


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
