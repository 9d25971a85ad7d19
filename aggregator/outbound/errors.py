"""SMPP outcomes classified once: what dispatch does with each submit_sm result."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    SLOW_DOWN = "slow_down"  # retry on the same provider after backing off
    FAILOVER = "failover"  # this provider cannot take it now: next provider, or retry later
    FINAL = "final"  # the message itself is refused: fail it


ESME_ROK = 0x00
ESME_RINVMSGLEN = 0x01
ESME_RSYSERR = 0x08
ESME_RINVSRCADR = 0x0A
ESME_RINVDSTADR = 0x0B
ESME_RMSGQFUL = 0x14
ESME_RSUBMITFAIL = 0x45
ESME_RTHROTTLED = 0x58

STATUS_NAMES: dict[int, str] = {
    0x00: "ESME_ROK",
    0x01: "ESME_RINVMSGLEN",
    0x02: "ESME_RINVCMDLEN",
    0x03: "ESME_RINVCMDID",
    0x04: "ESME_RINVBNDSTS",
    0x05: "ESME_RALYBND",
    0x08: "ESME_RSYSERR",
    0x0A: "ESME_RINVSRCADR",
    0x0B: "ESME_RINVDSTADR",
    0x0C: "ESME_RINVMSGID",
    0x0D: "ESME_RBINDFAIL",
    0x0E: "ESME_RINVPASWD",
    0x0F: "ESME_RINVSYSID",
    0x14: "ESME_RMSGQFUL",
    0x43: "ESME_RINVESMCLASS",
    0x45: "ESME_RSUBMITFAIL",
    0x58: "ESME_RTHROTTLED",
    0x64: "ESME_RX_T_APPN",
    0x65: "ESME_RX_P_APPN",
    0x66: "ESME_RX_R_APPN",
    0xFE: "ESME_RDELIVERYFAILURE",
    0xFF: "ESME_RUNKNOWNERR",
}

# Statuses that say "not now" rather than "not this message". Everything else is final.
_CLASSES: dict[int, Outcome] = {
    ESME_ROK: Outcome.OK,
    ESME_RTHROTTLED: Outcome.SLOW_DOWN,
    ESME_RMSGQFUL: Outcome.SLOW_DOWN,
    ESME_RSYSERR: Outcome.FAILOVER,
    ESME_RSUBMITFAIL: Outcome.FAILOVER,
    0x04: Outcome.FAILOVER,  # RINVBNDSTS: our bind is in a bad state, not the message's fault
    0x64: Outcome.FAILOVER,  # RX_T_APPN: temporary application error
    0xFE: Outcome.FAILOVER,  # RDELIVERYFAILURE: used by some SMSCs for transient faults
}

# Failures that happen around a response rather than in one.
TIMEOUT = "timeout"
CONNECTION_LOST = "connection_lost"
NO_BIND = "no_bind"
BREAKER_OPEN = "breaker_open"


def classify(command_status: int) -> Outcome:
    return _CLASSES.get(command_status, Outcome.FINAL)


def status_name(command_status: int) -> str:
    name = STATUS_NAMES.get(command_status)
    if name is None:
        return f"0x{command_status:02X}"
    return name


def describe(command_status: int) -> str:
    """The text stored in a message's `error`: the SMPP status by name and number."""
    return f"{status_name(command_status)} (0x{command_status:02X})"
