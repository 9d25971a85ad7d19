"""The SQLite store's writer: a process of its own, the one that writes the database file.

The daemon's event loop and a writer thread would share one GIL: SQLite lets go of it around
every statement and the writer must win it back from the busy loop each time, so at a few
thousand messages per second group commits spent most of their time waiting for the GIL, not
for the disk. Here the writer has a process, and so a GIL, to itself.

    python -m aggregator.store.writer_process FD PATH BUSY_TIMEOUT COMMIT_BATCH GATHER [LISTEN]

FD is a connected stream socket to the daemon. The messages are wire.py's: the daemon sends
`Call`s (any operation of writes.py) and a `Stop` after its last; each round of groups is
answered to it with one `Done` (its answers, the figures, commit seconds, and how the workers'
writes changed the pending counts). LISTEN, a Unix socket path, takes ingress workers' calls
(WORKER_OPS: their accepts and the API's writes), each connection answered with `Answers`. The
process ends when the daemon's socket closes, so it never outlives a daemon killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import selectors
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

from aggregator.frames import FrameReader, frame
from aggregator.store.base import StoreError
from aggregator.store.optout_count import Generation, generation_path
from aggregator.store.writes import (
    OPS,
    OPTOUT_WRITES,
    TOOLS,
    GroupWriter,
    Op,
    accepted_waiting,
    connect,
    pending_change,
    waiting_due,
)
from aggregator.wire import (
    Answer,
    Answers,
    Call,
    Done,
    OpenFailed,
    Ready,
    Stop,
    answer,
    failed,
    signature,
)


def _answer(op: Op) -> Answer:
    if op.error is not None:
        return failed(op.ref, op.error)
    try:
        return answer(op.ref, op.result)
    except Exception as exc:  # a result that does not encode still gets an answer
        return failed(op.ref, exc)


class _Client:
    """One connection: the daemon's, or an ingress worker's (accepts only)."""

    def __init__(self, sock: socket.socket, daemon: bool) -> None:
        self.sock = sock
        self.daemon = daemon
        self.reader = FrameReader()
        self.answers: list[Answer] = []


# A round's calls: who asked, the operation, its arguments (for the pending counts).
Batch = list[tuple[_Client, Op, tuple[Any, ...]]]
# What a worker may ask of the writer directly: its accepts and the HTTP API's writes.
WORKER_OPS = frozenset({"accept", "accept_each", "accept_many", "cancel", "add_optout",
                        "remove_optout", "remove_optout_logged", "add_consent"})
WORKER_SEND_TIMEOUT = 5.0  # seconds a worker may leave its answers unread before it is dropped
# Commit gathering: a group of fewer than GATHER_BELOW operations that comes less than the
# gather time ([store] commit_gather_ms, default GATHER_S) after the last group was done waits
# (once, asleep, not woken by each arriving frame) until that time has passed, for more before
# its commit: groups start at most every gather time while traffic is dense, a lone request
# after a quiet spell is not delayed, a caller alone (each call waiting for the answer to the
# last) stops being delayed after one wait that found no company, and when commits are slow
# (a loaded disk) nothing waits. A commit costs a few hundred µs of CPU here (WAL writes,
# fdatasync, and the loop turns and frames around it in both processes), and at 1,000 msg/s a
# loop turn finds one or two operations. Measured in `smsagg-sim bench --scenarios a,d,f
# --workers 1`, 10 s each, one run per value on a quiet machine (f CPU-µs/msg; d accept p99;
# a relayed msg/s): 2 ms 617, 7.6 ms, 2,092; 4 ms 479, 10.7 ms, 1,943; 5 ms 452, 10.8 ms,
# 1,865; 6 ms 459, 12.8 ms, 1,934. Relaying waits for the writer on its way out (the
# submitted state before the window slot is free again), so a longer gather costs some of it.
GATHER_S = 0.005
# What a call names, looked up once: the function, its arguments' decoder, whether it is a tool.
Known = tuple[Callable[..., Any], msgspec.msgpack.Decoder[Any], bool]
DAEMON_OPS: dict[str, Known] = {
    name: (fn, signature(fn).args, name in TOOLS) for name, fn in (*OPS.items(), *TOOLS.items())
}
WORKERS_OPS = {name: DAEMON_OPS[name] for name in WORKER_OPS}
GATHER_BELOW = 64


def serve(daemon_sock: socket.socket, listener: socket.socket | None, group: GroupWriter,
          commit_batch: int, durations: list[float],
          optouts: Generation | None = None, gather: float = GATHER_S) -> None:
    """Until the daemon says stop or goes: take every request ready on every connection, run
    them as groups, answer each connection; tell the daemon how the workers' writes changed
    the pending counts, with its own answers. `optouts`: counts the groups that write
    opt-outs, for the readers' in-memory copies (optout_view.py)."""
    selector = selectors.DefaultSelector()
    daemon = _Client(daemon_sock, daemon=True)
    selector.register(daemon_sock, selectors.EVENT_READ, daemon)
    if listener is not None:
        selector.register(listener, selectors.EVENT_READ, None)
    stopping = False
    last_group = 0.0  # when the last group was done (monotonic)
    company = True  # the last wait found company, or calls came together since: wait again
    while not stopping:
        batch: Batch = []
        stopping = _take(selector.select(), listener, selector, batch)
        wait = last_group + gather - time.monotonic()
        company = company or len(batch) > 1
        if not stopping and 0 < len(batch) < GATHER_BELOW and wait > 0 and company:
            # A small group soon after the last: let company arrive before paying for its
            # commit (see GATHER_S). A wait that found none (one caller at a time, each
            # waiting for its answer) is not repeated until calls come together again.
            alone = len(batch)
            time.sleep(wait)
            stopping = _take(selector.select(0), listener, selector, batch)
            company = len(batch) > alone
        took: Counter[str] = Counter()  # per account
        due: float | None = None  # the earliest due time of the workers' waiting messages
        for start in range(0, len(batch), commit_batch):
            chunk = batch[start:start + commit_batch]
            ops = [op for _, op, _ in chunk]
            if optouts is not None and any(op.name in OPTOUT_WRITES or op.bare for op in ops):
                optouts.begin()  # readers' copies stop being current before the writes
                try:
                    group.run(ops)
                finally:
                    optouts.end()  # before any answer says the writes are done
            else:
                group.run(ops)
            for client, op, args in chunk:
                client.answers.append(_answer(op))
                if not client.daemon and op.error is None:
                    due = _took(took, due, op.name, args, op.result)
        for key in list(selector.get_map().values()):
            client = key.data
            if client is None or client.daemon or not client.answers:
                continue
            try:
                client.sock.sendall(frame(Answers(client.answers)))
            except OSError:  # gone, or not reading its answers: its requests fail
                selector.unregister(client.sock)
                client.sock.close()
            client.answers = []
        if daemon.answers or durations or took:
            daemon_sock.sendall(
                frame(Done(group.figures, durations[:], daemon.answers, dict(took), due)))
            durations.clear()
            daemon.answers = []
        last_group = time.monotonic()


