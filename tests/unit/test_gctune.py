"""The daemon and ingress workers raise the youngest GC generation's threshold (gctune.py)."""

from __future__ import annotations

import ast
import gc
from collections.abc import Iterator
from pathlib import Path

from aggregator.gctune import YOUNG_THRESHOLD, tune_collector

CLI = Path(__file__).resolve().parents[2] / "aggregator" / "cli.py"


def test_tune_collector_raises_only_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        tune_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 11, 12)
    finally:
        gc.set_threshold(*before)


def _calls(function: ast.FunctionDef) -> Iterator[str]:
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            yield node.func.id


def test_the_daemon_and_ingress_workers_tune_it_before_their_loop() -> None:
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    commands = {f.name: list(_calls(f)) for f in tree.body if isinstance(f, ast.FunctionDef)}
    for name in ("cmd_run", "cmd_ingress_worker"):
        calls = commands[name]
        assert "tune_collector" in calls and calls.index("tune_collector") < calls.index(
            "run_loop"), name
