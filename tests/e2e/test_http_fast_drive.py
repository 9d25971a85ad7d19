"""The fast lane runs each answer's coroutine without a Task (connections._Drive): its first step
in the read that brought the request. An answer made at once (no wait: a 401, a 400) and one
that waits for a future are both written, in order, and leave nothing under way; a failure is
a 500 and a close; each answer has its own context, as a Task's."""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Callable

from aggregator.ingress import fastpost
from aggregator.ingress.connections import ConnectionGuard, FastPost
from tests.e2e.test_http_fastpost import Inner, request
from tests.helpers import DEADLINE, wait_for

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


async def _serve(fast_post: FastPost, held: list[Callable[[], int]] | None = None
                 ) -> tuple[ConnectionGuard, asyncio.StreamReader, asyncio.StreamWriter]:
    """A guarded connection to `fast_post`; `held` gets a function giving its held bytes."""
    guard = ConnectionGuard(header_timeout=5, body_timeout=5, keepalive_timeout=5,
                            max_connections=10)
    guard.fast_post, guard.max_body = fast_post, 1000
    ours, theirs = socket.socketpair()
    _, conn = await asyncio.get_running_loop().connect_accepted_socket(guard.factory(Inner),
                                                                       ours)
    if held is not None:
        held.append(lambda: conn.held)  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(sock=theirs)
    return guard, reader, writer


async def test_answers_made_at_once_and_after_a_wait_alternate_in_order() -> None:
    waits: list[asyncio.Future[None]] = []

    async def fast_post(peer: str, req: fastpost.FastRequest) -> bytes:
        if req.body.startswith(b"w"):  # waits for a future, as for the store's commit
            waits.append(asyncio.get_running_loop().create_future())
            await waits[-1]
        return b"<" + req.body + b">"

    guard, reader, writer = await _serve(fast_post)
    for body in (b"n1", b"w2", b"n3", b"w4", b"n5"):
        writer.write(request(body))
        if body.startswith(b"w"):
            begun = int(body[1:]) // 2
            await wait_for(lambda: len(waits) == begun, what="the wait begun")  # noqa: B023
            assert guard.answering  # under way while it waits
            waits[-1].set_result(None)
        answer = await asyncio.wait_for(reader.readexactly(len(body) + 2), DEADLINE)
        assert answer == b"<" + body + b">"
        await wait_for(lambda: not guard.answering, what="nothing left under way")
    writer.close()


async def test_a_request_held_behind_an_answer_made_at_once_is_answered() -> None:
    """The second request arrives while the first waits; the first then answers and the
    second, taken from the held bytes, is answered at once within that step."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fast_post(peer: str, req: fastpost.FastRequest) -> bytes:
        if req.body == b"1":
            await gate
        return b"[" + req.body + b"]"

    held: list[Callable[[], int]] = []
    guard, reader, writer = await _serve(fast_post, held)
    writer.write(request(b"1"))
    await wait_for(lambda: bool(guard.answering), what="the first under way")
    writer.write(request(b"2"))
    await wait_for(lambda: held[0]() > 0, what="the second held")
    gate.set_result(None)
    assert await asyncio.wait_for(reader.readexactly(6), DEADLINE) == b"[1][2]"
    await wait_for(lambda: not guard.answering, what="nothing left under way")
    writer.write(request(b"3"))
    assert await asyncio.wait_for(reader.readexactly(3), DEADLINE) == b"[3]"
    writer.close()


async def test_a_failure_is_a_500_and_a_close() -> None:
    async def fast_post(peer: str, req: fastpost.FastRequest) -> bytes:
        await asyncio.sleep(0)  # a bare yield: the next loop turn
        raise ValueError("broken")

    guard, reader, writer = await _serve(fast_post)
    writer.write(request(b"x"))
    answer = await asyncio.wait_for(reader.read(), DEADLINE)  # up to the close
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"Connection: close" in answer
    assert not guard.answering
    writer.close()


async def test_each_answer_has_its_own_context() -> None:
    seen: list[str] = []

    async def fast_post(peer: str, req: fastpost.FastRequest) -> bytes:
        seen.append(SEEN.get())
        SEEN.set(req.body.decode())
        await asyncio.sleep(0)
        seen.append(SEEN.get())
        return b"."

    _, reader, writer = await _serve(fast_post)
    for body in (b"a", b"b"):
        writer.write(request(body))
        assert await asyncio.wait_for(reader.readexactly(1), DEADLINE) == b"."
    assert seen == ["", "a", "", "b"]  # set in one answer, not seen in the next
    writer.close()
