"""SMS text handling: GSM 03.38 alphabet, encoding choice, transliteration, segmentation, UDH.

Pure functions, no I/O. GSM-7 here is SMPP data_coding 0 *unpacked*: one septet per octet,
extension-table characters as ESC (0x1B) + code. UCS-2 is UTF-16BE (non-BMP = surrogate pair).
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from aiosmpplib.codec import (
    GSM_BASIC_DECODE_MAP,
    GSM_BASIC_ENCODE_MAP,
    GSM_EXTENDED_ENCODE_MAP,
    GSM_REPLACE_ENCODE_MAP,
    GSM7BitCodec,
)

from aggregator.model import Encoding

GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67
DATA_CODING: dict[Encoding, int] = {Encoding.GSM7: 0, Encoding.UCS2: 8}
ESM_CLASS_UDHI = 0x40

_ESC = 0x1B
_BASIC: frozenset[str] = frozenset(GSM_BASIC_ENCODE_MAP)
_EXTENDED: tuple[str, ...] = tuple(GSM_EXTENDED_ENCODE_MAP)
_EXTENDED_SET: frozenset[str] = frozenset(_EXTENDED)
_GSM: frozenset[str] = _BASIC | _EXTENDED_SET
_CODEC = GSM7BitCodec()

# str.translate table to GSM octets-as-latin-1 code points: encoding is then one C-level
# translate + encode("latin-1") instead of a Python loop per character.
_GSM_TRANSLATE: dict[int, str] = {ord(c): chr(v) for c, v in GSM_BASIC_ENCODE_MAP.items()}
_GSM_TRANSLATE.update({ord(c): chr(_ESC) + chr(v) for c, v in GSM_EXTENDED_ENCODE_MAP.items()})

# And back: septets without an ESC decode with one translate; aiosmpplib's codec goes a
# character at a time (about 3% of the daemon's CPU on receipts under load).
_GSM_DECODE: dict[int, str] = dict(GSM_BASIC_DECODE_MAP)


def gsm7_decode(payload: bytes, errors: str = "strict") -> tuple[str, int]:
    """Unpacked GSM 03.38 octets to text, as aiosmpplib's codec does (same errors)."""
    if _ESC not in payload and (not payload or max(payload) < 0x80):
        return payload.decode("latin-1").translate(_GSM_DECODE), len(payload)
    return _CODEC.decode(payload, errors)  # type: ignore[no-any-return]


def gsm7_encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
    """Text to unpacked GSM 03.38 octets, as aiosmpplib's codec does (same errors)."""
    if _GSM.issuperset(text):
        return text.translate(_GSM_TRANSLATE).encode("latin-1"), len(text)
    return _CODEC.encode(text, errors)  # type: ignore[no-any-return]


# For aiosmpplib's `custom_codecs`: its PDU coder then uses the fast paths too.
GSM7_CODEC = codecs.CodecInfo(gsm7_encode, gsm7_decode, name="gsm0338")  # type: ignore[arg-type]
GSM7_CODECS = {"gsm0338": GSM7_CODEC}

# Explicit look-alikes (things NFKD does not fold, or folds into non-GSM characters).
_TRANSLIT_EXPLICIT: dict[str, str | None] = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2039\u203a\u0060\u00b4", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2022\u2043", "-"),
    "\u2026": "...",
    **dict.fromkeys("\t\u00a0\u1680\u202f\u205f\u3000", " "),
    **dict.fromkeys([chr(c) for c in range(0x2000, 0x200B)], " "),
    # Zero-width characters and the soft hyphen are invisible: drop them.
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", None),
    # Letters without an NFKD decomposition.
    **dict(zip("łŁđĐħĦıŧŦ", "lLdDhHitT", strict=True)),
    "œ": "oe",
    "Œ": "OE",
}
# Greek capitals that are identical to Latin ones (aiosmpplib's replace table; its ç -> Ç entry
# is skipped because lower-case ç should become c).
_TRANSLIT_EXPLICIT.update(
    {c: chr(v) for c, v in GSM_REPLACE_ENCODE_MAP.items() if c != "\u00e7" and c not in _GSM}
)
_TRANSLIT: dict[int, str | None] = {ord(k): v for k, v in _TRANSLIT_EXPLICIT.items()}


