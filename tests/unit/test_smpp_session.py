"""SmppSession: two sessions wired together in memory with a fake clock."""

from __future__ import annotations

import struct

import pytest
from aiosmpplib import (
    BindTransceiver,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    PhoneNumber,
    SubmitSm,
    SubmitSmResp,
)

from aggregator.smpp.session import (
    BindFailed,
    BindMode,
    BindRequested,
    Bound,
    Event,
    NotBound,
    ProtocolError,
    RequestAborted,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    Role,
    SessionClosed,
    SessionState,
    SmppSession,
    WindowFull,
)

HDR = struct.Struct("!IIII")


def split_pdus(data: bytes) -> list[tuple[int, int, int, int]]:
    """(length, command_id, status, seq) of each PDU in data."""
    out = []
    pos = 0
    while pos < len(data):
        header = HDR.unpack_from(data, pos)
        out.append(header)
        pos += header[0]
    assert pos == len(data)
    return out


def transfer(src: SmppSession, dst: SmppSession, now: float) -> list[Event]:
    return dst.receive_data(src.data_to_send(), now)


def submit(text: str = "hello") -> SubmitSm:
    return SubmitSm(
        short_message=text, source=PhoneNumber("12345"), destination=PhoneNumber("4915112345678")
    )


def raw_submit(seq: int, text: str = "hello") -> bytes:
    pdu = submit(text)
    pdu.sequence_num = seq
    return bytes(pdu.pdu())


def make_pair(**kw: object) -> tuple[SmppSession, SmppSession]:
    client = SmppSession(Role.CLIENT, now=0.0, **kw)  # type: ignore[arg-type]
    server = SmppSession(Role.SERVER, now=0.0, **kw)  # type: ignore[arg-type]
    return client, server


def bound_pair(
    mode: BindMode = BindMode.TRANSCEIVER, **kw: object
) -> tuple[SmppSession, SmppSession]:
    client, server = make_pair(**kw)
    client.start_bind(mode, "esme", "secret", 0.0)
    [req] = transfer(client, server, 0.0)
    assert isinstance(req, BindRequested)
    server.accept_bind(req.pdu, "smsc", 0.0)
    [ev] = transfer(server, client, 0.0)
    assert ev == Bound(mode, "smsc")
    return client, server


# -- bind -------------------------------------------------------------------------------------


def test_bind_trx_accept() -> None:
    client, server = make_pair()
    client.start_bind(BindMode.TRANSCEIVER, "esme", "secret", 0.0)
    assert client.state is SessionState.BINDING
    assert client.free_window == 0
    [req] = transfer(client, server, 0.0)
    assert isinstance(req, BindRequested)
    assert req.pdu.system_id == "esme" and req.pdu.password == "secret"
    assert server.accept_bind(req.pdu, "smsc", 0.0) == [Bound(BindMode.TRANSCEIVER, "esme")]
    assert transfer(server, client, 0.0) == [Bound(BindMode.TRANSCEIVER, "smsc")]
    assert client.state is server.state is SessionState.BOUND
    assert client.mode is server.mode is BindMode.TRANSCEIVER
    assert client.system_id == "smsc" and server.system_id == "esme"
    assert client.free_window == 10


def test_bind_reject() -> None:
    client, server = make_pair()
    client.start_bind(BindMode.TRANSMITTER, "esme", "wrong", 0.0)
    [req] = transfer(client, server, 0.0)
    assert isinstance(req, BindRequested)
    server.reject_bind(req.pdu, 0x0E, 0.0)
    assert transfer(server, client, 0.0) == [BindFailed(0x0E)]
    assert client.state is SessionState.OPEN
    assert server.state is SessionState.OPEN
    assert client.outstanding == 0


def test_bind_timeout_closes_client() -> None:
    client = SmppSession(Role.CLIENT, now=0.0, bind_timeout=5.0)
    client.start_bind(BindMode.TRANSCEIVER, "esme", "pw", 1.0)
    assert client.next_deadline() == 6.0
    assert client.handle_timers(5.9) == []
    assert client.handle_timers(6.0) == [SessionClosed("bind timeout")]
    assert client.state is SessionState.CLOSED
    assert client.next_deadline() is None


def test_server_without_bind_is_closed_after_bind_timeout() -> None:
    server = SmppSession(Role.SERVER, now=0.0, bind_timeout=5.0, enquire_link_interval=1e9)
    assert server.next_deadline() == 5.0
    assert server.handle_timers(5.0) == [SessionClosed("bind timeout")]