def _took(took: Counter[str], due: float | None, name: str, args: tuple[Any, ...],
          result: Any) -> float | None:
    """Count what a worker's operation changed in `took` (the pending counts per account);
    the earliest due time of the waiting messages stored so far. A single accept, the usual
    one, on a path of its own: 0.36 µs, where pending_change and _sooner cost 2.1."""
    if name == "accept":
        stored = accepted_waiting(args[0], result)
        if stored is None:
            return due
        account, at = stored
        took[account] += 1
        return at if due is None or at < due else due
    took.update(pending_change(name, args, result))
    return _sooner(due, name, args, result)


def _sooner(due: float | None, name: str, args: tuple[Any, ...], result: Any) -> float | None:
    """`due`, or the due time of a waiting message a worker's group of accepts stored, if
    sooner (a single accept: _took)."""
    if name == "accept_each":
        stored = waiting_due([row for (row, _), prior in zip(args[0], result, strict=True)
                              if prior is None])
    elif name == "accept_many":
        stored = waiting_due(args[0])
    else:
        return due
    return stored if due is None or (stored is not None and stored < due) else due


def _take(ready: list[tuple[selectors.SelectorKey, int]], listener: socket.socket | None,
          selector: selectors.BaseSelector, batch: Batch) -> bool:
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
            if isinstance(request, Stop) and client.daemon:
                stopping = True
                break
            if not isinstance(request, Call):  # not a request: the peer is broken
                continue
            known = (DAEMON_OPS if client.daemon else WORKERS_OPS).get(request.op)
            if known is not None:
                fn, decoder, bare = known
                try:
                    args = decoder.decode(request.args)
                except Exception as exc:  # arguments not of the operation's types
                    client.answers.append(failed(request.id, exc))
                    continue
                batch.append((client, Op(fn, args, request.id, bare, request.op), args))
            else:
                client.answers.append(
                    failed(request.id, StoreError(f"no store operation {request.op!r}")))
    return stopping


