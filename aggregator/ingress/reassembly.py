"""Reassembly of long messages that upstream ESMEs send in parts (UDH or SAR). Pure: time is an
input, and memory is bounded by a total number of held parts, and by the bytes held, in total
and per account (so that one account filling it cannot refuse another's long messages)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

C = TypeVar("C")  # what the caller needs back per part (the request to answer)


class ReassemblyFull(Exception):
    """No room for another held part: answer ESME_RMSGQFUL."""


@dataclass(slots=True)
class _PartialMessage(Generic[C]):
    """A long message whose parts are still arriving."""

    total: int
    deadline: float
    account: str = ""
    size: int = 0  # bytes charged: every part's body, repeats included
    parts: dict[int, bytes] = field(default_factory=dict)
    contexts: list[C] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class Assembled(Generic[C]):
    body: bytes  # the parts' octets in order, UDHs removed
    contexts: list[C]  # every part's context, duplicates included, in arrival order


class Reassembler(Generic[C]):
    def __init__(self, timeout: float, max_parts: int, max_bytes: int | None = None,
                 max_account_bytes: int | None = None) -> None:
        self.timeout = timeout
        self.max_parts = max_parts
        self.max_bytes = max_bytes  # None: no bound in bytes
        self.max_account_bytes = max_account_bytes
        self.held = 0
        self.held_bytes = 0
        self._account_bytes: dict[str, int] = {}
        self._pending: dict[Hashable, _PartialMessage[C]] = {}

    def account_bytes(self, account: str) -> int:
        return self._account_bytes.get(account, 0)

    def add(self, key: Hashable, total: int, seq: int, body: bytes, context: C,
            now: float, account: str = "") -> Assembled[C] | None:
        """Hold one part; returns the whole message once its last part arrives."""
        if not 1 <= seq <= total:
            raise ValueError(f"part {seq} of {total} is out of range")
        pending = self._pending.get(key)
        if pending is None or pending.total != total:
            self._check_room(account, len(body))
            if pending is not None:  # same reference, another message: the old one is broken
                self._release(pending)
            pending = self._pending[key] = _PartialMessage(total, now + self.timeout, account)
        else:
            self._check_room(account, len(body))
        pending.parts.setdefault(seq, body)  # a repeated part keeps the first copy
        pending.contexts.append(context)
        self.held += 1
        self._charge(pending, len(body))
        if len(pending.parts) < total:
            return None
        del self._pending[key]
        self._release(pending)
        body = b"".join(pending.parts[i] for i in range(1, total + 1))
        return Assembled(body, pending.contexts)

    def _check_room(self, account: str, size: int) -> None:
        if self.held >= self.max_parts:
            raise ReassemblyFull(f"{self.held} parts already waiting for the rest")
        if self.max_bytes is not None and self.held_bytes + size > self.max_bytes:
            raise ReassemblyFull(f"{self.held_bytes} bytes already waiting for the rest")
        mine = self._account_bytes.get(account, 0)
        if self.max_account_bytes is not None and mine + size > self.max_account_bytes:
            raise ReassemblyFull(f"{mine} bytes of this account already waiting for the rest")

    def _charge(self, pending: _PartialMessage[C], size: int) -> None:
        pending.size += size
        self.held_bytes += size
        self._account_bytes[pending.account] = self._account_bytes.get(pending.account, 0) + size

    def _release(self, pending: _PartialMessage[C]) -> None:
        self.held -= len(pending.contexts)
        self.held_bytes -= pending.size
        left = self._account_bytes.get(pending.account, 0) - pending.size
        if left > 0:
            self._account_bytes[pending.account] = left
        else:
            self._account_bytes.pop(pending.account, None)

    def expire(self, now: float) -> list[list[C]]:
        """Drop messages whose parts did not all arrive in time; their contexts to refuse."""
        late = [k for k, p in self._pending.items() if p.deadline <= now]
        dropped = []
        for key in late:
            pending = self._pending.pop(key)
            self._release(pending)
            dropped.append(pending.contexts)
        return dropped

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)
