"""Reassembly of long messages that upstream ESMEs send in parts (UDH or SAR). Pure: time is an
input, and memory is bounded by a total number of held parts."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

C = TypeVar("C")  # what the caller needs back per part (the request to answer)


class ReassemblyFull(Exception):
    """No room for another held part: answer ESME_RMSGQFUL."""


@dataclass(slots=True)
class _Pending(Generic[C]):
    total: int
    deadline: float
    parts: dict[int, bytes] = field(default_factory=dict)
    contexts: list[C] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class Assembled(Generic[C]):
    body: bytes  # the parts' octets in order, UDHs removed
    contexts: list[C]  # every part's context, duplicates included, in arrival order


class Reassembler(Generic[C]):
    def __init__(self, timeout: float, max_parts: int) -> None:
        self.timeout = timeout
        self.max_parts = max_parts
        self.held = 0
        self._pending: dict[Hashable, _Pending[C]] = {}

    def add(self, key: Hashable, total: int, seq: int, body: bytes, context: C,
            now: float) -> Assembled[C] | None:
        """Hold one part; returns the whole message once its last part arrives."""
        if not 1 <= seq <= total:
            raise ValueError(f"part {seq} of {total} is out of range")
        pending = self._pending.get(key)
        if pending is None or pending.total != total:
            if self.held >= self.max_parts:
                raise ReassemblyFull(f"{self.held} parts already waiting for the rest")
            if pending is not None:  # same reference, another message: the old one is broken
                self.held -= len(pending.contexts)
            pending = self._pending[key] = _Pending(total, now + self.timeout)
        elif self.held >= self.max_parts:
            raise ReassemblyFull(f"{self.held} parts already waiting for the rest")
        pending.parts.setdefault(seq, body)  # a repeated part keeps the first copy
        pending.contexts.append(context)
        self.held += 1
        if len(pending.parts) < total:
            return None
        del self._pending[key]
        self.held -= len(pending.contexts)
        body = b"".join(pending.parts[i] for i in range(1, total + 1))
        return Assembled(body, pending.contexts)

    def expire(self, now: float) -> list[list[C]]:
        """Drop messages whose parts did not all arrive in time; their contexts to refuse."""
        late = [k for k, p in self._pending.items() if p.deadline <= now]
        dropped = []
        for key in late:
            pending = self._pending.pop(key)
            self.held -= len(pending.contexts)
            dropped.append(pending.contexts)
        return dropped

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)
