"""Issue 19 item 6: consent records (time, source, scope) with an API to record and read them,
marketing to Kazakhstan refused without one when the profile says so (the strict profile), and
removed opt-outs recorded with who and when."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.policy.profiles import load_profiles
from tests.helpers import AUTH, Running, running

ROOT = Path(__file__).resolve().parents[2]
STRICT = load_profiles(ROOT / "config" / "countries" / "strict")
KZ = "+77011234567"
XK = "+38344123456"
# Wednesday 14 January 2026, 12:00 in Kazakhstan (UTC+5): inside the strict 10:00-18:00 window.
NOON_KZ = datetime(2026, 1, 14, 7, 0, tzinfo=UTC).timestamp()
BANK = {"Authorization": "Bearer bank-key"}


async def call(r: Running, method: str, path: str, body: Any = None,
               headers: dict[str, str] = AUTH) -> tuple[int, Any]:
    async with r.http.request(method, f"{r.base}{path}", json=body, headers=headers) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


@pytest.fixture
async def r(tmp_path: Path) -> Any:
    senders = {"registered_senders": {"KZ": ["ACME"]}}
    async with running(tmp_path, shop=senders, bank=senders) as run:
        assert run.app.acceptor.policy is not None
        run.app.acceptor.policy.profiles = STRICT
        run.app.acceptor.policy.clock = lambda: NOON_KZ
        yield run


async def test_marketing_to_kazakhstan_needs_a_recorded_consent(r: Running) -> None:
    offer = {"to": KZ, "from": "ACME", "class": "marketing",
             "text": "Winter sale -20%. To unsubscribe: shop.kz/u"}
    status, data = await r.post(offer)
    assert (status, data["error"]["code"]) == (403, "consent_required")
    status, data = await r.post({**offer, "class": "transactional"})
    assert status == 202  # transactional needs no marketing consent
    status, data = await call(r, "POST", "/v1/consents", {
        "number": KZ, "scope": "marketing", "source": "web form /signup",
        "consented_at": "2026-01-10T08:30:00+05:00"})
    assert status == 201
    assert data["number"] == KZ and data["scope"] == "marketing"
    assert data["consented_at"] == "2026-01-10T03:30:00.000Z"
    status, _ = await r.post(offer)
    assert status == 202
    # Another account's consent does not count for this one.
    async with r.http.post(f"{r.base}/v1/messages", json=offer, headers=BANK) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (403, "consent_required")
    status, data = await call(r, "GET", f"/v1/consents?number=%2B{KZ[1:]}")
    assert status == 200 and [c["source"] for c in data["consents"]] == ["web form /signup"]
    status, data = await call(r, "GET", "/v1/consents", headers=BANK)
    assert data == {"consents": []}


async def test_scope_all_counts_for_marketing(r: Running) -> None:
    status, _ = await call(r, "POST", "/v1/consents", {"number": KZ, "scope": "all",
                                                       "source": "paper form #12"})
    assert status == 201
    status, _ = await r.post({"to": KZ, "from": "ACME", "class": "marketing",
                              "text": "News. Unsubscribe: shop.kz/u"})
    assert status == 202


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"number": KZ, "source": "x", "scope": "promo"}, 400, "scope"),
    ({"number": KZ}, 400, "source"),
    ({"number": KZ, "source": "   "}, 400, "source"),
    ({"number": KZ, "source": "x" * 201}, 400, "source"),
    ({"number": KZ, "source": "x", "consented_at": "2099-01-01T00:00:00Z"}, 400, "future"),
    ({"number": KZ, "source": "x", "consented_at": "2026-01-01T00:00:00"}, 400, "offset"),
    ({"number": KZ, "source": "x", "consented_at": "yesterday"}, 400, "ISO 8601"),
    ({"number": KZ, "source": "x", "extra": 1}, 400, "unknown field 'extra'"),
    ({"number": "12345", "source": "x"}, 422, "invalid_number"),
    ([1, 2], 400, "JSON object"),
])
async def test_consent_validation(r: Running, body: Any, status: int, needle: str) -> None:
    got, data = await call(r, "POST", "/v1/consents", body)
    assert got == status
    assert needle in data["error"]["message"] or needle == data["error"]["code"]


async def test_removed_optouts_are_recorded_with_who_and_when(r: Running) -> None:
    status, _ = await call(r, "POST", "/v1/optouts", {"number": XK})
    assert status == 201
    status, _ = await call(r, "DELETE", f"/v1/optouts/%2B{XK[1:]}?by=alice")
    assert status == 204
    status, data = await call(r, "DELETE", f"/v1/optouts/%2B{XK[1:]}")
    assert status == 404
    status, data = await call(r, "GET", "/v1/optouts/removals")
    assert status == 200
    [removal] = data["removals"]
    assert removal["number"] == XK and removal["source"] == "api"
    assert removal["removed_by"] == "api:alice"
    assert removal["opted_out_at"] <= removal["removed_at"]
    status, data = await call(r, "GET", "/v1/optouts/removals", headers=BANK)
    assert data == {"removals": []}  # per account
    status, data = await call(r, "DELETE", f"/v1/optouts/%2B{XK[1:]}?by=")
    assert status == 400


async def test_store_failures_are_503(r: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator.store.base import StoreError

    async def fail(*_args: Any) -> Any:
        raise StoreError("database is locked")

    for method in ("add_consent", "list_consents", "list_optout_removals"):
        monkeypatch.setattr(r.app.store, method, fail)
    for method, path, body in (("POST", "/v1/consents", {"number": KZ, "source": "x"}),
                               ("GET", "/v1/consents", None),
                               ("GET", "/v1/optouts/removals", None)):
        status, data = await call(r, method, path, body)
        assert (status, data["error"]["code"]) == (503, "store_unavailable"), path


async def test_endpoints_work_through_an_http_worker(tmp_path: Path) -> None:
    """With [http] workers the calls travel to the daemon's store (the RPC allowlist)."""
    import aiohttp

    from simulator.smsc import Smsc, SmscProfile
    from tests.helpers import daemon, write_daemon_config

    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, http_workers=1)
    try:
        async with daemon(config) as (_proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base}/v1/consents",
                                 json={"number": KZ, "source": "web form"}) as resp:
                assert resp.status == 201, await resp.text()
            async with http.get(f"{base}/v1/consents") as resp:
                assert [c["number"] for c in (await resp.json())["consents"]] == [KZ]
            async with http.post(f"{base}/v1/optouts", json={"number": XK}) as resp:
                assert resp.status == 201
            async with http.delete(f"{base}/v1/optouts/%2B{XK[1:]}?by=ops") as resp:
                assert resp.status == 204
            async with http.get(f"{base}/v1/optouts/removals") as resp:
                assert [x["removed_by"] for x in (await resp.json())["removals"]] == ["api:ops"]
    finally:
        await smsc.stop()
