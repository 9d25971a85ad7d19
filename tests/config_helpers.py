"""A minimal valid daemon configuration for config tests, as TOML text and as parsed data."""

from __future__ import annotations

import tomllib
from typing import Any

MINIMAL = """
[http]
listen = "127.0.0.1:8080"

[store]
path = "smsagg.db"

[[accounts]]
name = "shop"
api_key = "shop-key"

[[providers]]
name = "sim"
host = "127.0.0.1"
port = 2776
system_id = "smsagg"
password = "pw"
binds = 2
window = 10
max_tps = 200

[[routes]]
prefixes = ["*"]
providers = ["sim"]
"""


def minimal() -> dict[str, Any]:
    return tomllib.loads(MINIMAL)