def test_second_bind_gets_already_bound() -> None:
    _client, server = bound_pair()
    again = BindTransceiver(system_id="esme", password="secret")
    again.sequence_num = 77
    assert server.receive_data(bytes(again.pdu()), 1.0) == []
    assert split_pdus(server.data_to_send()) == [(16, 0x80000009, 0x05, 77)]
    assert server.state is SessionState.BOUND


# -- data requests ----------------------------------------------------------------------------


def test_submit_sm_and_resp_reach_client_with_context() -> None:
    client, server = bound_pair()
    ctx = object()
    seq = client.send_request(submit("hello world"), 1.0, ctx)
    assert seq == 2  # 1 went to the bind
    assert client.in_flight == 1 and client.free_window == 9
    [ev] = transfer(client, server, 1.0)
    assert isinstance(ev, RequestReceived)
    assert ev.pdu.short_message == "hello world"
    assert ev.pdu.destination.number == "4915112345678"
    assert ev.pdu.sequence_num == seq
    server.send_response(ev.pdu, SubmitSmResp(message_id="msg-0001"))
    [resp] = transfer(server, client, 1.5)
    assert isinstance(resp, ResponseReceived)
    assert resp.context is ctx
    assert resp.pdu.message_id == "msg-0001"
    assert resp.pdu.command_status == 0
    assert resp.pdu.sequence_num == seq
    assert client.in_flight == 0 and client.free_window == 10


def test_deliver_sm_from_server_to_client() -> None:
    client, server = bound_pair()
    dlr = DeliverSm(
        short_message="id:abc stat:DELIVRD", source=PhoneNumber("1"),
        destination=PhoneNumber("2"), esm_class=0x04,
    )
    server.send_request(dlr, 1.0, "dlr")
    [ev] = transfer(server, client, 1.0)
    assert isinstance(ev, RequestReceived) and ev.pdu.is_receipt()
    client.send_response(ev.pdu, DeliverSmResp())
    [resp] = transfer(client, server, 1.0)
    assert isinstance(resp, ResponseReceived) and resp.context == "dlr"


def test_error_status_response_keeps_status_including_vendor_codes() -> None:
    client, server = bound_pair()
    seq = client.send_request(submit(), 1.0, "a")
    seq2 = client.send_request(submit(), 1.0, "b")
    server.data_to_send()
    # Header-only error responses (as the spec sends them), one with a vendor-specific status.
    data = HDR.pack(16, 0x80000004, 0x58, seq) + HDR.pack(16, 0x80000004, 0x401, seq2)
    ev1, ev2 = client.receive_data(data, 1.0)
    assert isinstance(ev1, ResponseReceived) and ev1.pdu.command_status == 0x58
    assert isinstance(ev2, ResponseReceived) and ev2.pdu.command_status == 0x401


def test_generic_nack_answering_our_request_is_a_response() -> None:
    client, _server = bound_pair()
    seq = client.send_request(submit(), 1.0, "ctx")
    [ev] = client.receive_data(HDR.pack(16, 0x80000000, 0x03, seq), 1.0)
    assert isinstance(ev, ResponseReceived) and ev.context == "ctx"
    assert ev.pdu.command_status == 0x03
    assert client.in_flight == 0


def test_window_full_and_slot_freed_by_response() -> None:
    client, server = bound_pair(window=3)
    for i in range(3):
        client.send_request(submit(), 1.0, i)
    assert client.free_window == 0
    with pytest.raises(WindowFull):
        client.send_request(submit(), 1.0, 3)
    # enquire_link bypasses the window
    client.send_request(EnquireLink(), 1.0, "ping")
    evs = transfer(client, server, 1.0)
    assert len(evs) == 3  # the enquire_link was answered automatically
    assert isinstance(evs[0], RequestReceived)
    server.send_response(evs[0].pdu, SubmitSmResp(message_id="x"))
    evs = transfer(server, client, 1.0)
    assert {type(e) for e in evs} == {ResponseReceived}
    assert client.free_window == 1
    client.send_request(submit(), 1.0, 4)
    assert client.free_window == 0


def test_receiver_cannot_submit() -> None:
    client, _server = bound_pair(BindMode.RECEIVER)
    with pytest.raises(NotBound):
        client.send_request(submit(), 1.0)


def test_send_before_bind_raises_not_bound() -> None:
    client, _server = make_pair()
    with pytest.raises(NotBound):
        client.send_request(submit(), 0.0)


