from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiosmpplib.codec import GSM7BitCodec
from hypothesis import given
from hypothesis import strategies as st

from aggregator.model import Encoding
from aggregator.text import (
    DATA_CODING,
    ESM_CLASS_UDHI,
    Concat,
    choose_encoding,
    count_segments,
    decode_text,
    encode_message,
    gsm7_decode,
    gsm7_encode,
    gsm7_units,
    is_gsm7,
    parse_udh,
    transliterate,
)

GSM = Encoding.GSM7
UCS2 = Encoding.UCS2


def _bodies(parts: tuple[bytes, ...]) -> list[bytes]:
    return [parse_udh(p)[1] for p in parts]


def test_alphabet_membership_and_units() -> None:
    assert is_gsm7("Hello @£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà\n\r")
    assert is_gsm7("€[]{}\\^~|\f")
    assert is_gsm7("")
    assert not is_gsm7("ç")  # only capital Ç is in the basic table
    assert not is_gsm7("Привет")
    assert not is_gsm7("`")
    assert gsm7_units("abc") == 3
    assert gsm7_units("€") == 2
    assert gsm7_units("[a{") == 5
    with pytest.raises(ValueError):
        gsm7_units("😀")


def test_choose_encoding() -> None:
    assert choose_encoding("Hello €") is GSM
    assert choose_encoding("Привет, мир") is UCS2
    assert choose_encoding("") is GSM


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("", GSM, 1),
        ("a" * 160, GSM, 1),
        ("a" * 161, GSM, 2),
        ("a" * 306, GSM, 2),
        ("a" * 307, GSM, 3),
        ("€" * 80, GSM, 1),
        ("€" * 80 + "a", GSM, 2),
        ("ж" * 70, UCS2, 1),
        ("ж" * 71, UCS2, 2),
        ("ж" * 134, UCS2, 2),
        ("ж" * 135, UCS2, 3),
        ("😀" * 35, UCS2, 1),
        ("😀" * 36, UCS2, 2),
    ],
)
def test_segment_boundaries(text: str, encoding: Encoding, segments: int) -> None:
    assert count_segments(text, encoding) == segments
    assert len(encode_message(text, encoding, 1).parts) == segments


def test_extension_char_never_straddles_part_edge() -> None:
    # 152 units then '€' (2 units) would end part 1 at 154: it moves whole to part 2.
    text = "a" * 152 + "€" + "b" * 10
    assert gsm7_units(text) == 164
    msg = encode_message(text, GSM, 9)
    assert count_segments(text, GSM) == len(msg.parts) == 2
    first, second = _bodies(msg.parts)
    assert first == b"a" * 152
    assert second[:2] == b"\x1b\x65"
    assert "".join(decode_text(b, 0) for b in (first, second)) == text


def test_extension_shift_adds_a_part() -> None:
    # 306 units fits two parts only if no pair straddles; here one does, forcing a third part.
    text = "a" * 152 + "€" + "a" * 152
    assert gsm7_units(text) == 306
    msg = encode_message(text, GSM, 3)
    assert count_segments(text, GSM) == len(msg.parts) == 3
    assert "".join(decode_text(b, 0) for b in _bodies(msg.parts)) == text


def test_ucs2_split_keeps_surrogate_pairs() -> None:
    text = "ж" * 66 + "😀" + "ж" * 10  # the emoji's pair would straddle the 67-unit edge
    msg = encode_message(text, UCS2, 4)
    assert count_segments(text, UCS2) == len(msg.parts) == 2
    bodies = _bodies(msg.parts)
    assert len(bodies[0]) == 132
    assert bodies[0].decode("utf-16-be") == "ж" * 66
    assert "".join(decode_text(b, 8) for b in bodies) == text


def test_gsm_udh_bytes_for_400_chars() -> None:
    text = ("The quick brown fox jumps over the lazy dog. " * 9)[:400]
    msg = encode_message(text, GSM, 0x1AB)
    assert msg.encoding is GSM
    assert msg.data_coding == DATA_CODING[GSM] == 0
    assert msg.esm_class == ESM_CLASS_UDHI
    assert len(msg.parts) == 3
    for n, part in enumerate(msg.parts, 1):
        assert part[:6] == bytes([0x05, 0x00, 0x03, 0xAB, 0x03, n])
        assert len(part) <= 6 + 153
        assert parse_udh(part)[0] == Concat(reference=0xAB, total=3, seq=n)
    assert "".join(decode_text(b, 0) for b in _bodies(msg.parts)) == text


