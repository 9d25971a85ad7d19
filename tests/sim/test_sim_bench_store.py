"""`smsagg-sim bench --store sqlite,postgres --instances 1,2`: the setups it runs, the load split
between instances and merged back, the config each instance gets, and one tiny run on a
throw-away PostgreSQL server with two instances."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from simulator.bench import (
    BenchOptions,
    add_arguments,
    config_text,
    merge_loads,
    options_from_args,
    run_bench,
    setups_from,
    split_load,
)
from simulator.load import LoadOptions, LoadResult
from tests.pg import start_or_skip


def test_setups_run_sqlite_once_and_postgres_per_instance_count() -> None:
    assert setups_from("sqlite", "1") == (("sqlite", 1),)
    assert setups_from("sqlite,postgres", "1,2") == (
        ("sqlite", 1), ("postgres", 1), ("postgres", 2))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from_args(parser.parse_args(["--store", "postgres", "--instances", "2"]))
    assert options.setups == (("postgres", 2),)
    with pytest.raises(ValueError, match="--store"):
        BenchOptions(setups=(("mysql", 1),)).check()
    with pytest.raises(ValueError, match="--instances"):
        setups_from("postgres", "two")


def test_load_is_split_evenly_and_merged_back() -> None:
    base = LoadOptions(mode="http", url="http://x", count=101, rate=1000.0, concurrency=50,
                       seed=1)
    parts = [split_load(base, i, 2) for i in range(2)]
    assert [p.count for p in parts] == [51, 50]
    assert [p.rate for p in parts] == [500.0, 500.0]
    assert [p.concurrency for p in parts] == [25, 25]
    assert parts[0].seed != parts[1].seed
    a, b = LoadResult(parts[0]), LoadResult(parts[1])
    a.accepted, a.elapsed, a.errors = 51, 2.0, {"503": 1}
    b.accepted, b.elapsed, b.errors = 50, 3.0, {"503": 2}
    a.accept_latency.record(0.01)
    b.accept_latency.record(0.02)
    merged = merge_loads([a, b])
    assert (merged.accepted, merged.elapsed, merged.errors) == (101, 3.0, {"503": 3})
    assert merged.accept_latency.count == 2


def test_config_on_postgres_names_the_instance() -> None:
    text = config_text(Path("/tmp/x.db"), 2776, 10, False, dsn="postgresql://u@h/db",
                       instance="b")
    assert 'backend = "postgres"' in text and 'name = "b"' in text and "/tmp/x.db" not in text


async def test_bench_runs_two_instances_on_postgres() -> None:
    server = start_or_skip()  # the bench's --dsn: a server of the test's own
    try:
        options = BenchOptions(scenarios=("a",), duration=None, count=60, receipt_wait=30,
                               setups=(("postgres", 2),), dsn=server.admin_dsn)
        [result] = await run_bench(options)
    finally:
        server.discard()
    assert "[PostgreSQL, 2 instances]" in result.scenario.title
    assert result.load.accepted == 60 and result.load.errors_total == 0
    assert result.load.receipts == 60
    assert result.relayed_total >= 60
