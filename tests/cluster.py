"""The configuration of one instance of a test cluster: smsagg on a shared PostgreSQL store,
one provider (the simulator SMSC), short retries and reconnects."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import AUTH


def cluster_config(path: Path, dsn: str, instance: str, smsc_port: int, *, lease: float,
                   binds: int, window: int = 10, max_tps: float = 100,
                   smpp_port: int | None = None) -> Path:
    """Write DIR/smsagg.toml for `instance` (DIR is made); with `smpp_port`, an [smpp] server
    there and SMPP credentials (shop/secret) for the account."""
    path.mkdir()
    smpp = f'[smpp]\nlisten = "127.0.0.1:{smpp_port}"\n' if smpp_port is not None else ""
    credentials = 'system_id = "shop"\npassword = "secret"\n' if smpp_port is not None else ""
    config = path / "smsagg.toml"
    config.write_text(f"""
[http]
listen = "127.0.0.1:0"
{smpp}[store]
backend = "postgres"
dsn = "{dsn}"
lease_seconds = {lease}
[instance]
name = "{instance}"
[messages]
retry_min = 0.05
retry_max = 0.5
[[accounts]]
name = "shop"
api_key = "{AUTH['Authorization'].split()[1]}"
{credentials}[[providers]]
name = "sim"
host = "127.0.0.1"
port = {smsc_port}
system_id = "smsagg"
password = "pw"
binds = {binds}
window = {window}
max_tps = {max_tps}
reconnect_min = 0.05
reconnect_max = 0.5
[[routes]]
prefixes = ["*"]
providers = ["sim"]
""")
    return config
