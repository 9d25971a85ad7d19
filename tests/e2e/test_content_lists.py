"""Issue 19 item 7: content lists as profile data (Serbian Cyrillic and Latin, Albanian, Russian,
Kazakh; pharma brands; stablecoins; religious terms for KZ; a maintained list of link
shorteners) and categories that need documents (KZ financial, healthcare) refused unless the
account is cleared for them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.config import ConfigError
from aggregator.policy.profiles import ProfileError, bundled_profiles, parse_profile
from aggregator.policy.rules import Allow, PolicyInput, Reject, evaluate
from tests.helpers import make_config, running

P = bundled_profiles()
NOON = datetime(2026, 1, 14, 11, 0, tzinfo=UTC)


def item(region: str, text: str, message_class: str = "marketing",
         cleared: dict[str, list[str]] | None = None) -> PolicyInput:
    return PolicyInput(region=region, number_type="mobile", message_class=message_class,
                       sender="Shop", sender_kind="alphanumeric", text=text, account="acme",
                       registered_senders={"KZ": ["Shop"]}, opted_out=False,
                       cleared_categories=cleared or {})


def rule_of(region: str, text: str, **kw: object) -> str | None:
    verdict = evaluate(P[region], item(region, text, **kw), NOON)  # type: ignore[arg-type]
    if isinstance(verdict, Reject):
        return verdict.rule
    assert verdict == Allow()
    return None


@pytest.mark.parametrize(("region", "text", "category"), [
    ("XK", "Luani në kazino sonte", "gambling"),  # Albanian
    ("XK", "Najbolja kladionica u gradu", "gambling"),  # Serbian Latin
    ("XK", "Најбоље казино понуде", "gambling"),  # Serbian Cyrillic
    ("XK", "Kupite kriptovalute danas", "cryptocurrency"),
    ("XK", "Купите биткоин", "cryptocurrency"),
    ("XK", "Earn 10% on USDT deposits", "cryptocurrency"),  # a stablecoin
    ("XK", "Glasajte za našu listu", "political"),
    ("XK", "Гласајте за нас", "political"),
    ("XK", "Ozempic without prescription", "pharmaceutical"),  # a pharma brand
    ("XK", "Порно сајт", "adult"),
    ("KZ", "Лучшие ставки на спорт", "gambling"),  # Russian
    ("KZ", "Құмар ойын клубы ашылды", "gambling"),  # Kazakh
    ("KZ", "Купите стейблкоин", "cryptocurrency"),
    ("KZ", "Tether and USDC accepted", "cryptocurrency"),
    ("KZ", "Проповедь в воскресенье", "religious"),  # religious terms (KZ only)
    ("KZ", "Жұма күні уағыз", "religious"),
    ("KZ", "Сайлауалды үгіт", "political"),
])
def test_category_lists(region: str, text: str, category: str) -> None:
    assert rule_of(region, text) == f"forbidden_category:{category}"
    # Banned in every class (item 1).
    assert rule_of(region, text, message_class="transactional") == f"forbidden_category:{category}"


def test_religious_content_is_a_kazakh_rule_only() -> None:
    assert rule_of("XK", "Sermon on Sunday") is None


@pytest.mark.parametrize("host", ["cutt.ly", "rb.gy", "clck.ru", "vk.cc", "shorturl.at"])
def test_maintained_shortener_list(host: str) -> None:
    for region in ("XK", "KZ"):
        assert rule_of(region, f"Offer at https://{host}/x1") == "url_shortener"
        assert rule_of(region, f"Code at https://{host}/x1", message_class="transactional") is None


@pytest.mark.parametrize(("text", "category"), [
    ("Микрозайм за 5 минут", "financial"),
    ("Quick payday loans", "financial"),
    ("Жаңа дәріхана ашылды", "healthcare"),
    ("Клиника: скидка на лечение", "healthcare"),
])
def test_documented_categories_need_clearance(text: str, category: str) -> None:
    assert rule_of("KZ", text) == f"documented_category:{category}"
    assert rule_of("KZ", text, message_class="transactional") == f"documented_category:{category}"
    assert rule_of("KZ", text, cleared={"KZ": [category]}) is None
    assert rule_of("KZ", text, cleared={"XK": [category]}) is not None  # per country
    assert rule_of("XK", text) is None  # Kosovo has no such rule


def test_documented_categories_validation() -> None:
    base = {"region": "KZ", "name": "K", "timezone": "Asia/Almaty"}
    with pytest.raises(ProfileError) as err:
        parse_profile({**base, "content": {"documented_categories": {"Fin": ["loan"]},
                                           "require_optout_instructions": True}}, "KZ.toml")
    text = str(err.value)
    assert "content.documented_categories.Fin" in text
    assert "content.optout_instructions: must list at least one phrase" in text


async def test_cleared_account_passes_end_to_end(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        make_config(tmp_path / "x.db", 1, shop={"cleared_categories": {"kz": ["financial"]}})
    shop = {"registered_senders": {"KZ": ["ACME"]}, "cleared_categories": {"KZ": ["financial"]}}
    bank = {"registered_senders": {"KZ": ["ACME"]}}
    async with running(tmp_path, shop=shop, bank=bank) as r:
        body = {"to": "+77011234567", "from": "ACME", "text": "Микрозайм до зарплаты"}
        status, _ = await r.post(body)
        assert status == 202
        async with r.http.post(f"{r.base}/v1/messages", json=body,
                               headers={"Authorization": "Bearer bank-key"}) as resp:
            data = await resp.json()
            assert (resp.status, data["error"]["code"]) == (422, "content_rejected")
            assert "documented_category:financial" in data["error"]["message"]


def test_profile_copies_stay_identical() -> None:
    root = Path(__file__).resolve().parents[2]
    for name in ("XK.toml", "KZ.toml"):
        assert (root / "config/countries" / name).read_bytes() == (
            root / "aggregator/policy/countries" / name).read_bytes()
    assert dataclasses.asdict(P["KZ"].content)["documented_categories"]
