"""`[store] writer` is gone (SQLite always writes from its writer process): a config that still
sets it loads, with a warning that says the key is ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aggregator.config import STORE_WRITER_IGNORED, load_config
from tests.helpers import ROOT, write_daemon_config


def test_an_old_writer_key_is_ignored_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "smsagg.toml"
    write_daemon_config(path, tmp_path / "smsagg.db", 2775)
    plain = path.read_text()
    for value in ("thread", "process"):
        path.write_text(plain.replace("[store]\n", f'[store]\nwriter = "{value}"\n', 1))
        assert load_config(path).store.ignored == (STORE_WRITER_IGNORED,)
        done = subprocess.run([sys.executable, "-m", "aggregator", "check-config", str(path)],
                              cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert "warning: [store] writer is ignored" in done.stderr
    path.write_text(plain)
    assert load_config(path).store.ignored == ()
