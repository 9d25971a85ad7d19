"""Tests for simulated handsets: behaviours per number/prefix and MO replies, over the wire."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiosmpplib import PhoneNumber, SmppCommandStatus, SubmitSm
from aiosmpplib.state import NPI, TON

from aggregator.smpp.session import BindMode
from simulator.cli import build_parser, main, smsc_profile
from simulator.handsets import Handset, HandsetBook
from simulator.profiles import ProfileError, load_profiles, parse_profiles
from simulator.smsc import SmscProfile
from tests.helpers import Start
from tests.sim_helpers import DEADLINE, Connect

HANDSET = "38344123456"


def book(**handsets: Handset) -> HandsetBook:
    """Keys n<digits> (keyword-safe) to numbers."""
    return HandsetBook({key.removeprefix("n"): value for key, value in handsets.items()})


def submit_to(number: str, text: str = "hello", **kwargs: Any) -> Any:
    kwargs.setdefault("source", PhoneNumber("ACME", TON(5), NPI(0)))
    return SubmitSm(short_message=text, destination=PhoneNumber(number, TON(1), NPI(1)), **kwargs)


def receipt_stat(pdu: Any) -> str:
    assert pdu.esm_class == 0x04, pdu
    return str(pdu.short_message).split(" stat:")[1].split(" ")[0]


def assert_reply(pdu: Any, text: str, number: str = HANDSET) -> None:
    assert pdu.esm_class == 0x00
    assert not pdu.is_receipt()
    assert (pdu.source.number, pdu.source.ton, pdu.source.npi) == (number, TON(1), NPI(1))
    assert (pdu.destination.number, pdu.destination.ton, pdu.destination.npi) == (
        "ACME", TON(5), NPI(0))
    assert pdu.short_message == text


# -- book ---------------------------------------------------------------------------------------


def test_lookup_longest_prefix_and_default() -> None:
    handsets = HandsetBook({
        "+383": Handset("unreachable"),
        "38344": Handset("roaming"),
        "+38344123456": Handset(reply="STOP"),
    }, default=Handset("invalid"))
    assert handsets.lookup("38344123456") == Handset(reply="STOP")
    assert handsets.lookup("+38344123456") == Handset(reply="STOP")
    assert handsets.lookup("38344123457").behaviour == "roaming"
    assert handsets.lookup("38349000000").behaviour == "unreachable"
    assert handsets.lookup("4915112345678").behaviour == "invalid"
    assert HandsetBook().lookup("1").behaviour == "deliver"
    assert "+38344" in handsets and "38344" in handsets and len(handsets) == 3


def test_book_merges_behaviour_and_reply_and_validates() -> None:
    handsets = HandsetBook()
    handsets.set_reply("+38344123456", "NDALO")
    handsets.set_behaviour("38344123456", "roaming")
    assert handsets["38344123456"] == Handset("roaming", "NDALO")
    with pytest.raises(ValueError, match="unknown behaviour 'landline'"):
        handsets.set_behaviour("1", "landline")
    with pytest.raises(ValueError, match="not a number or prefix"):
        handsets.set_reply("+38a", "STOP")
    with pytest.raises(ValueError, match="reply_delay"):
        Handset(reply="STOP", reply_delay=-1)
    with pytest.raises(ValueError, match="roaming_delay"):
        SmscProfile(roaming_delay=-0.1)


# -- behaviours ---------------------------------------------------------------------------------


async def test_reply_follows_each_receipt(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(handsets=book(n38344123456=Handset(reply="NDALO")))
    client = await connect(smsc)
    for i in range(2):  # one reply per message
        resp = await client.submit(submit_to(HANDSET, f"m{i}"))
        receipt = await client.next_deliver()
        assert receipt_stat(receipt) == "DELIVRD" and resp.message_id in receipt.short_message
        reply = await client.next_deliver()
        assert_reply(reply, "NDALO")
        assert reply.encoding is None  # data_coding 0: GSM 03.38
    await smsc.wait_until(lambda: smsc.mo_acked_total == 2, DEADLINE)
    assert smsc.mo_sent_total == 2 and smsc.receipts_acked == 2
    summary = smsc.summary()
    assert (summary["mo_sent"], summary["mo_acked"], summary["mo_failed"]) == (2, 2, 0)
    # Other numbers get the default handset: a receipt, no reply.
    await client.submit(submit_to("4915112345678"))
    assert receipt_stat(await client.next_deliver()) == "DELIVRD"
    await smsc.wait_until(lambda: smsc.receipts_acked == 3, DEADLINE)
    assert client.delivers.empty() and smsc.mo_sent_total == 2


async def test_cyrillic_reply_is_ucs2(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(handsets=HandsetBook({"+" + HANDSET: Handset(reply="СТОП")}))
    client = await connect(smsc)
    # No receipt asked for: the handset still gets the message and replies.
    await client.submit(submit_to(HANDSET, registered_delivery=0))
    reply = await client.next_deliver()
    assert_reply(reply, "СТОП")
    assert reply.encoding == "ucs2"
    assert smsc.receipts_sent == 0


async def test_reply_delay(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(handsets=book(n38344123456=Handset(reply="STOP", reply_delay=0.2)))
    client = await connect(smsc)
    await client.submit(submit_to(HANDSET))
    receipt_at, receipt = await client.next_timed()
    reply_at, reply = await client.next_timed()
    assert receipt_stat(receipt) == "DELIVRD"
    assert_reply(reply, "STOP")
    assert reply_at - receipt_at >= 0.19


async def test_unreachable_gets_undeliv_and_no_reply(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(handsets=book(n38344=Handset("unreachable", reply="STOP")))
    client = await connect(smsc)
    resp = await client.submit(submit_to(HANDSET))
    receipt = await client.next_deliver()
    assert resp.message_id in receipt.short_message
    assert receipt_stat(receipt) == "UNDELIV" and " err:001 " in receipt.short_message
    await smsc.wait_until(lambda: smsc.receipts_acked == 1, DEADLINE)
    assert client.delivers.empty() and smsc.mo_sent_total == 0


async def test_invalid_answers_rinvdstadr_without_receipt(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(latency=0.5, handsets=book(n38338=Handset("invalid")))
    client = await connect(smsc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.submit(submit_to("38338000111"))
    assert loop.time() - started < 0.4  # at once, not after the latency
    assert int(resp.command_status) == 0x0B
    assert smsc.invalid_total == 1 and smsc.accepted_total == 0 and not smsc.received
    smsc.profile.latency = 0.0
    ok = await client.submit(submit_to("38344000111"))
    receipt = await client.next_deliver()  # the first deliver_sm is the valid message's
    assert ok.message_id in receipt.short_message
    assert smsc.receipts_sent == 1 and smsc.pending_receipts == 0


async def test_roaming_receipt_comes_late(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(roaming_delay=0.3, handsets=book(n38344=Handset("roaming")))
    client = await connect(smsc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    roaming = await client.submit(submit_to(HANDSET))
    home = await client.submit(submit_to("4915112345678"))
    first_at, first = await client.next_timed()
    second_at, second = await client.next_timed()
    assert home.message_id in first.short_message and first_at - started < 0.3
    assert roaming.message_id in second.short_message and receipt_stat(second) == "DELIVRD"
    assert second_at - started >= 0.29


async def test_reply_waits_for_a_receiver_bind(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(handsets=book(n38344123456=Handset(reply="NDALO")))
    sender = await connect(smsc, mode=BindMode.TRANSMITTER)
    resp = await sender.submit(submit_to(HANDSET))
    await smsc.wait_until(lambda: smsc.pending_receipts == 2, DEADLINE)  # receipt and reply
    assert smsc.mo_sent_total == 0
    receiver = await connect(smsc, mode=BindMode.RECEIVER)
    receipt = await receiver.next_deliver()
    assert receipt_stat(receipt) == "DELIVRD" and resp.message_id in receipt.short_message
    assert_reply(await receiver.next_deliver(), "NDALO")
    await smsc.wait_until(lambda: smsc.mo_acked_total == 1, DEADLINE)
    assert smsc.pending_receipts == 0 and sender.delivers.empty()


async def test_refused_reply_is_retried(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(
        handsets=book(n38344123456=Handset(reply="STOP")), honor_registered_delivery=True
    )
    client = await connect(smsc, deliver_status=SmppCommandStatus.ESME_RSYSERR)
    await client.submit(submit_to(HANDSET, registered_delivery=0))
    replies = [await client.next_deliver() for _ in range(4)]
    for reply in replies:
        assert_reply(reply, "STOP")
    await smsc.wait_until(lambda: smsc.mo_failed_total == 1, DEADLINE)
    assert smsc.mo_sent_total == 4 and smsc.mo_acked_total == 0
    assert smsc.receipts_failed == 0 and client.delivers.empty()


async def test_concatenated_message_gets_one_reply(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(handsets=book(n38344123456=Handset(reply="STOP")))
    client = await connect(smsc)
    for seq in (1, 2):
        pdu = submit_to(HANDSET, f"part{seq}", esm_class=0x40, registered_delivery=0)
        pdu.set_encoded_message(bytes([5, 0, 3, 0x2A, 2, seq]) + f"part{seq}".encode("ascii"))
        await client.submit(pdu)
    assert_reply(await client.next_deliver(), "STOP")
    await smsc.wait_until(lambda: smsc.mo_acked_total == 1, DEADLINE)
    assert smsc.mo_sent_total == 1 and client.delivers.empty()


async def test_handsets_settable_at_run_time(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc()
    client = await connect(smsc)
    assert smsc.handsets is None
    smsc.handsets = book(n38344=Handset("invalid"))
    assert smsc.profile.handsets is smsc.handsets
    assert int((await client.submit(submit_to(HANDSET))).command_status) == 0x0B
    smsc.handsets = None
    assert (await client.submit(submit_to(HANDSET))).command_status == SmppCommandStatus.ESME_ROK


# -- CLI and profile files ----------------------------------------------------------------------


def test_cli_reply_and_handset_options() -> None:
    args = build_parser().parse_args([
        "smsc", "--reply", "+38344123456=NDALO", "--reply", "38344999=a=b",
        "--handset", "+38338=invalid", "--handset", "38344123456=roaming",
        "--roaming-delay-ms", "250",
    ])
    profile = smsc_profile(args)
    assert profile.roaming_delay == pytest.approx(0.25)
    assert profile.handsets == HandsetBook({
        "38344123456": Handset("roaming", "NDALO"),
        "38344999": Handset(reply="a=b"),
        "38338": Handset("invalid"),
    })
    assert smsc_profile(build_parser().parse_args(["smsc"])).handsets is None


def test_cli_bad_handset_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["smsc", "--reply", "38344123456"])
    assert "expected NUMBER=VALUE" in capsys.readouterr().err
    assert main(["smsc", "--handset", "+38338=landline"]) == 2
    assert "--handset +38338=landline: unknown behaviour 'landline'" in capsys.readouterr().err
    assert main(["smsc", "--reply", "abc=STOP"]) == 2
    assert "not a number or prefix" in capsys.readouterr().err
    path = tmp_path / "p.toml"
    path.write_text('[[smsc]]\nname = "A"\nport = 0\n', encoding="utf-8")
    assert main(["smsc", "--profile", str(path), "--reply", "1=STOP"]) == 2
    assert "--reply cannot be combined with --profile" in capsys.readouterr().err


def test_profile_file_handsets_and_replies(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[[smsc]]\nname = "A"\nport = 0\nroaming_delay = 2\n'
        'replies = { "+38344123456" = "NDALO", "38349" = "СТОП" }\n'
        '[smsc.handsets]\n"+38338" = "invalid"\n"38344123456" = "unreachable"\n'
        '"38345" = { behaviour = "roaming", reply = "STOP", reply_delay = 1 }\n'
        '[[smsc]]\nname = "B"\nport = 0\n',
        encoding="utf-8",
    )
    a, b = load_profiles(path)
    assert a.profile.roaming_delay == 2.0
    assert a.profile.handsets == HandsetBook({
        "38338": Handset("invalid"),
        "38344123456": Handset("unreachable", "NDALO"),
        "38349": Handset(reply="СТОП"),
        "38345": Handset("roaming", "STOP", 1.0),
    })
    assert b.profile.handsets is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"handsets": {"+38338": "landline"}}, r"key 'handsets': '\+38338': unknown behaviour"),
        ({"handsets": {"38x": "invalid"}}, r"key 'handsets': '38x': not a number or prefix"),
        ({"handsets": ["invalid"]}, r"key 'handsets': expected a table"),
        ({"handsets": {"1": 5}}, r"key 'handsets': '1': expected a behaviour string or a table"),
        ({"handsets": {"1": {"behavior": "x"}}}, r"key 'handsets': '1': unknown key 'behavior'"),
        ({"handsets": {"1": {"reply_delay": 1}}}, r"key 'handsets': '1': key 'reply_delay' needs"),
        ({"replies": {"1": ""}}, r"key 'replies': '1': expected a non-empty reply text"),
        ({"replies": "STOP"}, r"key 'replies': expected a table"),
        ({"roaming_delay": "slow"}, r"key 'roaming_delay': expected a number"),
    ],
)
def test_bad_handset_profile_entries(extra: dict[str, Any], expected: str) -> None:
    with pytest.raises(ProfileError, match=r"^f\.toml: \[\[smsc\]\] #1 \('A'\): " + expected):
        parse_profiles({"smsc": [{"name": "A", "port": 0, **extra}]}, "f.toml")
