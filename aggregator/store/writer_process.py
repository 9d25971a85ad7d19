"""The store's writer as a process of its own (`[store] writer = "process"`).

The daemon's event loop and a writer thread share one GIL: SQLite lets go of it around every
statement and the writer must win it back from the busy loop each time, so at a few thousand
messages per second group commits spent most of their time waiting for the GIL, not for the
disk. Here the writer has a process, and so a GIL, to itself.

    python -m aggregator.store.writer_process FD PATH BUSY_TIMEOUT COMMIT_BATCH [LISTEN]

FD is a connected stream socket to the daemon. Requests are frames (frames.py) of
(id, operation name, arguments); None asks it to stop after answering what came before. Each
round of groups is answered to the daemon with one frame: ("done", WriteFigures, [commit
seconds], [(id, ok, result or exception), ...], waiting messages the workers' accepts added
per account).
LISTEN, a Unix socket path, takes ingress workers' `accept` and `accept_many`, each connection
answered with ("answers", [(id, ok, result or exception), ...]). The process ends when the
daemon's socket closes, so it never outlives a daemon killed with SIGKILL.
"""

from __future__ import annotations

import pickle
import selectors
import signal
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

from aggregator.frames import FrameReader, frame
from aggregator.store.base import StoreError
from aggregator.store.writes import OPS, GroupWriter, Op, bind, connect, waiting_by_account


def _answer(op: Op) -> tuple[int, bool, Any]:
    if op.error is None:
        return (op.ref, True, op.result)
    error: BaseException = op.error
    try:
        pickle.dumps(error)
    except Exception:  # any exception must reach the caller as one
        error = StoreError(f"{type(op.error).__name__}: {op.error}")
    return (op.ref, False, error)


class _Client:
    """One connection: the daemon's, or an ingress worker's (accepts only)."""

    def __init__(self, sock: socket.socket, daemon: bool) -> None:
        self.sock = sock
        self.daemon = daemon
        self.reader = FrameReader()
        self.answers: list[tuple[int, bool, Any]] = []


# What a worker may ask of the writer directly: its accepts, nothing else.
WORKER_OPS = frozenset({"accept", "accept_many"})
WORKER_SEND_TIMEOUT = 5.0  # seconds a worker may leave its answers unread before it is dropped
# Commit gathering: a group of fewer than GATHER_BELOW operations that comes less than GATHER_S
# after the last group was done waits (once, asleep, not woken by each arriving frame) until
# GATHER_S has passed, for more before its commit: groups start at most every GATHER_S while
# traffic is dense, a lone request after a quiet spell is not delayed, and when commits are
# slow (a loaded disk) nothing waits. Each commit costs about 90 µs of CPU (mostly fdatasync's)
# and at 1,000 msg/s a loop turn found one or two operations. 2 ms rather than 1: accepts paced
# 1 ms apart take 0.19-0.24 commits each instead of 0.35-0.39, and 80-93 µs of writer CPU
# instead of 130. Not more: relaying waits for the writer twice per message (its claim, and its
# submitted state before the dispatcher's slot is free again), so with 2 binds x window 10 a
# 4 ms gather capped relaying at 1,300-1,700 msg/s (scenario a relayed 61 % of what it
# accepted, against 86 % with 2 ms), although it cut scenario f's CPU further (622 -> 536 µs).
# An operation waits at most GATHER_S longer; when a commit itself takes that long (a loaded
# disk), nothing waits.
GATHER_S = 0.002
GATHER_BELOW = 64


