"""End to end: the real daemon (App) against the real simulator SMSC on ephemeral ports."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aggregator.model import MessageStatus, ReceiptUpdate
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import callback_sink, running, wait_for

KOSOVO_MOBILE = "+38344123456"


async def test_message_is_delivered_and_callback_fires(tmp_path: Path) -> None:
    async with running(tmp_path) as r, callback_sink() as sink:
        status, body = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "Hello",
                                     "callback_url": sink.url, "reference": "order-1"})
        assert status == 202
        assert body["status"] == "accepted" and body["segments"] == 1
        assert body["encoding"] == "gsm7"
        await sink.wait_count(1)
        cb = sink.received[0]
        assert cb["id"] == body["id"] and cb["status"] == "delivered"
        assert cb["reference"] == "order-1" and cb["error"] is None and cb["done_at"]
        _, view = await r.get(body["id"])
        assert view["status"] == "delivered" and view["provider"] == "sim"
        assert view["to"] == KOSOVO_MOBILE and view["from"] == "ACME"
        assert view["submitted_at"] and view["done_at"]
        sent = r.smsc.received[-1]
        assert sent.destination == KOSOVO_MOBILE.lstrip("+") and sent.source == "ACME"


async def test_long_message_goes_as_three_parts_with_one_udh_reference(tmp_path: Path) -> None:
    text = ("0123456789" * 40)  # 400 GSM-7 characters: 153 + 153 + 94
    async with running(tmp_path) as r:
        status, body = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": text})
        assert status == 202 and body["segments"] == 3
        await r.wait_status(body["id"], {"delivered"})
        parts = [s for s in r.smsc.received if s.esm_class & 0x40]
        assert len(parts) == 3
        refs = {p.short_message[3] for p in parts}
        assert len(refs) == 1
        by_seq = {}
        for p in parts:
            udh = p.short_message[:6]
            assert udh[:3] == b"\x05\x00\x03" and udh[4] == 3
            by_seq[udh[5]] = p.short_message[6:]
        assert sorted(by_seq) == [1, 2, 3]
        assert [len(by_seq[i]) for i in (1, 2, 3)] == [153, 153, 94]
        assert b"".join(by_seq[i] for i in (1, 2, 3)).decode("ascii") == text


async def test_multipart_is_delivered_only_after_every_part_receipt(tmp_path: Path) -> None:
    async with running(tmp_path, SmscProfile(receipts=False)) as r:
        status, body = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "x" * 400})
        assert status == 202
        await r.wait_status(body["id"], {"submitted"})
        parts = await r.app.store.segments_of(body["id"])
        assert [p[0] for p in parts] == [1, 2, 3]
        for seq, provider, provider_id, _ in parts:
            await r.app.receipts.apply(ReceiptUpdate(provider, provider_id,
                                                     MessageStatus.DELIVERED, None, time.time()))
            _, view = await r.get(body["id"])
            expected = "delivered" if seq == 3 else "submitted"
            assert view["status"] == expected, f"after receipt {seq}"


async def test_window_is_never_exceeded(tmp_path: Path) -> None:
    # Slow answers keep submits outstanding, so the window is the only thing limiting them.
    async with running(tmp_path, SmscProfile(latency=0.05), binds=2, window=3) as r:
        ids = await r.post_many(60, first=100000, tag="n")
        await r.smsc.wait_for_submits(60, 20)
        for mid in ids:
            await r.wait_status(mid, {"delivered"})
        per_bind = [s.max_outstanding for s in r.smsc.bind_stats.values()]
        assert max(per_bind) == 3, per_bind  # used to the full, never beyond
        assert len([s for s in r.smsc.bind_stats.values() if s.submits]) == 2


async def test_throttled_answers_slow_down_and_nothing_fails(tmp_path: Path) -> None:
    async with running(tmp_path, SmscProfile(max_tps=50), max_tps=1000) as r:
        async def one(i: int) -> str:
            status, body = await r.post({"to": f"+38344{200000 + i}", "from": "ACME",
                                         "text": "t"})
            assert status == 202
            return str(body["id"])

        ids = await asyncio.gather(*(one(i) for i in range(200)))
        for mid in ids:
            await r.wait_status(mid, {"delivered"}, timeout=30)
        assert r.smsc.throttled_total > 0  # the operator did push back
        assert r.app.pools["sim"].bucket.rate < 1000  # and we slowed down


async def test_hex_ids_in_responses_match_decimal_ids_in_receipts(tmp_path: Path) -> None:
    async with running(tmp_path, SmscProfile(receipt_id_format="decimal"),
                       extra_provider={"receipt_id": "hex_to_dec"}) as r:
        status, body = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "hi"})
        assert status == 202
        await r.wait_status(body["id"], {"delivered"})


async def test_undeliverable_receipt_marks_message_undeliverable(tmp_path: Path) -> None:
    async with running(tmp_path, SmscProfile(undeliverable_ratio=1.0)) as r, \
            callback_sink() as sink:
        status, _body = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "hi",
                                     "callback_url": sink.url})
        assert status == 202
        await sink.wait_count(1)
        assert sink.received[0]["status"] == "undeliverable"
        assert "UNDELIV" in sink.received[0]["error"]


async def test_idempotency_key_replays_the_first_result(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        msg = {"to": KOSOVO_MOBILE, "from": "ACME", "text": "once"}
        s1, b1 = await r.post(msg, headers={"Idempotency-Key": "k-1"})
        s2, b2 = await r.post(msg, headers={"Idempotency-Key": "k-1"})
        assert s1 == s2 == 202 and b1 == b2
        await r.wait_status(b1["id"], {"delivered"})
        assert sum(1 for s in r.smsc.received if s.short_message == b"once") == 1
        s3, b3 = await r.post(msg, headers={"Idempotency-Key": "k-2"})
        assert s3 == 202 and b3["id"] != b1["id"]


async def test_unicode_text_is_ucs2_and_transliteration_keeps_gsm7(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        s1, b1 = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "Привет"})
        assert s1 == 202 and b1["encoding"] == "ucs2"
        smart = "“Quoted” – dash…"
        s2, b2 = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": smart})
        assert s2 == 202 and b2["encoding"] == "ucs2"
        s3, b3 = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": smart,
                               "transliterate": True})
        assert s3 == 202 and b3["encoding"] == "gsm7"
        await r.wait_status(b1["id"], {"delivered"})
        ucs2 = next(s for s in r.smsc.received if s.data_coding == 8)
        assert ucs2.short_message.decode("utf-16-be") == "Привет"


async def test_readyz_and_healthz_and_metrics(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        async with r.http.get(f"{r.base}/healthz") as resp:
            assert resp.status == 200
        async with r.http.get(f"{r.base}/readyz") as resp:
            assert resp.status == 200
        _status, body = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "m"})
        await r.wait_status(body["id"], {"delivered"})
        async with r.http.get(f"{r.base}/metrics") as resp:
            text = await resp.text()
        assert "smsagg_messages_accepted_total" in text
        assert 'smsagg_submits_total{provider="sim",status="ok"}' in text
        assert 'smsagg_bind_up{bind="1",provider="sim"} 1.0' in text
        await r.smsc.stop()
        await wait_for(lambda: r.app.pools["sim"].binds_up == 0, what="binds down")
        async with r.http.get(f"{r.base}/readyz") as resp:
            assert resp.status == 503
            assert "no provider bind is up" in (await resp.json())["problems"]


async def test_lost_connection_requeues_and_delivers_after_reconnect(tmp_path: Path) -> None:
    async with running(tmp_path, SmscProfile(latency=0.2)) as r:
        ids = []
        for i in range(20):
            _, body = await r.post({"to": f"+38344{300000 + i}", "from": "ACME", "text": "r"})
            ids.append(body["id"])
        await r.smsc.wait_for_submits(5, 10)
        port = r.smsc.port
        await r.smsc.stop()  # answers in flight are lost with the connection
        await wait_for(lambda: r.app.pools["sim"].binds_up == 0, what="binds down")
        r.smsc = Smsc(SmscProfile(), port=port)
        await r.smsc.start()
        for mid in ids:
            await r.wait_status(mid, {"delivered"}, timeout=30)


async def test_concurrent_burst_all_final(tmp_path: Path) -> None:
    async with running(tmp_path) as r, callback_sink() as sink:
        async def one(i: int) -> str:
            status, body = await r.post({"to": f"+38344{400000 + i}", "from": "ACME",
                                         "text": f"b{i}", "callback_url": sink.url})
            assert status == 202
            return str(body["id"])

        ids = await asyncio.gather(*(one(i) for i in range(300)))
        await sink.wait_count(300, timeout=30)
        assert {c["id"] for c in sink.received} == set(ids)
        assert all(c["status"] == "delivered" for c in sink.received)


async def test_message_past_its_validity_expires(tmp_path: Path) -> None:
    from aggregator.model import Encoding, Message, Sender, SenderKind

    async with running(tmp_path) as r:
        now = time.time()
        old = Message(id="e" * 32, account="shop", to=KOSOVO_MOBILE,
                      sender=Sender("ACME", SenderKind.ALPHANUMERIC), text="late",
                      encoding=Encoding.GSM7, segments=1, concat_ref=1, created_at=now - 120,
                      next_attempt_at=now, expires_at=now - 1)
        await r.app.store.accept(old, None)
        r.app.dispatcher.wake()
        view = await r.wait_status(old.id, {"expired"})
        assert "validity" in view["error"]
        assert not any(s.short_message == b"late" for s in r.smsc.received)


async def test_validity_and_class_are_accepted_and_checked(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        status, body = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "v",
                                     "validity": 3600, "class": "marketing"})
        assert status == 202
        _, view = await r.get(body["id"])
        assert view["class"] == "marketing"
        for bad in ({"validity": 5}, {"validity": "1h"}, {"class": "promo"}):
            status, data = await r.post({"to": KOSOVO_MOBILE, "from": "ACME", "text": "v",
                                         **bad})
            assert status == 400 and data["error"]["code"] == "bad_request"
