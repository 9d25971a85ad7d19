"""The store's writer as a process of its own (`[store] writer = "process"`).

The daemon's event loop and a writer thread share one GIL: SQLite lets go of it around every
statement and the writer must win it back from the busy loop each time, so at a few thousand
messages per second group commits spent most of their time waiting for the GIL, not for the
disk. Here the writer has a process, and so a GIL, to itself.

    python -m aggregator.store.writer_process FD PATH BUSY_TIMEOUT COMMIT_BATCH

FD is a connected stream socket to the daemon. Requests are frames (frames.py) of
(id, operation name, arguments); None asks it to stop after answering what came before. Each
group of requests is answered with one frame:
("done", figures, commit seconds, [(id, ok, result or exception), ...]). The process ends when
the socket closes, so it never outlives a daemon killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import socket
import sys
from typing import Any

from aggregator.frames import FrameReader, frame
from aggregator.store.base import StoreError
from aggregator.store.writes import GroupWriter, Op, bind, connect


def _answer(op: Op) -> tuple[int, bool, Any]:
    if op.error is None:
        return (op.ref, True, op.result)
    error: BaseException = op.error
    try:
        pickle.dumps(error)
    except Exception:  # any exception must reach the caller as one
        error = StoreError(f"{type(op.error).__name__}: {op.error}")
    return (op.ref, False, error)


def serve(sock: socket.socket, group: GroupWriter, commit_batch: int,
          durations: list[float]) -> None:
    reader = FrameReader()
    stopping = False
    while not stopping:
        data = sock.recv(1 << 20)
        if not data:
            return
        requests = reader.feed(data)
        with contextlib.suppress(BlockingIOError):  # all already sent goes into this group
            while more := sock.recv(1 << 20, socket.MSG_DONTWAIT):
                requests += reader.feed(more)
        batch: list[Op] = []
        answers: list[tuple[int, bool, Any]] = []  # requests refused before any group
        for request in requests:
            if request is None:
                stopping = True
                break
            rid, name, args = request
            try:
                batch.append(Op(bind(name, args), rid))
            except KeyError:
                op = Op(lambda conn: None, rid)
                op.error = StoreError(f"no store operation {name!r}")
                answers.append(_answer(op))
        for start in range(0, len(batch), commit_batch):
            chunk = batch[start:start + commit_batch]
            group.run(chunk)
            answers += [_answer(op) for op in chunk]
            _send_answers(sock, group, durations, answers)
            answers = []
        if answers:
            _send_answers(sock, group, durations, answers)


def _send_answers(sock: socket.socket, group: GroupWriter, durations: list[float],
                  answers: list[tuple[int, bool, Any]]) -> None:
    figures = (group.commits, group.write_errors, group.last_write_error,
               group.last_write_error_at, group.last_write_ok_at)
    sock.sendall(frame(("done", figures, durations[:], answers)))
    durations.clear()


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group, and systemd's SIGTERM the whole cgroup: the
    # daemon drains on them and still writes meanwhile. This process ends when its socket does.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    fd, path, busy_timeout, commit_batch = int(argv[0]), argv[1], float(argv[2]), int(argv[3])
    sock = socket.socket(fileno=fd)
    try:
        conn = connect(path, busy_timeout)
    except Exception as exc:  # reported to the daemon, which refuses to start
        sock.sendall(frame(("error", f"{path}: cannot open the database ({exc})")))
        return 1
    durations: list[float] = []
    group = GroupWriter(conn, durations.append)
    sock.sendall(frame(("ready",)))
    try:
        serve(sock, group, commit_batch, durations)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
