"""A provider's limits shared between the live instances of a cluster (PostgreSQL store).

`binds` and `max_tps` in [[providers]] are the operator's limits for the whole cluster. The live
instances, sorted by name, split them: instance i of n holds binds // n binds, plus one for the
first binds % n of them, and the share of max_tps its binds are of all binds (max_tps / n when
binds divide evenly). The shares add up to the configured limits exactly. A single instance (and
SQLite, which is always one) holds the whole limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Share:
    binds: int
    max_tps: float


def share_of(binds: int, max_tps: float, members: Sequence[str], me: str) -> Share:
    """This instance's (`me`) share of a provider's `binds` and `max_tps` among `members`, the
    live instances' names (`me` counts as live even when the list has not caught up yet)."""
    names = sorted(set(members) | {me})
    n = len(names)
    if n <= 1:
        return Share(binds, max_tps)
    index = names.index(me)
    mine = binds // n + (1 if index < binds % n else 0)
    return Share(mine, max_tps * mine / binds if binds else 0.0)
