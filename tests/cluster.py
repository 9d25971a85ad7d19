"""The configuration of one instance of a test cluster: smsagg on a shared PostgreSQL store,
one provider (the simulator SMSC), short retries and reconnects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulator.harness import QUICK_RECONNECT, QUICK_RETRIES, daemon_config, write_config
from tests.helpers import SHOP


def cluster_config(path: Path, dsn: str, instance: str, smsc_port: int, *, lease: float,
                   binds: int, window: int = 10, max_tps: float = 100,
                   smpp_port: int | None = None) -> Path:
    """Write DIR/smsagg.toml for `instance` (DIR is made); with `smpp_port`, an [smpp] server
    there and SMPP credentials (shop/secret) for the account."""
    path.mkdir()
    account = dict(SHOP)
    sections: dict[str, dict[str, Any]] = {"instance": {"name": instance},
                                           "messages": QUICK_RETRIES}
    if smpp_port is not None:
        sections["smpp"] = {"listen": f"127.0.0.1:{smpp_port}"}
        account.update(system_id="shop", password="secret")
    return write_config(path / "smsagg.toml", daemon_config(
        smsc_port, {"backend": "postgres", "dsn": dsn, "lease_seconds": lease}, [account],
        provider={"binds": binds, "window": window, "max_tps": max_tps, **QUICK_RECONNECT},
        sections=sections))
