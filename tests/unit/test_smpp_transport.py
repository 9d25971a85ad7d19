"""SmppConnection over real sockets on ephemeral ports, against a tiny in-test SMSC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiosmpplib import PhoneNumber, SubmitSm, SubmitSmResp

from aggregator.smpp.session import (
    BindMode,
    BindRequested,
    Bound,
    Event,
    RequestReceived,
    Role,
    SessionClosed,
    SmppSession,
)
from aggregator.smpp.transport import (
    BindError,
    ConnectionLost,
    RequestTimeout,
    SmppConnection,
    open_client,
    start_server,
)

DEADLINE = 5.0


@dataclass
class TinySmsc:
    """Accepts binds unless the password is "bad"; answers submit_sm with an id, except for
    text "hold" (never answered) and "drop" (closes the connection)."""

    answer_binds: bool = True
    connections: list[SmppConnection] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counter: int = 0

    def factory(self) -> SmppConnection:
        session = SmppSession(Role.SERVER, now=asyncio.get_running_loop().time(),
                              enquire_link_interval=1e6)
        conn = SmppConnection(session, self.on_event)
        self.connections.append(conn)
        return conn

    def on_event(self, conn: SmppConnection, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, BindRequested) and self.answer_binds:
            if event.pdu.password == "bad":
                conn.reject_bind(event.pdu, 0x0E)
            else:
                conn.accept_bind(event.pdu, "tinysmsc")
        elif isinstance(event, RequestReceived):
            text = event.pdu.short_message
            if text == "drop":
                conn.close()
            elif text != "hold":
                self.counter += 1
                conn.respond(event.pdu, SubmitSmResp(message_id=f"id-{self.counter}"))


@pytest.fixture
async def smsc() -> AsyncIterator[tuple[TinySmsc, int]]:
    tiny = TinySmsc()
    server = await start_server("127.0.0.1", 0, tiny.factory)
    port = server.sockets[0].getsockname()[1]
    yield tiny, port
    server.close()
    for conn in tiny.connections:
        conn.close()
    await server.wait_closed()


def submit(text: str) -> SubmitSm:
    return SubmitSm(short_message=text, source=PhoneNumber("123"), destination=PhoneNumber("456"))


async def test_bind_and_request(smsc: tuple[TinySmsc, int]) -> None:
    tiny, port = smsc
    events: list[Event] = []
    conn = await open_client("127.0.0.1", port, mode=BindMode.TRANSCEIVER, system_id="esme",
                             password="pw", on_event=lambda _c, e: events.append(e))
    assert conn.session.system_id == "tinysmsc"
    assert events == [Bound(BindMode.TRANSCEIVER, "tinysmsc")]
    assert conn.peername.startswith("127.0.0.1:")
    resp = await asyncio.wait_for(conn.request(submit("hello")), DEADLINE)
    assert resp.message_id == "id-1" and resp.command_status == 0
    assert conn.session.in_flight == 0
    await asyncio.wait_for(conn.unbind(), DEADLINE)
    assert conn.closed.result() == "unbound"
    server_conn = tiny.connections[0]
    assert await asyncio.wait_for(server_conn.closed, DEADLINE) == "peer unbound"
    assert SessionClosed("peer unbound") in tiny.events


async def test_full_window_in_one_turn(smsc: tuple[TinySmsc, int]) -> None:
    _tiny, port = smsc
    conn = await open_client("127.0.0.1", port, mode=BindMode.TRANSMITTER, system_id="esme",
                             password="pw", window=50)
    futures = [conn.request(submit(f"m{i}")) for i in range(50)]
    assert conn.session.free_window == 0
    resps = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE)
    assert sorted(r.message_id for r in resps) == sorted(f"id-{i}" for i in range(1, 51))
    assert conn.session.free_window == 50
    conn.close()


async def test_bind_rejected_raises_bind_error(smsc: tuple[TinySmsc, int]) -> None:
    _tiny, port = smsc
    with pytest.raises(BindError) as info:
        await open_client("127.0.0.1", port, mode=BindMode.TRANSCEIVER, system_id="esme",
                          password="bad")
    assert info.value.status == 0x0E


async def test_bind_timeout_raises_timeout_error(smsc: tuple[TinySmsc, int]) -> None:
    tiny, port = smsc
    tiny.answer_binds = False
    with pytest.raises(TimeoutError):
        await open_client("127.0.0.1", port, mode=BindMode.TRANSCEIVER, system_id="esme",
                          password="pw", bind_timeout=0.2)


async def test_server_close_fails_pending_with_connection_lost(
    smsc: tuple[TinySmsc, int],
) -> None:
    _tiny, port = smsc
    events: list[Event] = []
    conn = await open_client("127.0.0.1", port, mode=BindMode.TRANSCEIVER, system_id="esme",
                             password="pw", on_event=lambda _c, e: events.append(e))
    held = conn.request(submit("hold"))
    dropped = conn.request(submit("drop"))
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(held, DEADLINE)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(dropped, DEADLINE)
    reason = await asyncio.wait_for(conn.closed, DEADLINE)
    assert reason.startswith("connection lost")
    assert isinstance(events[-1], SessionClosed)


async def test_request_timeout(smsc: tuple[TinySmsc, int]) -> None:
    _tiny, port = smsc
    conn = await open_client("127.0.0.1", port, mode=BindMode.TRANSCEIVER, system_id="esme",
                             password="pw", response_timeout=0.2)
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(conn.request(submit("hold")), DEADLINE)
    assert conn.session.in_flight == 0
    resp = await asyncio.wait_for(conn.request(submit("after")), DEADLINE)
    assert resp.message_id.startswith("id-")
    conn.close()


async def test_enquire_link_keeps_idle_connection_alive(smsc: tuple[TinySmsc, int]) -> None:
    tiny, port = smsc
    conn = await open_client("127.0.0.1", port, mode=BindMode.TRANSCEIVER, system_id="esme",
                             password="pw", enquire_link_interval=0.05, response_timeout=1.0)
    # Count enquire_links arriving at the server (they are answered there, never surfaced).
    server_session = tiny.connections[0].session
    original = server_session.receive_data
    three_seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen = 0

    def counting(data: bytes, now: float) -> list[Event]:
        nonlocal seen
        if data[4:8] == b"\x00\x00\x00\x15":
            seen += 1
            if seen == 3 and not three_seen.done():
                three_seen.set_result(None)
        return original(data, now)

    server_session.receive_data = counting  # type: ignore[method-assign]
    await asyncio.wait_for(three_seen, DEADLINE)
    assert not conn.closed.done()
    assert conn.session.outstanding <= 1
    conn.close()