def serve(daemon_sock: socket.socket, listener: socket.socket | None, group: GroupWriter,
          commit_batch: int, durations: list[float]) -> None:
    """Until the daemon says stop or goes: take every request ready on every connection, run
    them as groups, answer each connection; tell the daemon how many messages workers' accepts
    added, with its own answers."""
    selector = selectors.DefaultSelector()
    daemon = _Client(daemon_sock, daemon=True)
    selector.register(daemon_sock, selectors.EVENT_READ, daemon)
    if listener is not None:
        selector.register(listener, selectors.EVENT_READ, None)
    stopping = False
    last_group = 0.0  # when the last group was done (monotonic)
    while not stopping:
        batch: list[tuple[_Client, Op, str, Any]] = []
        stopping = _take(selector.select(), listener, selector, batch)
        wait = last_group + GATHER_S - time.monotonic()
        if not stopping and 0 < len(batch) < GATHER_BELOW and wait > 0:
            # A small group soon after the last: let company arrive before paying for its
            # commit (see GATHER_S).
            time.sleep(wait)
            stopping = _take(selector.select(0), listener, selector, batch)
        took: Counter[str] = Counter()  # per account
        for start in range(0, len(batch), commit_batch):
            chunk = batch[start:start + commit_batch]
            group.run([op for _, op, _, _ in chunk])
            for client, op, name, args in chunk:
                client.answers.append(_answer(op))
                if not client.daemon and op.error is None:
                    took.update(waiting_by_account(name, args, op.result))
        for key in list(selector.get_map().values()):
            client = key.data
            if client is None or client.daemon or not client.answers:
                continue
            try:
                client.sock.sendall(frame(("answers", client.answers)))
            except OSError:  # gone, or not reading its answers: its requests fail
                selector.unregister(client.sock)
                client.sock.close()
            client.answers = []
        if daemon.answers or durations or took:
            daemon_sock.sendall(
                frame(("done", group.figures, durations[:], daemon.answers, took)))
            durations.clear()
            daemon.answers = []
        last_group = time.monotonic()


def _take(ready: list[tuple[selectors.SelectorKey, int]], listener: socket.socket | None,
          selector: selectors.BaseSelector, batch: list[tuple[_Client, Op, str, Any]]) -> bool:
    """Add the requests waiting on the ready connections to `batch` (accepting workers that
    connect); whether the daemon said stop or went."""
    stopping = False
    for key, _ in ready:
        client: _Client | None = key.data
        if client is None:  # a worker connects
            conn, _ = listener.accept()  # type: ignore[union-attr]
            # Blocking (recv runs only when select says readable), but a send to a
            # worker that stopped reading gives up after WORKER_SEND_TIMEOUT.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            struct.pack("ll", int(WORKER_SEND_TIMEOUT), 0))
            selector.register(conn, selectors.EVENT_READ, _Client(conn, daemon=False))
            continue
        requests, closed = _read(client)
        if closed:
            if client.daemon:
                stopping = True
            else:
                selector.unregister(client.sock)
                client.sock.close()
                continue
        for request in requests:
            if request is None:  # the daemon's stop
                stopping = True
                break
            rid, name, args = request
            if name in OPS and (client.daemon or name in WORKER_OPS):
                batch.append((client, Op(bind(name, args), rid), name, args))
            else:
                client.answers.append(
                    (rid, False, StoreError(f"no store operation {name!r}")))
    return stopping


def _read(client: _Client) -> tuple[list[Any], bool]:
    """The requests waiting on a readable connection, and whether it closed."""
    requests: list[Any] = []
    try:
        data = client.sock.recv(1 << 20)
        if not data:
            return requests, True
        requests += client.reader.feed(data)
        while more := client.sock.recv(1 << 20, socket.MSG_DONTWAIT):
            requests += client.reader.feed(more)
        return requests, True  # recv gave b"": closed after what it sent
    except BlockingIOError:
        return requests, False
    except Exception:  # reset, or a frame that is not ours (too big, not a pickle): drop it
        return requests, True


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group, and systemd's SIGTERM the whole cgroup: the
    # daemon drains on them and still writes meanwhile. This process ends when its socket does.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    fd, path, busy_timeout, commit_batch = int(argv[0]), argv[1], float(argv[2]), int(argv[3])
    listen = argv[4] if len(argv) > 4 else ""
    sock = socket.socket(fileno=fd)
    listener: socket.socket | None = None
    if listen:  # in a directory only the daemon's user can open (frames are pickles)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(listen)
        listener.listen(64)
    try:
        conn = connect(path, busy_timeout)
    except Exception as exc:  # reported to the daemon, which refuses to start
        sock.sendall(frame(("error", f"{path}: cannot open the database ({exc})")))
        return 1
    durations: list[float] = []
    group = GroupWriter(conn, durations.append)
    sock.sendall(frame(("ready",)))
    try:
        serve(sock, listener, group, commit_batch, durations)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone
    finally:
        conn.close()
        if listener is not None:
            listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
