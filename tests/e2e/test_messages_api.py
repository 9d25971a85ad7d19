"""GET /v1/messages (filters, cursor pagination), DELETE /v1/messages/{id} (cancel before
submission) and send_at (scheduled sending, still under the country's sending window), against
the real daemon and simulator."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from tests.helpers import (
    AUTH,
    DEADLINE,
    Running,
    Start,
    callback_sink,
    daemon,
    metric_samples,
    metric_value,
    running,
    wait_for,
    write_daemon_config,
)

BANK = {"Authorization": "Bearer bank-key"}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


async def _list(run: Running, query: str = "", headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, Any]]:
    async with run.http.get(f"{run.base}/v1/messages{query}", headers=headers or AUTH) as r:
        return r.status, await r.json()


async def _delete(run: Running, message_id: str,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with run.http.delete(f"{run.base}/v1/messages/{message_id}",
                               headers=headers or AUTH) as r:
        return r.status, await r.json()


async def _send(run: Running, to: str, **fields: Any) -> dict[str, Any]:
    status, body = await run.post({"to": to, "from": "DEMO", "text": "hello", **fields})
    assert status == 202, body
    return body


async def test_list_pages_newest_first_with_filters(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        ids = []
        for i in range(5):
            body = await _send(run, f"+3834412345{i}", reference="even" if i % 2 == 0 else "odd")
            ids.append(body["id"])
        newest_first = ids[::-1]

        seen: list[str] = []
        cursor = ""
        for expected in (2, 2, 1):
            status, page = await _list(run, f"?limit=2{cursor}")
            assert status == 200, page
            assert len(page["messages"]) == expected
            seen += [m["id"] for m in page["messages"]]
            cursor = f"&cursor={page['next_cursor']}" if page["next_cursor"] else ""
        assert page["next_cursor"] is None
        assert seen == newest_first

        _, page = await _list(run, "?reference=even")
        assert [m["id"] for m in page["messages"]] == newest_first[::2]
        _, page = await _list(run, "?to=%2B38344123453")
        assert [m["id"] for m in page["messages"]] == [ids[3]]
        await run.wait_status(ids[0], {"delivered"})
        _, page = await _list(run, "?status=delivered&limit=1000")
        assert ids[0] in {m["id"] for m in page["messages"]}
        assert all(m["status"] == "delivered" for m in page["messages"])
        _, page = await _list(run, f"?until={_iso(time.time() - 3600)}")
        assert page["messages"] == []
        _, page = await _list(run, f"?since={_iso(time.time() - 3600)}")
        assert len(page["messages"]) == 5

        _, page = await _list(run, headers=BANK)  # another account sees none of them
        assert page == {"messages": [], "next_cursor": None}

        for query, code in (("?limit=0", 400), ("?limit=1001", 400), ("?limit=x", 400),
                            ("?cursor=nope", 400), ("?status=lost", 400),
                            ("?since=yesterday", 400), ("?since=2026-01-01T00:00:00", 400),
                            ("?colour=red", 400), ("?to=123", 422)):
            status, body = await _list(run, query)
            assert status == code, (query, body)
        status, _ = await _list(run, headers={"Authorization": "Bearer wrong"})
        assert status == 401


async def test_cancel_before_submission_then_409_after(tmp_path: Path) -> None:
    async with callback_sink() as sink, running(tmp_path) as run:
        later = _iso(time.time() + 3600)
        body = await _send(run, "+38344123456", send_at=later, callback_url=sink.url,
                           reference="order-9")
        assert body["status"] == "scheduled"
        status, view = await _delete(run, body["id"])
        assert status == 200, view
        assert view["status"] == "cancelled"
        assert view["done_at"] is not None
        await sink.wait_count(1)
        assert sink.received[0]["id"] == body["id"]
        assert sink.received[0]["status"] == "cancelled"
        assert sink.received[0]["reference"] == "order-9"

        status, again = await _delete(run, body["id"])  # repeating it answers the same
        assert status == 200 and again["status"] == "cancelled"
        _, page = await _list(run, "?status=cancelled")
        assert [m["id"] for m in page["messages"]] == [body["id"]]

        sent = await _send(run, "+38344123457")
        await run.wait_status(sent["id"], {"delivered"})
        status, err = await _delete(run, sent["id"])
        assert status == 409
        assert err["error"]["code"] == "not_cancellable"

        assert (await _delete(run, "0" * 32))[0] == 404
        assert (await _delete(run, body["id"], headers=BANK))[0] == 404  # not its message
        destinations = {s.destination.lstrip("+") for s in run.smsc.received}
        assert "38344123457" in destinations
        assert "38344123456" not in destinations  # the cancelled one never left
        assert run.app.store.pending == 0


async def _send_at_count(run: Running) -> float:
    async with run.http.get(f"{run.base}/metrics") as r:
        samples = metric_samples(await r.text())
    return metric_value(samples, "smsagg_messages_send_at_total") or 0.0


async def test_send_at_holds_the_message_until_then(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        counted = await _send_at_count(run)
        send_at = time.time() + 1.5
        body = await _send(run, "+38344123456", send_at=_iso(send_at))
        assert body["status"] == "scheduled"
        view = await run.wait_status(body["id"], {"delivered"})
        submitted = datetime.fromisoformat(view["submitted_at"]).timestamp()
        assert submitted >= send_at - 0.001

        past = await _send(run, "+38344123457", send_at=_iso(time.time() - 60))
        assert past["status"] == "accepted"  # a time gone by: at once

        status, err = await run.post({"to": "+38344123458", "from": "DEMO", "text": "x",
                                      "validity": 600, "send_at": _iso(time.time() + 700)})
        assert status == 400 and "validity" in err["error"]["message"]
        for bad in ("tomorrow", "2030-01-01T10:00:00", 5):
            status, err = await run.post({"to": "+38344123458", "from": "DEMO", "text": "x",
                                          "send_at": bad})
            assert status == 400, (bad, err)

        async with run.http.post(f"{run.base}/v1/messages/batch", headers=AUTH, json={
            "messages": [{"to": "+38344123459", "from": "DEMO", "text": "x",
                          "send_at": _iso(time.time() + 3600)},
                         {"to": "+38344123450", "from": "DEMO", "text": "x",
                          "send_at": "noon"}]}) as r:
            results = (await r.json())["results"]
        assert results[0]["state"] == "scheduled"
        assert results[1]["status"] == 400
        assert await _send_at_count(run) == counted + 2  # the two stored for later


async def test_send_at_still_waits_for_the_sending_window(tmp_path: Path) -> None:
    """Marketing to Kosovo (window 09:00-20:00 Europe/Belgrade): a send_at inside the window
    is kept; one at 03:00 moves to 09:00 that day."""
    zone = ZoneInfo("Europe/Belgrade")
    day = (datetime.now(zone) + timedelta(days=2)).date()
    inside = datetime(day.year, day.month, day.day, 12, 0, tzinfo=zone)
    outside = datetime(day.year, day.month, day.day, 3, 0, tzinfo=zone)
    opening = datetime(day.year, day.month, day.day, 9, 0, tzinfo=zone)
    async with running(tmp_path) as run:
        kept = await _send(run, "+38344123456", send_at=inside.isoformat(), validity=604800,
                           **{"class": "marketing"})
        moved = await _send(run, "+38344123457", send_at=outside.isoformat(), validity=604800,
                            **{"class": "marketing"})
        assert kept["status"] == moved["status"] == "scheduled"
        stored_kept = await run.app.store.get_message("shop", kept["id"])
        stored_moved = await run.app.store.get_message("shop", moved["id"])
        assert stored_kept is not None and stored_moved is not None
        assert stored_kept.next_attempt_at == inside.timestamp()
        assert stored_moved.next_attempt_at == opening.timestamp()


async def test_cancelled_smpp_message_gets_a_deleted_receipt(tmp_path: Path) -> None:
    """A message submitted over SMPP and cancelled over HTTP before any provider took it: the
    ESME gets its receipt with stat:DELETED and message_state 4 (DELETED)."""
    from tests.smpp_helpers import SHOP, Upstream, bind, send, submit, tlv

    async with running(tmp_path, smpp={}, shop=SHOP) as run:
        await run.smsc.stop()  # no provider: the message waits, still cancellable
        await wait_for(lambda: all(p.binds_up == 0 for p in run.app.pools.values()),
                       what="binds down")
        up = Upstream()
        conn = await bind(run, up=up)
        resp = await send(conn, submit(registered_delivery=1))
        assert int(resp.command_status) == 0
        deadline = time.monotonic() + DEADLINE
        while True:  # a dispatch attempt may hold it as queued for a moment: 409 meanwhile
            status, view = await _delete(run, resp.message_id)
            if status == 200 or time.monotonic() > deadline:
                break
            assert status == 409, view
            await asyncio.sleep(0.05)
        assert status == 200 and view["status"] == "cancelled", view
        receipt = await up.receipt()
        assert tlv(receipt, 0x001E) == resp.message_id
        assert tlv(receipt, 0x0427) == 4
        assert "stat:DELETED" in receipt.short_message


async def test_list_and_cancel_through_an_ingress_worker(tmp_path: Path, start_smsc: Start) -> None:
    """With [http] workers = 1 the worker answers: the filter and the cancel cross to the
    daemon's store over the ingress RPC."""
    smsc = await start_smsc()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, http_workers=1)
    async with daemon(config) as (_, base), aiohttp.ClientSession(headers=AUTH) as http:
        later = _iso(time.time() + 3600)
        async with http.post(f"{base}/v1/messages", json={
                "to": "+38344123456", "from": "DEMO", "text": "x", "send_at": later,
                "reference": "w"}) as r:
            assert r.status == 202, await r.text()
            message_id = (await r.json())["id"]
        async with http.get(f"{base}/v1/messages?reference=w&status=scheduled") as r:
            assert r.status == 200, await r.text()
            assert [m["id"] for m in (await r.json())["messages"]] == [message_id]
        async with http.delete(f"{base}/v1/messages/{message_id}") as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["status"] == "cancelled"
        async with http.get(f"{base}/v1/messages?status=scheduled") as r:
            assert (await r.json())["messages"] == []
