"""Issue 19 item 6 (part): opt-outs added through the API are confirmed when the account asks;
Kosovo's confirmation in Albanian and Serbian; confirmations and help texts sent in GSM-7 when
transliteration makes them fit one SMS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aggregator.config import ConfigError
from aggregator.model import Encoding
from aggregator.policy.profiles import bundled_profiles
from aggregator.policy.replies import fit_auto_text
from aggregator.text import choose_encoding, count_segments
from tests.helpers import AUTH, Running, make_config, running, wait_for

P = bundled_profiles()
XK = "+38344123456"
DE = "+4915123456789"


def test_kosovo_confirmation_in_albanian_and_serbian() -> None:
    text = P["XK"].optout.confirmation
    assert "çregjistruar" in text and "Odjavljeni ste" in text  # Albanian, Serbian


@pytest.mark.parametrize("region", ["XK", "KZ"])
def test_auto_texts_fit_one_segment_when_transliteration_allows(region: str) -> None:
    for text in (P[region].optout.confirmation, P[region].optout.help_text):
        fitted = fit_auto_text(text)
        if region == "XK":  # Latin with diacritics: folds to one GSM-7 part
            assert choose_encoding(text) is Encoding.UCS2
            assert count_segments(text, Encoding.UCS2) > 1
            assert choose_encoding(fitted) is Encoding.GSM7
            assert count_segments(fitted, Encoding.GSM7) == 1
        else:  # Cyrillic has no GSM-7 form: unchanged
            assert fitted == text
    assert fit_auto_text("Çka ka të re?") == "Çka ka të re?"  # one part already: untouched


def test_confirm_api_optouts_needs_a_sender(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optout_sender: required with confirm_api_optouts"):
        make_config(tmp_path / "x.db", 1, shop={"confirm_api_optouts": True})
    shop = make_config(tmp_path / "x.db", 1, shop={"confirm_api_optouts": True,
                                                   "optout_sender": "ACME"}).accounts[0]
    assert shop.confirm_api_optouts and shop.optout_sender == "ACME"


async def add(r: Running, number: str, key: dict[str, str] = AUTH) -> tuple[int, dict[str, Any]]:
    async with r.http.post(f"{r.base}/v1/optouts", json={"number": number},
                           headers=key) as resp:
        return resp.status, await resp.json()


async def test_api_optout_is_confirmed_once(tmp_path: Path) -> None:
    shop = {"confirm_api_optouts": True, "optout_sender": "ACME"}
    async with running(tmp_path, shop=shop) as r:
        status, data = await add(r, XK)
        assert (status, data) == (201, {"number": XK, "created": True, "scope": "all",
                                        "confirmation": "sent"})

        def confirmations() -> list[Any]:
            return [s for s in r.smsc.received
                    if s.destination == XK[1:] and s.short_message.startswith(b"Jeni cregj")]

        await wait_for(lambda: len(confirmations()) == 1, what="confirmation")
        sub = confirmations()[0]
        assert sub.source == "ACME" and sub.data_coding != 8 and not sub.esm_class & 0x40
        status, data = await add(r, XK)  # already there: no second confirmation
        assert (status, data) == (200, {"number": XK, "created": False, "scope": "all"})
        status, data = await add(r, DE)  # no profile, so no confirmation text
        assert (status, data["confirmation"]) == (201, "no_text")
        # An account that does not ask gets no confirmation and no new field.
        status, data = await add(r, XK, {"Authorization": "Bearer bank-key"})
        assert (status, data) == (201, {"number": XK, "created": True, "scope": "all"})
        assert len(confirmations()) == 1
