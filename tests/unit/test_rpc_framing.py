"""The framing between processes (frames.py, wire.py messages, link.py): frames split or joined
any way by the kernel come out whole and in order; answers sent in one loop turn leave in one
write."""

from __future__ import annotations

import asyncio
from typing import Any

from aggregator.frames import MAX_FRAME, FrameReader, frame
from aggregator.link import Link
from aggregator.wire import Ready, Stop, call


class _Transport:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.closed = False

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(list(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Collect(Link):
    """A link on a fake transport whose owner keeps the frames."""

    def __init__(self) -> None:
        super().__init__(self)
        self.frames: list[Any] = []
        self.fake = _Transport()
        self.connection_made(self.fake)  # type: ignore[arg-type]

    def frame_received(self, link: Link, obj: Any) -> None:
        self.frames.append(obj)

    def link_lost(self, link: Link) -> None:
        pass


async def test_frames_split_at_every_byte_and_joined_come_out_whole_in_order() -> None:
    objs = [call(i, "accept", ("x" * (i * 37 % 300),)) for i in range(20)]
    stream = b"".join(frame(o) for o in objs)
    for cut in range(1, 60):  # every chunk size up to past a frame header and a short frame
        link = _Collect()
        for start in range(0, len(stream), cut):
            link.data_received(stream[start:start + cut])
        assert link.frames == objs, cut
        assert link.buffered == 0


async def test_a_large_frame_in_small_pieces_arrives_once() -> None:
    big = call(1, "m", (b"\x00" * 300_000,))
    data = frame(big) + frame(Stop())
    link = _Collect()
    for start in range(0, len(data), 4096):
        link.data_received(data[start:start + 4096])
    assert link.frames == [big, Stop()]


async def test_an_oversized_or_garbled_frame_drops_the_peer() -> None:
    link = _Collect()
    link.data_received((MAX_FRAME + 1).to_bytes(4, "big") + b"x")
    assert link.fake.closed and link.frames == []
    link = _Collect()
    link.data_received(frame(Ready()) + (5).to_bytes(4, "big") + b"\xff\xfe\xfd\xfc\xfb")
    assert link.frames == [Ready()] and link.fake.closed


async def test_frames_sent_in_one_turn_leave_in_one_write() -> None:
    link = _Collect()
    for i in range(5):
        link.send(frame(call(i, "x", ())))
    assert link.fake.writes == []  # nothing written until the turn ends
    await asyncio.sleep(0)
    assert link.fake.writes == [[frame(call(i, "x", ())) for i in range(5)]]
    link.send(frame(Stop()))
    await asyncio.sleep(0)
    assert link.fake.writes[1] == [frame(Stop())]


def test_the_writer_process_reader_takes_frames_in_any_pieces() -> None:
    """frames.FrameReader (the writer process's blocking end): whole frames, in order, from
    pieces cut anywhere; a big frame is parsed once, when its last piece arrives."""
    objs = [call(i, "accept", ("y" * (i * 53 % 400),)) for i in range(12)]
    objs.append(call(99, "m", (b"\x00" * 200_000,)))
    stream = b"".join(frame(o) for o in objs)
    for cut in (1, 3, 7, 64, 4096):
        reader = FrameReader()
        got = []
        for start in range(0, len(stream), cut):
            got += reader.feed(stream[start:start + cut])
        assert got == objs, cut