def test_response_timeout_frees_slot_and_late_response_is_protocol_error() -> None:
    client, server = bound_pair(window=1, response_timeout=10.0, enquire_link_interval=100.0)
    seq = client.send_request(submit(), 1.0, "ctx")
    [req] = transfer(client, server, 1.0)
    assert client.next_deadline() == 11.0
    assert client.handle_timers(10.9) == []
    assert client.handle_timers(11.0) == [RequestTimedOut(seq, "ctx")]
    assert client.in_flight == 0 and client.free_window == 1
    assert isinstance(req, RequestReceived)
    server.send_response(req.pdu, SubmitSmResp(message_id="late"))
    [ev] = transfer(server, client, 12.0)
    assert isinstance(ev, ProtocolError) and ev.blame == "remote"


def test_answered_requests_leave_no_wakeups() -> None:
    client, server = bound_pair(enquire_link_interval=100.0)
    for _ in range(5):
        client.send_request(submit(), 1.0)
    for ev in transfer(client, server, 1.0):
        assert isinstance(ev, RequestReceived)
        server.send_response(ev.pdu, SubmitSmResp(message_id="m"))
    transfer(server, client, 2.0)
    assert client.next_deadline() == 102.0  # the enquire_link timer, not stale response ones


def test_request_before_bind_gets_invalid_bind_status() -> None:
    server = SmppSession(Role.SERVER, now=0.0)
    assert server.receive_data(raw_submit(5), 0.0) == []
    assert split_pdus(server.data_to_send()) == [(16, 0x80000004, 0x04, 5)]
    assert server.state is SessionState.OPEN


def test_submit_from_receiver_bind_gets_invalid_bind_status() -> None:
    _client, server = bound_pair(BindMode.RECEIVER)
    assert server.receive_data(raw_submit(9), 1.0) == []
    assert split_pdus(server.data_to_send()) == [(16, 0x80000004, 0x04, 9)]


def test_bad_submit_body_gets_invalid_message_length() -> None:
    _client, server = bound_pair()
    data = raw_submit(11)
    body = data[16:30]  # cut inside the body, keep a consistent command_length
    truncated = HDR.pack(16 + len(body), 0x04, 0, 11) + body
    [ev] = server.receive_data(truncated + HDR.pack(16, 0x15, 0, 12), 1.0)
    assert isinstance(ev, ProtocolError) and ev.blame == "remote"
    assert split_pdus(server.data_to_send()) == [
        (16, 0x80000004, 0x01, 11),
        (16, 0x80000015, 0x00, 12),
    ]
    assert server.state is SessionState.BOUND


# -- enquire_link -----------------------------------------------------------------------------


def test_enquire_link_after_idle_interval_is_answered_automatically() -> None:
    client, server = bound_pair(enquire_link_interval=30.0, response_timeout=10.0)
    server.enquire_link_interval = 1e9
    assert client.next_deadline() == 30.0
    assert client.handle_timers(29.0) == []
    assert client.data_to_send() == b""
    assert client.handle_timers(30.0) == []
    out = client.data_to_send()
    [(_, command_id, _, seq)] = split_pdus(out)
    assert command_id == 0x15
    assert server.receive_data(out, 30.5) == []  # answered, not surfaced
    reply = server.data_to_send()
    assert split_pdus(reply) == [(16, 0x80000015, 0, seq)]
    assert client.receive_data(reply, 31.0) == []
    assert client.outstanding == 0
    assert client.next_deadline() == 61.0


def test_unanswered_enquire_link_closes_session() -> None:
    client, _server = bound_pair(enquire_link_interval=30.0, response_timeout=10.0)
    assert client.handle_timers(30.0) == []
    client.data_to_send()
    assert client.next_deadline() == 40.0
    assert client.handle_timers(40.0) == [SessionClosed("enquire_link timeout")]
    assert client.state is SessionState.CLOSED


def test_idle_timeout_closes_server() -> None:
    _client, server = bound_pair(idle_timeout=60.0, enquire_link_interval=1e9)
    server.receive_data(HDR.pack(16, 0x15, 0, 99), 10.0)
    assert server.next_deadline() == 70.0
    assert server.handle_timers(70.0) == [SessionClosed("idle timeout")]


# -- framing ----------------------------------------------------------------------------------


def test_unknown_command_id_gets_generic_nack_and_session_continues() -> None:
    _client, server = bound_pair()
    data = HDR.pack(20, 0x00000099, 0, 42) + b"abcd" + HDR.pack(16, 0x15, 0, 43)
    [ev] = server.receive_data(data, 1.0)
    assert isinstance(ev, ProtocolError) and ev.blame == "remote"
    assert split_pdus(server.data_to_send()) == [
        (16, 0x80000000, 0x03, 42),
        (16, 0x80000015, 0x00, 43),
    ]
    assert server.state is SessionState.BOUND


