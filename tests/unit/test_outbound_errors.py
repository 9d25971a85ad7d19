"""SMPP command_status classified once: OK, slow down, fail over, or final."""

from __future__ import annotations

import pytest

from aggregator.outbound.errors import Outcome, classify, describe, status_name
from aggregator.smpp.status import CommandStatus


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x00, Outcome.OK),  # ESME_ROK
        (0x58, Outcome.SLOW_DOWN),  # ESME_RTHROTTLED
        (0x14, Outcome.SLOW_DOWN),  # ESME_RMSGQFUL
        (0x08, Outcome.FAILOVER),  # ESME_RSYSERR
        (0x45, Outcome.FAILOVER),  # ESME_RSUBMITFAIL
        (0x0B, Outcome.FINAL),  # ESME_RINVDSTADR
        (0x0A, Outcome.FINAL),  # ESME_RINVSRCADR
        (0x01, Outcome.FINAL),  # ESME_RINVMSGLEN
        (0x401, Outcome.FINAL),  # an unknown vendor status
    ],
)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_named_constants_match_the_spec_values() -> None:
    assert CommandStatus.ESME_ROK == 0x00
    assert CommandStatus.ESME_RTHROTTLED == 0x58
    assert CommandStatus.ESME_RMSGQFUL == 0x14
    assert CommandStatus.ESME_RSYSERR == 0x08
    assert CommandStatus.ESME_RSUBMITFAIL == 0x45
    assert CommandStatus.ESME_RINVDSTADR == 0x0B
    assert CommandStatus.ESME_RINVSRCADR == 0x0A
    assert CommandStatus.ESME_RINVMSGLEN == 0x01


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0x00, "ESME_ROK (0x00)"),
        (0x58, "ESME_RTHROTTLED (0x58)"),
        (0x0B, "ESME_RINVDSTADR (0x0B)"),
        (0x45, "ESME_RSUBMITFAIL (0x45)"),
    ],
)
def test_describe_names_the_status_and_its_number(status: int, text: str) -> None:
    assert describe(status) == text


def test_describe_unknown_status_gives_its_number() -> None:
    assert status_name(0x401) == "0x401"
    assert "0x401" in describe(0x401)
    assert "ESME_" not in describe(0x401)