READ_SIZE = 1 << 20  # bytes a recv asks for
# Every recv reads into this one buffer: recv(READ_SIZE) allocated a new megabyte each time,
# which glibc maps and unmaps (mmap, mremap, munmap and page faults: 9 µs of CPU per recv,
# against 1.2 µs for recv_into a socketpair's 300 bytes).
_READ_BUFFER = bytearray(READ_SIZE)
_READ_VIEW = memoryview(_READ_BUFFER)


def _read(client: _Client) -> tuple[list[object], bool]:
    """The requests waiting on a readable connection, and whether it closed. A recv that gave
    less than it asked for took all there was: no second recv that only says "nothing more"
    (one syscall and one exception fewer per connection and loop turn; what comes later makes
    the connection readable again)."""
    requests: list[object] = []
    try:
        size = client.sock.recv_into(_READ_BUFFER)
        if not size:
            return requests, True
        requests += client.reader.feed(_READ_VIEW[:size])
        while size == READ_SIZE:
            size = client.sock.recv_into(_READ_BUFFER, READ_SIZE, socket.MSG_DONTWAIT)
            if not size:
                return requests, True  # closed after what it sent
            requests += client.reader.feed(_READ_VIEW[:size])
        return requests, False
    except BlockingIOError:
        return requests, False
    except Exception:  # reset, or a frame that is not ours (too big, garbled): drop it
        return requests, True


# glibc's malloc gives the top of the heap back once 128 KiB of it is free and takes it again
# at the next statements: 100 brk calls and 1,200 page faults a second at 1,000 msg/s. Kept
# (the heap shrinks only when TRIM_THRESHOLD is free at its top, and grows PAD more at a time)
# there are none; tests/bench_store_ops.py's writer: 112 -> 103 CPU-µs per message.
M_TRIM_THRESHOLD, M_TOP_PAD = -1, -2  # mallopt's parameters (malloc.h)
TRIM_THRESHOLD, TOP_PAD = 8 << 20, 1 << 20


def _keep_heap() -> None:
    """Tell glibc's malloc to keep the heap it took (a no-op where the C library is not
    glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(M_TOP_PAD, TOP_PAD)
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        pass


def main(argv: list[str]) -> int:
    _keep_heap()
    # Ctrl-C reaches the whole process group, and systemd's SIGTERM the whole cgroup: the
    # daemon drains on them and still writes meanwhile. This process ends when its socket does.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    fd, path, busy_timeout, commit_batch = int(argv[0]), argv[1], float(argv[2]), int(argv[3])
    gather = float(argv[4])
    listen = argv[5] if len(argv) > 5 else ""
    sock = socket.socket(fileno=fd)
    listener: socket.socket | None = None
    if listen:  # in a directory only the daemon's user can open
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(listen)
        listener.listen(64)
    try:
        conn = connect(path, busy_timeout)
    except Exception as exc:  # reported to the daemon, which refuses to start
        sock.sendall(frame(OpenFailed(f"{path}: cannot open the database ({exc})")))
        return 1
    durations: list[float] = []
    group = GroupWriter(conn, durations.append)
    optouts = Generation(generation_path(listen)) if listen else None  # the daemon made it
    sock.sendall(frame(Ready()))
    try:
        serve(sock, listener, group, commit_batch, durations, optouts, gather)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone
    finally:
        conn.close()
        if listener is not None:
            listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