def test_single_part_has_no_udh() -> None:
    msg = encode_message("Hi €", GSM, 5)
    assert msg.esm_class == 0
    assert msg.parts == (b"Hi \x1b\x65",)
    ucs = encode_message("Привет", UCS2, 5)
    assert ucs.esm_class == 0 and ucs.data_coding == 8
    assert ucs.parts == ("Привет".encode("utf-16-be"),)
    assert encode_message("", GSM, 0).parts == (b"",)


def test_encode_rejects_non_gsm_text_for_gsm7() -> None:
    with pytest.raises(ValueError):
        encode_message("Привет", GSM, 1)


def test_transliterate() -> None:
    assert transliterate("“Hello” — ‘x’…") == "\"Hello\" - 'x'..."
    assert transliterate("é ü ö ä ñ å à ì ò ù Ä Ö Ñ Ü Å Ç É Ø ø Æ æ ß") == (
        "é ü ö ä ñ å à ì ò ù Ä Ö Ñ Ü Å Ç É Ø ø Æ æ ß"
    )
    assert transliterate("ž š č ć đ ł ő ű á â ã ë í ó ú ç") == "z s c c d l o u a a a e i o u c"
    assert transliterate("a\u00a0b\u2009c\u200bd • e – f − g") == "a b cd - e - f - g"
    assert transliterate("Привет 😀") == "Привет 😀"
    assert choose_encoding(transliterate("Café “naïve” – Łódź")) is GSM


def test_parse_udh_8bit_and_16bit() -> None:
    assert parse_udh(bytes.fromhex("050003aa0201") + b"body") == (Concat(0xAA, 2, 1), b"body")
    assert parse_udh(bytes.fromhex("06080412340302") + b"xy") == (Concat(0x1234, 3, 2), b"xy")


def test_parse_udh_skips_other_ies() -> None:
    # IEI 0x0A (text formatting, 3 octets) before an 8-bit concat IE.
    payload = bytes.fromhex("0a0a030000000003070201") + b"z"
    assert parse_udh(payload) == (Concat(7, 2, 1), b"z")
    assert parse_udh(bytes.fromhex("03240101") + b"q") == (None, b"q")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes.fromhex("0500030102"),  # UDHL 5 but only 4 octets follow
        bytes.fromhex("030004010201"),  # IE length 4 overruns a 3-octet header
        bytes.fromhex("01") + b"\x00",  # header ends inside an IE header
        bytes.fromhex("0400020102") + b"x",  # 8-bit concat IE with wrong length
    ],
)
def test_parse_udh_malformed(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_udh(payload)


def test_decode_text() -> None:
    assert decode_text(b"Hi \x1b\x65 \x00", 0) == "Hi € @"
    assert decode_text(b"abc", 1) == "abc"
    assert decode_text("Grüße".encode("latin-1"), 3) == "Grüße"
    assert decode_text("Привет 😀".encode("utf-16-be"), 8) == "Привет 😀"
    for payload, dc in [(b"\x80", 0), (b"ab\x1b", 0), (b"\xff", 1), (b"\x00", 8)]:
        with pytest.raises(ValueError):
            decode_text(payload, dc)
    with pytest.raises(ValueError):
        decode_text(b"abc", 4)


def _outcome(code: Callable[[Any], tuple[object, int]], arg: Any) -> object:
    """What a codec function returns, or the reason it gives for failing."""
    try:
        return code(arg)
    except UnicodeError as exc:
        return str(exc.reason)  # type: ignore[attr-defined]


@given(st.binary(max_size=40).map(lambda b: bytes(x & 0x7F for x in b)) | st.binary(max_size=40))
def test_fast_gsm7_decode_matches_aiosmpplib_codec(data: bytes) -> None:
    assert _outcome(gsm7_decode, data) == _outcome(GSM7BitCodec().decode, data)


@given(st.text(alphabet=st.sampled_from("aZ09 @£$¥èé{}[]~|€^\\\nΩΔÄß") | st.characters(),
               max_size=40))
def test_fast_gsm7_encode_matches_aiosmpplib_codec(text: str) -> None:
    assert _outcome(gsm7_encode, text) == _outcome(GSM7BitCodec().encode, text)
