"""The one table of SMPP command_status values (aggregator/smpp/status.py)."""

from __future__ import annotations

import struct

from aiosmpplib import SmppCommandStatus

from aggregator.smpp.status import CommandStatus, status_name


def test_every_smpp_3_4_status_has_the_specifications_name_and_value() -> None:
    # aiosmpplib's table is an independent transcription of SMPP 3.4 section 5.1.3.
    for theirs in SmppCommandStatus:
        assert CommandStatus[theirs.name] == int(theirs.value), theirs.name
    assert CommandStatus.ESME_RINVDCS == 0x104  # SMPP 5.0, answered to unknown data_coding


def test_a_member_is_the_number_on_the_wire() -> None:
    assert struct.pack("!I", CommandStatus.ESME_RTHROTTLED) == b"\x00\x00\x00\x58"
    assert {0x58: "throttled"}[CommandStatus.ESME_RTHROTTLED] == "throttled"
    assert f"0x{CommandStatus.ESME_RINVDSTADR:02X}" == "0x0B"


def test_status_name() -> None:
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0x00) == "ESME_ROK"
    assert status_name(0x401) is None  # vendor-specific: no name in the specification