@lru_cache(maxsize=4096)
def _fold(ch: str) -> str:
    """NFKD-fold one non-GSM character and drop combining marks; keep it if that is not GSM."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return folded if folded and _GSM.issuperset(folded) else ch


def transliterate(text: str) -> str:
    """Replace non-GSM characters that have a plain GSM look-alike; leave the rest alone."""
    if _GSM.issuperset(text):
        return text
    out = text.translate(_TRANSLIT)
    if _GSM.issuperset(out):
        return out
    return "".join(c if c in _GSM else _fold(c) for c in out)


def is_gsm7(text: str) -> bool:
    return _GSM.issuperset(text)


def choose_encoding(text: str) -> Encoding:
    """GSM7 iff every character is in the basic or extension table, else UCS2."""
    return Encoding.GSM7 if _GSM.issuperset(text) else Encoding.UCS2


def _ext_count(text: str) -> int:
    if _EXTENDED_SET.isdisjoint(text):  # most texts: one pass in C (2.1 -> 0.3 µs a text)
        return 0
    return sum(text.count(c) for c in _EXTENDED)


def gsm7_units(text: str) -> int:
    """Septets needed: extension-table characters take two (ESC + code)."""
    if not _GSM.issuperset(text):
        raise ValueError("text contains characters outside the GSM 03.38 alphabet")
    return len(text) + _ext_count(text)


def _ucs2_units(text: str) -> int:
    if text.isascii() or max(text) <= "\uffff":
        return len(text)
    return len(text) + sum(1 for c in text if c > "\uffff")


def _greedy_parts(text: str, cap: int, wide: frozenset[str] | None) -> int:
    """Parts when packing 1- or 2-unit characters into `cap` units without splitting a 2-unit one.

    `wide` is the set of 2-unit characters; None means "outside the BMP" (surrogate pairs).
    Mirrors the byte-level cut in encode_message.
    """
    parts, used = 1, 0
    for ch in text:
        w = 2 if (ch > "\uffff" if wide is None else ch in wide) else 1
        used += w
        if used > cap:
            parts += 1
            used = w
    return parts


def count_segments(text: str, encoding: Encoding) -> int:
    """Number of SMS parts; empty text is one (empty) part. ValueError if GSM7 and not GSM text."""
    if encoding is Encoding.GSM7:
        units = gsm7_units(text)
        single, part, wide = GSM7_SINGLE, GSM7_PART, len(text) != units
        wide_set: frozenset[str] | None = _EXTENDED_SET
    else:
        units = _ucs2_units(text)
        single, part, wide = UCS2_SINGLE, UCS2_PART, len(text) != units
        wide_set = None
    if units <= single:
        return 1
    if not wide:
        return -(-units // part)
    return _greedy_parts(text, part, wide_set)


@dataclass(slots=True, frozen=True)
class EncodedMessage:
    encoding: Encoding
    data_coding: int
    esm_class: int  # ESM_CLASS_UDHI when split, else 0
    parts: tuple[bytes, ...]  # each part's short_message octets, UDH included when split


def _cut(data: bytes, size: int, unit: int, is_lead: bytes) -> list[bytes]:
    """Split encoded bytes into chunks of at most `size`, backing off one unit when the chunk
    would end on the first half of a two-unit character (GSM ESC / UTF-16 high surrogate)."""
    chunks: list[bytes] = []
    start, n = 0, len(data)
    while start < n:
        end = min(start + size, n)
        if end < n and data[end - unit] in is_lead:
            end -= unit
        chunks.append(data[start:end])
        start = end
    return chunks


# 0x1B only ever appears as an ESC prefix: no basic or extension code equals it.
_GSM_LEAD = bytes([_ESC])
_UTF16_HIGH_SURROGATE = bytes(range(0xD8, 0xDC))


def encode_message(text: str, encoding: Encoding, concat_ref: int) -> EncodedMessage:
    """Encode and split `text`; multi-part messages get the 8-bit concatenation UDH."""
    if encoding is Encoding.GSM7:
        if not _GSM.issuperset(text):
            raise ValueError("text contains characters outside the GSM 03.38 alphabet")
        data = text.translate(_GSM_TRANSLATE).encode("latin-1")
        single, part, unit, lead = GSM7_SINGLE, GSM7_PART, 1, _GSM_LEAD
    else:
        data = text.encode("utf-16-be")
        single, part, unit, lead = UCS2_SINGLE * 2, UCS2_PART * 2, 2, _UTF16_HIGH_SURROGATE
    data_coding = DATA_CODING[encoding]
    if len(data) <= single:
        return EncodedMessage(encoding, data_coding, 0, (data,))
    chunks = _cut(data, part, unit, lead)
    total = len(chunks)
    if total > 255:
        raise ValueError(f"message needs {total} parts; the concatenation UDH allows 255")
    ref = concat_ref & 0xFF
    parts = tuple(bytes((5, 0, 3, ref, total, i)) + c for i, c in enumerate(chunks, 1))
    return EncodedMessage(encoding, data_coding, ESM_CLASS_UDHI, parts)


@dataclass(slots=True, frozen=True)
class Concat:
    reference: int
    total: int
    seq: int


def parse_udh(payload: bytes) -> tuple[Concat | None, bytes]:
    """Split a UDHI short_message into (concatenation info or None, body octets).

    Handles IEI 0x00 (8-bit ref) and 0x08 (16-bit big-endian ref); other IEs are skipped.
    Per 3GPP 23.040 a concat IE with total 0, seq 0 or seq > total is ignored, and a repeated
    IE overrides the earlier one. ValueError on a structurally malformed header.
    """
    if not payload:
        raise ValueError("UDH missing: empty payload")
    udhl = payload[0]
    end = 1 + udhl
    if end > len(payload):
        raise ValueError(f"UDH length {udhl} exceeds payload of {len(payload)} octets")
    concat: Concat | None = None
    i = 1
    while i < end:
        if i + 2 > end:
            raise ValueError("UDH truncated inside an information element header")
        iei, iel = payload[i], payload[i + 1]
        data = payload[i + 2 : i + 2 + iel]
        if i + 2 + iel > end:
            raise ValueError(f"UDH information element 0x{iei:02x} overruns the header")
        if iei == 0x00 or iei == 0x08:
            want = 3 if iei == 0x00 else 4
            if iel != want:
                raise ValueError(f"concatenation IE 0x{iei:02x} has length {iel}, expected {want}")
            ref = data[0] if iei == 0x00 else int.from_bytes(data[:2], "big")
            total, seq = data[-2], data[-1]
            concat = Concat(ref, total, seq) if 0 < seq <= total else None
        i += 2 + iel
    return concat, payload[end:]


def decode_text(payload: bytes, data_coding: int) -> str:
    """Decode short_message octets (UDH already removed) for the supported data_coding values."""
    try:
        if data_coding == 0:
            return gsm7_decode(payload)[0]
        if data_coding == 1:
            return payload.decode("ascii")
        if data_coding == 3:
            return payload.decode("latin-1")
        if data_coding == 8:
            return payload.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise ValueError(f"undecodable octets for data_coding {data_coding}: {exc.reason}") from exc
    raise ValueError(f"unsupported data_coding {data_coding}")