def test_bad_command_length_nacks_and_closes() -> None:
    _client, server = bound_pair()
    events = server.receive_data(struct.pack("!IIII", 8, 0x04, 0, 7), 1.0)
    assert events[-1] == SessionClosed("invalid command_length")
    assert split_pdus(server.data_to_send()) == [(16, 0x80000000, 0x02, 7)]
    assert server.state is SessionState.CLOSED
    assert server.receive_data(raw_submit(8), 2.0) == []


def test_too_long_command_length_closes_before_body_arrives() -> None:
    server = SmppSession(Role.SERVER, now=0.0, max_pdu_length=1024)
    events = server.receive_data(HDR.pack(5000, 0x04, 0, 3), 0.0)
    assert events[-1] == SessionClosed("invalid command_length")


def test_two_pdus_in_one_chunk() -> None:
    _client, server = bound_pair()
    evs = server.receive_data(raw_submit(10, "one") + raw_submit(11, "two"), 1.0)
    assert [e.pdu.short_message for e in evs if isinstance(e, RequestReceived)] == ["one", "two"]


def test_one_pdu_split_over_three_chunks() -> None:
    _client, server = bound_pair()
    data = raw_submit(10, "split")
    assert server.receive_data(data[:7], 1.0) == []
    assert server.receive_data(data[7:20], 1.0) == []
    [ev] = server.receive_data(data[20:] + data[:3], 1.0)
    assert isinstance(ev, RequestReceived) and ev.pdu.short_message == "split"
    [ev] = server.receive_data(data[3:], 1.0)
    assert isinstance(ev, RequestReceived) and ev.pdu.sequence_num == 10


# -- unbind / abort / sequence ----------------------------------------------------------------


def test_client_unbinds() -> None:
    client, server = bound_pair()
    client.unbind(1.0)
    assert client.state is SessionState.UNBINDING
    assert client.free_window == 0
    assert transfer(client, server, 1.0) == [SessionClosed("peer unbound")]
    assert transfer(server, client, 1.0) == [SessionClosed("unbound")]
    assert client.state is server.state is SessionState.CLOSED


def test_server_unbinds() -> None:
    client, server = bound_pair()
    server.unbind(1.0)
    assert transfer(server, client, 1.0) == [SessionClosed("peer unbound")]
    assert transfer(client, server, 1.0) == [SessionClosed("unbound")]


def test_unbind_without_response_times_out() -> None:
    client, _server = bound_pair(response_timeout=5.0)
    client.unbind(1.0)
    assert client.handle_timers(6.0) == [SessionClosed("unbind timeout")]


def test_deliver_during_our_unbind_is_refused() -> None:
    client, _server = bound_pair()
    client.unbind(1.0)
    dlr = DeliverSm(short_message="x", source=PhoneNumber("1"), destination=PhoneNumber("2"))
    dlr.sequence_num = 5
    client.data_to_send()
    assert client.receive_data(bytes(dlr.pdu()), 1.0) == []
    assert split_pdus(client.data_to_send()) == [(16, 0x80000005, 0x04, 5)]


def test_abort_returns_all_outstanding_contexts() -> None:
    client, _server = bound_pair()
    seqs = [client.send_request(submit(), 1.0, f"ctx{i}") for i in range(4)]
    ping = client.send_request(EnquireLink(), 1.0, "ping")
    events = client.abort()
    assert sorted((e.sequence_num, e.context) for e in events if isinstance(e, RequestAborted)) == [
        *((s, f"ctx{i}") for i, s in enumerate(seqs)),
        (ping, "ping"),
    ]
    assert len(events) == 5
    assert client.state is SessionState.CLOSED
    assert client.in_flight == 0
    assert client.next_deadline() is None
    with pytest.raises(NotBound):
        client.send_request(submit(), 2.0)


def test_sequence_number_wraps() -> None:
    client = SmppSession(Role.CLIENT, now=0.0, first_sequence_num=0x7FFFFFFE)
    server = SmppSession(Role.SERVER, now=0.0)
    client.start_bind(BindMode.TRANSCEIVER, "esme", "pw", 0.0)
    [req] = transfer(client, server, 0.0)
    assert isinstance(req, BindRequested) and req.pdu.sequence_num == 0x7FFFFFFE
    server.accept_bind(req.pdu, "smsc", 0.0)
    transfer(server, client, 0.0)
    assert client.send_request(submit(), 1.0) == 0x7FFFFFFF
    assert client.send_request(submit(), 1.0) == 1
    assert client.send_request(submit(), 1.0) == 2
