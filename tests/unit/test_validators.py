"""One validator for the three kinds of TOML file (issue 21 item 5): the daemon's configuration,
the country profiles and the simulator's SMSC profiles are all read by aggregator.tomlcheck's
Reader; and aggregator.config no longer imports aggregator.auth (the cycle is gone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator import config as config_module
from aggregator.config import ConfigError, parse_config
from aggregator.policy import profiles as country_profiles
from aggregator.policy.profiles import ProfileError as CountryProfileError
from aggregator.policy.profiles import parse_profile
from aggregator.tomlcheck import Reader
from simulator.profiles import ProfileError, load_profiles, parse_profiles
from tests.config_helpers import minimal

ROOT = Path(__file__).resolve().parents[2]


def config_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "smsagg.toml")
    return info.value.problems


def country_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(CountryProfileError) as info:
        parse_profile({"region": "XK", "name": "Kosovo", "timezone": "Europe/Belgrade"} | data,
                      "XK.toml")
    return info.value.problems


def test_config_and_country_profiles_share_the_reader() -> None:
    assert config_module.Reader is Reader and country_profiles.Reader is Reader


def test_importing_the_config_does_not_import_auth() -> None:
    """auth needs the config's AccountConfig; the config needs only the digest function, which
    lives in aggregator.credentials: no import goes back."""
    code = "import sys, aggregator.config; print('aggregator.auth' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=True)
    assert done.stdout.strip() == "False"
    assert "TYPE_CHECKING" not in (ROOT / "aggregator" / "auth.py").read_text(encoding="utf-8")


def test_numbers_are_checked_alike_everywhere() -> None:
    """The shared number check: finite, and the whole bound named."""
    data = minimal()
    data["store"]["account_pending_share"] = 1.5
    data["routes"][0]["max_tps"] = float("inf")
    data["accounts"][0]["max_tps"] = 0
    assert config_problems(data) == [
        "smsagg.toml: store.account_pending_share: must be a number > 0 and <= 1, got 1.5",
        "smsagg.toml: accounts[0].max_tps: must be a number > 0, got 0",
        "smsagg.toml: routes[0].max_tps: must be a finite number, got inf",
    ]
    assert country_problems({"content": {"max_uppercase_ratio": float("nan")},
                             "frequency": {"min_interval_hours": -1}}) == [
        "XK.toml: content.max_uppercase_ratio: must be a finite number, got nan",
        "XK.toml: frequency.min_interval_hours: must be a number >= 0, got -1",
    ]


def test_a_simulator_profile_reports_every_problem_at_once() -> None:
    data = {"smsc": [
        {"name": "A", "port": 0, "max_tps": "fast", "latency": True},
        {"name": "B", "port": 70000, "bogus": 1},
    ]}
    with pytest.raises(ProfileError) as info:
        parse_profiles(data, "f.toml")
    lines = str(info.value).splitlines()
    assert lines[:3] == [
        "f.toml: [[smsc]] #1 ('A'): key 'latency': expected a number, got true",
        "f.toml: [[smsc]] #1 ('A'): key 'max_tps': expected a number, got 'fast'",
        "f.toml: [[smsc]] #2 ('B'): key 'port': expected an integer 0..65535, got 70000",
    ]
    assert lines[3].startswith("f.toml: [[smsc]] #2 ('B'): unknown key 'bogus' (known keys: ")
    assert len(lines) == 4


def test_a_simulator_profile_that_is_not_utf8_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b'[[smsc]]\nname = "\xff"\nport = 0\n')
    with pytest.raises(ProfileError, match=r"byte 17: file is not valid UTF-8"):
        load_profiles(path)
