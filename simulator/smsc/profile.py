"""SmscProfile: how the simulated SMSC behaves, validated when built."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.smpp.status import CommandStatus
from simulator.handsets import HandsetBook


@dataclass(slots=True)
class SmscProfile:
    """How the simulated SMSC behaves. The defaults are a healthy, fast operator.

    Fault fields: of the submit_sm that are not throttled, a share `drop_ratio` gets no answer
    at all (the client times out) and a share `error_ratio` is answered with `error_status`
    (after the latency, and without a receipt); drop_ratio + error_ratio must not exceed 1.
    `disconnect_after` closes a session's TCP connection (no unbind) when that session sends
    its Nth submit_sm, which stays unanswered, as do its submits still waiting for their
    latency. `disconnect_every` closes every bound session's connection every T seconds.
    `refuse_binds` answers every bind with ESME_RBINDFAIL. `latency_jitter` spreads the
    answer latency uniformly over [latency - jitter, latency + jitter], floored at 0.
    """

    latency: float = 0.0  # seconds before answering submit_sm
    receipt_delay: float = 0.0  # seconds after the submit_sm_resp before the receipt is sent
    undeliverable_ratio: float = 0.0  # share of receipts with stat:UNDELIV (state 5, err:001)
    max_tps: float | None = None  # submits/s per system_id above which: ESME_RTHROTTLED
    receipts: bool = True
    # "same": the receipt carries the submit_sm_resp id (hex); "decimal": that number in decimal
    receipt_id_format: str = "same"
    system_id: str | None = None  # when set, binds with another system_id get ESME_RINVSYSID
    password: str | None = None  # when set, binds with another password get ESME_RINVPASWD
    window: int = 100  # our window for deliver_sm receipts per session
    seed: int | None = None  # seeds the undeliverable choice, for reproducible runs
    # Like a real SMSC, send a receipt only if registered_delivery asks for one
    # (bits 1-0: 01 always, 10 on failure only); False sends one for every submit.
    honor_registered_delivery: bool = True
    # Each receipt on the next bound receiver/transceiver session of the system_id in turn,
    # not the one its submit came on: real SMSCs deliver on any bind of the system_id, so a
    # receipt for one smsagg instance's submit may reach another instance.
    receipts_any_bind: bool = False
    error_ratio: float = 0.0  # share of submit_sm answered with error_status (no receipt)
    error_status: int = int(CommandStatus.ESME_RSYSERR)
    drop_ratio: float = 0.0  # share of submit_sm never answered (counted in dropped_total)
    disconnect_after: int | None = None  # close a session's connection at its Nth submit_sm
    disconnect_every: float | None = None  # close every bound session every T seconds
    refuse_binds: bool = False  # answer every bind with ESME_RBINDFAIL (0x0D)
    latency_jitter: float = 0.0  # seconds; latency uniform in [latency -/+ jitter], floor 0
    # What happens per destination number/prefix, and which handsets reply (simulator.handsets);
    # None: every number is a handset that takes the message and does not reply.
    handsets: HandsetBook | None = None
    roaming_delay: float = 5.0  # seconds added to receipt_delay for "roaming" handsets
    # Receipts that never come: this share of the receipts asked for is never sent (counted in
    # receipts_lost); query_sm still tells the message's state.
    lose_receipts: float = 0.0
    # False: query_sm gets generic_nack ESME_RINVCMDID, like an SMSC that does not take it.
    answer_query_sm: bool = True

    def __post_init__(self) -> None:
        if self.receipt_id_format not in ("same", "decimal"):
            raise ValueError(f"receipt_id_format must be 'same' or 'decimal', "
                             f"not {self.receipt_id_format!r}")
        if not 0.0 <= self.undeliverable_ratio <= 1.0:
            raise ValueError("undeliverable_ratio must be within 0..1")
        if self.max_tps is not None and self.max_tps <= 0:
            raise ValueError("max_tps must be positive")
        if self.window < 1:
            raise ValueError("window must be at least 1")
        for name in ("latency", "receipt_delay", "latency_jitter", "roaming_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("error_ratio", "drop_ratio", "lose_receipts"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.error_ratio + self.drop_ratio > 1.0:
            raise ValueError("error_ratio + drop_ratio must not exceed 1")
        if not 0 < self.error_status <= 0xFFFFFFFF:
            raise ValueError("error_status must be a non-zero 32-bit command_status")
        if self.disconnect_after is not None and self.disconnect_after < 1:
            raise ValueError("disconnect_after must be at least 1")
        if self.disconnect_every is not None and self.disconnect_every <= 0:
            raise ValueError("disconnect_every must be positive")

