"""Hex message ids (model.new_message_id) drawn from a pool of random bytes: the creation time
in milliseconds first (retention relies on it), then 80 random bits that never repeat, also
across a fork."""

from __future__ import annotations

import os
import re
import time

from aggregator.model import new_message_id


def test_format_and_time_prefix() -> None:
    before = int(time.time() * 1000)
    ids = [new_message_id() for _ in range(1000)]
    after = int(time.time() * 1000)
    for message_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", message_id)
        assert before <= int(message_id[:12], 16) <= after
    assert ids == sorted(ids, key=lambda i: i[:12])  # ordered by their creation time


def test_random_parts_never_repeat_across_refills() -> None:
    tails = [new_message_id()[12:] for _ in range(100_000)]  # the pool refills 390 times
    assert len(set(tails)) == len(tails)


def test_a_forked_child_draws_its_own_bytes() -> None:
    new_message_id()  # the parent's pool is now partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids' random parts, to the parent
        try:
            os.write(write, "".join(new_message_id()[12:] for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode()
    os.waitpid(pid, 0)
    child = {data[i:i + 20] for i in range(0, len(data), 20)}
    parent = {new_message_id()[12:] for _ in range(50)}
    assert len(child) == 50
    assert not child & parent
