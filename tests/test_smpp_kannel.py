"""The [smpp] server with the PDUs a Kannel-like gateway sends (issue 16): receipts asked on a
long message's first part only, a window larger than smsagg's, query_sm and data_sm."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from aggregator import metrics
from aggregator.ingress.smpp import _receipt_mode
from tests.helpers import DEADLINE, Running, running
from tests.kannel_esme import KannelEsme, submit_body, tlv, udh8

MOBILE = "38344123456"
SHOP = {"system_id": "shop", "password": "secret"}
PARTS = [b"first part, ", b"second part, ", b"third part."]


@pytest.fixture
async def r(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(tmp_path, smpp={"window": 10, "reassembly_timeout": 5}, shop=SHOP,
                       prefixes=("+383",)) as run:
        yield run


async def esme(r: Running) -> KannelEsme:
    assert r.app.smpp is not None
    client = KannelEsme("127.0.0.1", r.app.smpp.port)
    await client.connect()
    return client


async def wait_receipt(client: KannelEsme, message_id: str) -> str:
    """The text of the first delivery receipt for message_id."""
    deadline = time.monotonic() + DEADLINE
    while True:
        for esm_class, receipted, text in client.delivers:
            if esm_class & 0x04 and receipted == message_id:
                return text
        assert time.monotonic() < deadline, f"no receipt for {message_id}: {client.delivers}"
        client.delivered.clear()
        try:
            await asyncio.wait_for(client.delivered.wait(), deadline - time.monotonic())
        except TimeoutError:
            continue


def kannel_part(i: int, *, sar: bool) -> bytes:
    """Part i (0-based) of 3 as Kannel sends it with dlr-mask set: registered_delivery 0x11
    (receipt, plus intermediate notification) on part 1, 0 on the others."""
    rd = 0x11 if i == 0 else 0
    if sar:
        tlvs = (tlv(0x020C, (77).to_bytes(2, "big")) + tlv(0x020E, bytes([3]))
                + tlv(0x020F, bytes([i + 1])))
        return submit_body(MOBILE, PARTS[i], registered_delivery=rd, tlvs=tlvs)
    return submit_body(MOBILE, udh8(0x42, 3, i + 1) + PARTS[i], esm_class=0x40,
                       registered_delivery=rd)


@pytest.mark.parametrize("sar", [False, True], ids=["udh", "sar"])
async def test_receipt_asked_on_the_first_part_only_gives_the_final_receipt(
        r: Running, sar: bool) -> None:
    client = await esme(r)
    # Pipelined, as Kannel sends them: part 1 is answered once the message is whole.
    answers = await asyncio.gather(*(client.submit(kannel_part(i, sar=sar)) for i in range(3)))
    assert [a.status for a in answers] == [0, 0, 0]
    ids = {a.message_id for a in answers}
    assert len(ids) == 1
    message_id = ids.pop()
    stored = await r.app.store.get_message("shop", message_id)
    assert stored is not None and stored.text == b"".join(PARTS).decode()
    assert stored.receipt_mode == 1  # part 3 completed it, with registered_delivery 0
    text = await wait_receipt(client, message_id)
    assert f"id:{message_id} " in text and "stat:DELIVRD" in text
    await client.close()


@pytest.mark.parametrize(
    ("modes", "expected"),
    [((0x11, 0, 0), 1), ((0, 0, 0x01), 1), ((0x12, 0, 0), 2), ((0x02, 0x01, 0), 1),
     ((0, 0, 0), 0)],
)
def test_a_long_message_asks_for_a_receipt_if_any_part_does(modes: tuple[int, ...],
                                                           expected: int) -> None:
    parts = [SimpleNamespace(registered_delivery=m) for m in modes]
    assert _receipt_mode(parts) == expected


# ---- a window larger than [smpp] window (item 7) ----------------------------------------------


def window_exceeded(r: Running) -> float:
    return metrics.smpp_window_exceeded.labels("shop")._value.get()


async def test_a_window_above_smpp_window_is_throttled_logged_once_and_counted(
        r: Running) -> None:
    before = window_exceeded(r)
    with capture_logs() as logs:
        first = await esme(r)
        for _ in range(2):  # Kannel with max-pending-submits 15 against [smpp] window 10
            answers = await asyncio.gather(*first.submit_burst(
                [submit_body(MOBILE, b"w") for _ in range(15)]))
            assert sorted(a.status for a in answers) == [0] * 10 + [0x58] * 5
        second = await esme(r)  # another session right away: the log is rate-limited
        answers = await asyncio.gather(*second.submit_burst(
            [submit_body(MOBILE, b"w") for _ in range(12)]))
        assert sorted(a.status for a in answers) == [0] * 10 + [0x58] * 2
    warnings = [e for e in logs if e["event"] == "smpp_window_exceeded"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["account"] == "shop" and warnings[0]["window"] == 10
    assert window_exceeded(r) - before == 12
    await first.close()
    await second.close()
