"""Issue 19 item 11: [messages] keep_text (always | until_final | never) and retention_days:
the retention sweep blanks texts no longer kept and purges final messages' metadata after
retention_days. Runs the real daemon (writer process) and reads the database file directly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aggregator.config import ConfigError
from simulator.handsets import Handset, HandsetBook
from simulator.smsc import SmscProfile
from tests.helpers import Running, make_config, running

DELIVERED_TO = "+38344123456"
ROAMING = "+38344123457"  # its receipt comes late: the message stays "submitted"
BOOK = HandsetBook({ROAMING: Handset(behaviour="roaming")})


def body(tmp_path: Path, message_id: str) -> str | None:
    with sqlite3.connect(tmp_path / "smsagg.db") as conn:
        row = conn.execute("SELECT body FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else str(row[0])


async def send(r: Running, to: str) -> str:
    status, data = await r.post({"to": to, "from": "ACME", "text": "Your code is 4321"})
    assert status == 202, data
    return str(data["id"])


def test_config_keys(tmp_path: Path) -> None:
    messages = make_config(tmp_path / "x.db", 1).messages
    assert (messages.keep_text, messages.retention_days) == ("always", 365)
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path / "x.db", 1, messages={"keep_text": "sometimes",
                                                    "retention_days": 0})
    assert "messages.keep_text" in str(err.value) and "messages.retention_days" in str(err.value)


@pytest.mark.parametrize(("keep_text", "delivered_kept", "submitted_kept"), [
    ("always", True, True),
    ("until_final", False, True),
    ("never", False, False),
])
async def test_keep_text(tmp_path: Path, keep_text: str, delivered_kept: bool,
                         submitted_kept: bool) -> None:
    profile = SmscProfile(handsets=BOOK, roaming_delay=600)
    async with running(tmp_path, profile, messages={"keep_text": keep_text}) as r:
        delivered = await send(r, DELIVERED_TO)
        submitted = await send(r, ROAMING)
        await r.wait_status(delivered, {"delivered"})
        await r.wait_status(submitted, {"submitted"})
        await r.app.retention.sweep()
        assert (body(tmp_path, delivered) == "Your code is 4321") is delivered_kept
        assert (body(tmp_path, submitted) == "Your code is 4321") is submitted_kept
        # The metadata stays: the message can still be read.
        status, data = await r.get(delivered)
        assert (status, data["status"]) == (200, "delivered")


async def test_retention_days_purge_edge(tmp_path: Path) -> None:
    profile = SmscProfile(handsets=BOOK, roaming_delay=600)
    async with running(tmp_path, profile, messages={"retention_days": 30}) as r:
        delivered = await send(r, DELIVERED_TO)
        pending = await send(r, ROAMING)
        await r.wait_status(delivered, {"delivered"})
        await r.app.store.add_optout("shop", DELIVERED_TO, "test", 0.0)  # a very old opt-out
        created = int(delivered[:12], 16) / 1000  # ids begin with their creation time
        r.app.retention.clock = lambda: created + 30 * 86400 - 1  # last second inside
        assert (await r.app.retention.sweep())[1] == 0
        assert body(tmp_path, delivered) is not None
        r.app.retention.clock = lambda: created + 30 * 86400 + 1  # first second outside
        assert (await r.app.retention.sweep())[1] == 1
        assert body(tmp_path, delivered) is None
        assert (await r.get(delivered))[0] == 404
        assert body(tmp_path, pending) is not None  # not final: never purged
        with sqlite3.connect(tmp_path / "smsagg.db") as conn:
            left = conn.execute("SELECT COUNT(*) FROM segments WHERE message_id = ?",
                                (delivered,)).fetchone()[0]
        assert left == 0
        # Opt-out records are kept (the Kosovo guide: at least 12 months).
        assert [n for n, *_ in await r.app.store.list_optouts("shop", None, 10)] == [
            DELIVERED_TO]
