"""CPU per message of the daemon's SMPP work, piece by piece: a segment's submit_sm made and
sent through a client session, its submit_sm_resp read back, a receipt's deliver_sm read and
its deliver_sm_resp sent. Run by hand, on this tree and on another to compare:

    PYTHONPATH=. python tests/bench_outbound.py

Best of 7 rounds of 20,000, CPU microseconds per message, on the shared 2-core machine, two
alternations each: submit_sm out + submit_sm_resp in, main 8.96-9.19, outbound-cpu 4.71-4.72;
deliver_sm in + deliver_sm_resp out, main 12.72-13.41, outbound-cpu 9.97-10.15. Issue 20,
round 3 (lean receipts, plain receipt text decoded as ASCII), main f88ce52 against w3: submit
4.36 -> 3.76-3.80, deliver 8.99 -> 4.08-4.17.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiosmpplib import NPI, TON
from aiosmpplib.protocol import DeliverSm, DeliverSmResp, OptionalParam, PhoneNumber

from aggregator.model import Sender, SenderKind
from aggregator.outbound.pool import SubmitRequest, build_submit_sm
from aggregator.smpp.header import HEADER
from aggregator.smpp.session import BindMode, Bound, Role, SmppSession
from aggregator.text import GSM7_CODECS

N = 20_000
ROUNDS = 7
RECEIPT = ("id:0123456789abcdef sub:001 dlvrd:001 submit date:2612041200 done date:2612041200 "
           "stat:DELIVRD err:000 text:")


def _bound_client() -> SmppSession:
    """A client session bound as a transceiver, by a server session wired to it in memory;
    receipts come lean, as on the daemon's binds (a tree from before lean_receipts: not)."""
    try:
        client = SmppSession(Role.CLIENT, now=0.0, window=N + 10, lean_receipts=True)
    except TypeError:
        client = SmppSession(Role.CLIENT, now=0.0, window=N + 10)
    server = SmppSession(Role.SERVER, now=0.0)
    client.start_bind(BindMode.TRANSCEIVER, "smsagg", "secret", 0.0)
    request = server.receive_data(client.data_to_send(), 0.0)[0].pdu  # type: ignore[union-attr]
    server.accept_bind(request, "SMSC", 0.0)
    events = client.receive_data(server.data_to_send(), 0.0)
    assert isinstance(events[0], Bound)
    return client


def _receipt(seq: int) -> bytes:
    message = DeliverSm(
        short_message=RECEIPT, esm_class=4,
        source=PhoneNumber("38344123456", TON.INTERNATIONAL, NPI.ISDN),
        destination=PhoneNumber("SMSAGG", TON.ALPHANUMERIC, NPI.UNKNOWN),
        optional_params=[OptionalParam(0x001E, "0123456789abcdef"), OptionalParam(0x0427, 2)])
    message.sequence_num = seq
    message.set_encoding_info("gsm0338", GSM7_CODECS)
    return bytes(message.pdu())


def main() -> None:
    sender = Sender("ACME", SenderKind.ALPHANUMERIC)
    responses = [HEADER.pack(33, 0x80000004, 0, seq) + b"0123456789abcdef\0"
                 for seq in range(2, N + 2)]
    receipt = _receipt(99)

    def submit_and_answer() -> None:
        client = _bound_client()
        for _ in range(N):
            req = SubmitRequest("m", 1, sender, "+38344123456", 0, 0, b"hello there", "shop")
            client.send_request(build_submit_sm(req), 0.0, None)
        client.data_to_send()
        for data in responses:
            client.receive_data(data, 0.0)

    def receipt_and_answer() -> None:
        client = _bound_client()
        # A tree from before send_deliver_resp answers with aiosmpplib's DeliverSmResp.
        fast = getattr(client, "send_deliver_resp", None)
        for _ in range(N):
            for event in client.receive_data(receipt, 0.0):
                pdu = event.pdu  # type: ignore[union-attr]
                if fast is not None:
                    fast(pdu.sequence_num)
                else:
                    client.send_response(pdu, DeliverSmResp())
        client.data_to_send()

    for name, run in (("submit_sm out + submit_sm_resp in", submit_and_answer),
                      ("deliver_sm in + deliver_sm_resp out", receipt_and_answer)):
        print(f"{name}: {_best(run):.2f} us a message")


def _best(run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best / N * 1e6


if __name__ == "__main__":
    main()
