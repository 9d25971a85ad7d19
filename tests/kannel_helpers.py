"""The daemon set up for a Kannel(-like) customer: an [smpp] server whose window is Kannel's
max-pending-submits, one account, the simulator SMSC as provider; and the numbers sent to."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import API_KEY

WINDOW = 50  # Kannel max-pending-submits = smsagg's [smpp] window


def write_config(path: Path, store: Path, smsc_port: int, smpp_port: int) -> None:
    path.write_text(f"""
[http]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[messages]
retry_min = 0.05
retry_max = 0.5
[smpp]
listen = "127.0.0.1:{smpp_port}"
window = {WINDOW}
[[accounts]]
name = "shop"
api_key = "{API_KEY}"
system_id = "shop"
password = "secret"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = {smsc_port}
system_id = "smsagg"
password = "pw"
binds = 2
window = 20
max_tps = 2000
reconnect_min = 0.05
reconnect_max = 0.5
[[routes]]
prefixes = ["*"]
providers = ["sim"]
""")


def number(i: int) -> str:
    return f"38344{700000 + i}"
