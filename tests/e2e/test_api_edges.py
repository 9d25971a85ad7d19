"""HTTP API edges found while writing the contract (docs/openapi.yaml) for the consent and
opt-out-removal endpoints and decimal message ids: each answered as the spec says, never a 500."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.helpers import AUTH, Start, daemon, post_messages, write_daemon_config


async def test_delete_on_the_removals_list_is_405(tmp_path: Path, start_smsc: Start) -> None:
    """/v1/optouts/removals is GET only; DELETE there is not a removal of a number
    'removals' (a 422 before)."""
    smsc = await start_smsc()
    write_daemon_config(tmp_path / "smsagg.toml", tmp_path / "smsagg.db", smsc.port)
    async with daemon(tmp_path / "smsagg.toml") as (_, base), \
            aiohttp.ClientSession(headers=AUTH) as http:
        async with http.delete(f"{base}/v1/optouts/removals") as r:
            assert r.status == 405, await r.text()
            assert r.headers["Allow"] == "GET, HEAD"
            assert (await r.json())["error"]["code"] == "method_not_allowed"
        async with http.get(f"{base}/v1/optouts/removals") as r:
            assert r.status == 200 and await r.json() == {"removals": []}
        async with http.delete(f"{base}/v1/optouts/%2B38344123456") as r:  # still a removal
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_consent_times_out_of_range_are_400(tmp_path: Path, start_smsc: Start) -> None:
    """Times that exist in their own zone but not in UTC (a 500 before), and times before
    1970 (which could not be shown back), are refused naming the field."""
    smsc = await start_smsc()
    write_daemon_config(tmp_path / "smsagg.toml", tmp_path / "smsagg.db", smsc.port)
    async with daemon(tmp_path / "smsagg.toml") as (_, base), \
            aiohttp.ClientSession(headers=AUTH) as http:
        for when in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z"):
            async with http.post(f"{base}/v1/consents", json={
                    "number": "+77011234567", "source": "form", "consented_at": when}) as r:
                body = await r.json()
                assert r.status == 400, (when, body)
                assert body["error"]["code"] == "bad_request"
                assert "consented_at" in body["error"]["message"]
        async with http.post(f"{base}/v1/consents", json={  # the edge: 1970 itself is fine
                "number": "+77011234567", "source": "form",
                "consented_at": "1970-01-01T00:00:00Z"}) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["consented_at"] == "1970-01-01T00:00:00.000Z"


async def test_consent_source_with_a_lone_surrogate_is_400(tmp_path: Path,
                                                           start_smsc: Start) -> None:
    """JSON allows "\\ud800", which cannot be stored as UTF-8: a 400 naming the field."""
    smsc = await start_smsc()
    write_daemon_config(tmp_path / "smsagg.toml", tmp_path / "smsagg.db", smsc.port)
    async with daemon(tmp_path / "smsagg.toml") as (_, base), \
            aiohttp.ClientSession(headers=AUTH) as http:
        body = b'{"number": "+77011234567", "source": "form \\ud800"}'
        async with http.post(f"{base}/v1/consents", data=body,
                             headers={"Content-Type": "application/json"}) as r:
            answer = await r.json()
            assert r.status == 400, answer
            assert answer["error"]["code"] == "bad_request"
            assert "source" in answer["error"]["message"]


async def test_decimal_ids_page_with_their_cursor(tmp_path: Path, start_smsc: Start) -> None:
    """An account with message_id_format = "decimal" gets decimal next_cursor values, and
    passing one back fetches the next page (400 "not one this API gave out" before)."""
    smsc = await start_smsc()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port)
    config.write_text(config.read_text().replace(
        'api_key = "shop-key"\n', 'api_key = "shop-key"\nmessage_id_format = "decimal"\n'))
    async with daemon(config) as (_, base), aiohttp.ClientSession(headers=AUTH) as http:
        sent = await post_messages(http, base, 5, first=830000, tag="p")
        async with http.get(f"{base}/v1/messages", params={"limit": "3"}) as r:
            first = await r.json()
            assert r.status == 200, first
        assert [m["id"] for m in first["messages"]] == sent[:1:-1]
        assert first["next_cursor"] == sent[2]
        async with http.get(f"{base}/v1/messages",
                            params={"limit": "3", "cursor": first["next_cursor"]}) as r:
            second = await r.json()
            assert r.status == 200, second
        assert [m["id"] for m in second["messages"]] == sent[1::-1]
        assert second["next_cursor"] is None
