"""The daemon set up for a Kannel(-like) customer: an [smpp] server whose window is Kannel's
max-pending-submits, one account, the simulator SMSC as provider; and the numbers sent to."""

from __future__ import annotations

from pathlib import Path

from simulator import harness
from tests.helpers import SHOP

WINDOW = 50  # Kannel max-pending-submits = smsagg's [smpp] window


def write_config(path: Path, store: Path, smsc_port: int, smpp_port: int) -> None:
    harness.write_config(path, harness.daemon_config(
        smsc_port, {"path": str(store)},
        [{**SHOP, "system_id": "shop", "password": "secret"}],
        provider={"window": 20, "max_tps": 2000, **harness.QUICK_RECONNECT},
        sections={"messages": harness.QUICK_RETRIES,
                  "smpp": {"listen": f"127.0.0.1:{smpp_port}", "window": WINDOW}}))


def number(i: int) -> str:
    return f"38344{700000 + i}"
