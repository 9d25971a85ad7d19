"""Issue 19 item 9: one place decides whether a landline may get SMS, the profile's
landlines_supported (policy.rules.check_landline); numbers.py no longer refuses fixed lines
first, which made `landlines_supported = true` a dead rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aggregator.numbers import parse_destination
from aggregator.policy.profiles import bundled_profiles
from aggregator.policy.rules import check_landline
from tests.helpers import running

XK = bundled_profiles()["XK"]
XK_LANDLINE = "+38338123456"
DE_LANDLINE = "+4930123456"  # no profile for Germany


def test_check_landline_is_the_one_decision() -> None:
    assert parse_destination(XK_LANDLINE).number_type == "fixed_line"
    assert check_landline(XK, "mobile") is None
    refused = check_landline(XK, "fixed_line")
    assert refused is not None and (refused.status, refused.code) == (422, "not_mobile")
    assert check_landline(dataclasses.replace(XK, landlines_supported=True), "fixed_line") is None
    assert check_landline(None, "fixed_line") is not None  # no profile: not supported
    assert check_landline(None, "fixed_line_or_mobile") is None


async def test_landlines_supported_true_lets_a_landline_through(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        body = {"from": "ACME", "text": "Your order shipped"}
        status, data = await r.post({**body, "to": XK_LANDLINE})
        assert (status, data["error"]["code"]) == (422, "not_mobile")
        assert "Kosovo" in data["error"]["message"]
        status, data = await r.post({**body, "to": DE_LANDLINE})
        assert (status, data["error"]["code"]) == (422, "not_mobile")
        assert r.app.acceptor.policy is not None
        r.app.acceptor.policy.profiles = {"XK": dataclasses.replace(XK, landlines_supported=True)}
        status, data = await r.post({**body, "to": XK_LANDLINE})
        assert status == 202, data
        await r.wait_status(data["id"], {"delivered"})
