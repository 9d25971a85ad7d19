"""SMPP outcomes classified once: what dispatch does with each submit_sm result."""

from __future__ import annotations

from enum import StrEnum

from aggregator.smpp.status import CommandStatus
from aggregator.smpp.status import status_name as spec_name


class Outcome(StrEnum):
    OK = "ok"
    SLOW_DOWN = "slow_down"  # retry on the same provider after backing off
    FAILOVER = "failover"  # this provider cannot take it now: next provider, or retry later
    FINAL = "final"  # the message itself is refused: fail it


# Statuses that say "not now" rather than "not this message". Everything else is final.
_CLASSES: dict[int, Outcome] = {
    CommandStatus.ESME_ROK: Outcome.OK,
    CommandStatus.ESME_RTHROTTLED: Outcome.SLOW_DOWN,
    CommandStatus.ESME_RMSGQFUL: Outcome.SLOW_DOWN,
    CommandStatus.ESME_RSYSERR: Outcome.FAILOVER,
    CommandStatus.ESME_RSUBMITFAIL: Outcome.FAILOVER,
    # Our bind is in a bad state, not the message's fault.
    CommandStatus.ESME_RINVBNDSTS: Outcome.FAILOVER,
    CommandStatus.ESME_RX_T_APPN: Outcome.FAILOVER,  # temporary application error
    # Used by some SMSCs for transient faults.
    CommandStatus.ESME_RDELIVERYFAILURE: Outcome.FAILOVER,
}

# Failures that happen around a response rather than in one.
TIMEOUT = "timeout"
CONNECTION_LOST = "connection_lost"
NO_BIND = "no_bind"
BREAKER_OPEN = "breaker_open"


def classify(command_status: int) -> Outcome:
    return _CLASSES.get(command_status, Outcome.FINAL)


def status_name(command_status: int) -> str:
    name = spec_name(command_status)
    return f"0x{command_status:02X}" if name is None else name


def describe(command_status: int) -> str:
    """The text stored in a message's `error`: the SMPP status by name and number."""
    return f"{status_name(command_status)} (0x{command_status:02X})"
