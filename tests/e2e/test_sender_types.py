"""Issue 19 item 5: sender types per country. Kosovo: "international long codes supported;
domestic long codes not available"; Kazakhstan: long codes international only ("N/A for
domestic"). A +383 sender to Kosovo was accepted before; now it is refused at accept time."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.policy.profiles import bundled_profiles, parse_profile
from tests.helpers import running

SHOP = {"registered_senders": {"KZ": ["ACME"]}}


def test_profiles_say_domestic_long_codes_are_unavailable() -> None:
    profiles = bundled_profiles()
    for region in ("XK", "KZ"):
        senders = profiles[region].senders
        assert senders.long_codes and not senders.domestic_long_codes, region
    default = parse_profile({"region": "XK", "name": "Kosovo", "timezone": "Europe/Belgrade"},
                            "XK.toml")
    assert default.senders.domestic_long_codes  # the key's default: no restriction


@pytest.mark.parametrize(("to", "sender", "code"), [
    ("+38344123456", "+38344123457", "sender_type_unsupported"),  # domestic to Kosovo
    ("+38344123456", "+4915123456789", None),  # an international long number
    ("+38344123456", "ACME", None),
    ("+77011234567", "+77011234568", "sender_type_unsupported"),  # domestic to Kazakhstan
    ("+77011234567", "+79161234567", None),  # +7 9xx is Russia: international for KZ
    ("+77011234567", "12345", "sender_type_unsupported"),  # short codes: not supported
    ("+4915123456789", "+4915123456780", None),  # no profile for Germany: no sender rules
])
async def test_sender_types_at_accept(tmp_path: Path, to: str, sender: str,
                                      code: str | None) -> None:
    async with running(tmp_path, shop=SHOP) as r:
        status, data = await r.post({"to": to, "from": sender, "text": "Your code is 1234"})
        if code is None:
            assert status == 202, data
        else:
            assert (status, data["error"]["code"]) == (422, code)
            if sender.startswith("+"):
                assert "domestic long number" in data["error"]["message"]
