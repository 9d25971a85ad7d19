"""Receipts an SMSC sends right behind its bind_resp (queued while the link was down) are
applied and acknowledged: every one gets its deliver_sm_resp on the connection it came on."""

from __future__ import annotations

from pathlib import Path

from simulator.smsc import SmscProfile
from tests.helpers import running, wait_for

N = 20


async def test_receipts_sent_right_after_the_bind_are_all_acknowledged(tmp_path: Path) -> None:
    # The receipts wait in the SMSC's queue while its links are down; on the next bind the
    # simulator sends them in the same write as the bind_resp.
    profile = SmscProfile(receipt_delay=2.0)
    async with running(tmp_path, profile, binds=1) as run:
        ids = []
        for i in range(N):
            status, body = await run.post({"to": f"+3834412{i:04d}", "from": "Shop",
                                           "text": f"hello {i}"})
            assert status == 202, body
            ids.append(body["id"])
        smsc = run.smsc
        await wait_for(lambda: smsc.accepted_total == N, what="submits at the SMSC")
        for message_id in ids:
            await run.wait_status(message_id, {"submitted"})
        smsc.abort()  # the links drop; receipts due meanwhile queue up at the SMSC
        await wait_for(lambda: smsc.pending_receipts == N, what="receipts queued at the SMSC")
        assert smsc.receipts_sent == 0, "receipt_delay elapsed before the links dropped"
        await smsc.start()
        await wait_for(lambda: smsc.receipts_acked == N, timeout=5.0,
                       what="deliver_sm_resp for every receipt sent right after the bind")
        for message_id in ids:
            await run.wait_status(message_id, {"delivered"})
        # Acknowledged the first time: nothing timed out and went out again.
        assert smsc.receipts_sent == N
        assert smsc.receipts_failed == 0
