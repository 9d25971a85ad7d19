"""CPU time and memory of a process tree, by role, from Linux ``/proc`` (for the benchmarks).

CPU is utime + stime of ``/proc/PID/stat``: what the kernel charged the process, whoever woke it.
A role names the job of a process from its command line: smsagg's ``daemon``, its SQLite
``writer`` and its HTTP ingress ``worker``s; other programs by their command name (Kannel's
``bearerbox`` and ``smsbox``). A process that exits between two samples takes its CPU with it,
so sample trees whose processes live through the measurement.

``python -m simulator.proctree PID...`` prints {role: CPU seconds} of the trees as JSON (the
side-by-side script uses it for both gateways).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name is in parentheses and may hold spaces; the ppid follows the state.
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants; empty when `pid` is gone."""
    parents = parent_pids()
    if pid not in parents:
        return []
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def role_of(argv: list[str], comm: str) -> str:
    """The job of a process, from its command line (argv) and its command name."""
    joined = " ".join(argv)
    if "aggregator.store.writer_process" in joined:
        return "writer"
    if "ingress-worker" in argv:
        return "worker"
    if "aggregator" in argv or any(Path(a).name == "smsagg" for a in argv[:2]):
        return "daemon"
    return comm


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process in seconds; None when it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state (0), ppid (1), ... utime (11), stime (12), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _role(pid: int) -> str | None:
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        comm = (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return None
    return role_of([a.decode(errors="replace") for a in argv if a], comm)


def tree_cpu(pids: Iterable[int]) -> dict[str, float]:
    """{role: CPU seconds} summed over the trees of `pids`."""
    totals: dict[str, float] = {}
    for root in pids:
        for pid in tree(root):
            role, seconds = _role(pid), cpu_seconds(pid)
            if role is not None and seconds is not None:
                totals[role] = totals.get(role, 0.0) + seconds
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per role spent between two `tree_cpu` samples (a role that appeared in
    between counts from zero)."""
    return {role: after[role] - before.get(role, 0.0) for role in after}


def per_message_us(delta: dict[str, float], messages: float) -> dict[str, float]:
    """CPU-µs per message for each role and in ``total``; empty when no message was counted."""
    if messages <= 0:
        return {}
    figures = {role: seconds * 1e6 / messages for role, seconds in sorted(delta.items())}
    figures["total"] = sum(delta.values()) * 1e6 / messages
    return figures


def tree_rss_mb(pid: int) -> float | None:
    """Resident MB of `pid` and all its descendants; None where /proc cannot tell."""
    pids = tree(pid)
    if not pids:
        return None
    total_kb = 0
    for current in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in (PROC / str(current) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def main(argv: list[str]) -> int:
    try:
        pids = [int(a) for a in argv]
    except ValueError:
        print("usage: python -m simulator.proctree PID...", file=sys.stderr)
        return 2
    print(json.dumps(tree_cpu(pids), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
