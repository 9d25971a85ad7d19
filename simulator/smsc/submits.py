"""submit_sm and query_sm: throttling, handsets, the answer after the latency, the receipt or
reply it leads to, and the message states query_sm tells."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiosmpplib import NPI, TON, GenericNack, PhoneNumber, SubmitSmResp

from aggregator.ratelimit import TokenBucket
from aggregator.smpp import querysm as query
from aggregator.smpp.fields import parse_submit
from aggregator.smpp.querysm import QuerySm, QuerySmResp
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import SmppConnection
from simulator.handsets import Handset
from simulator.smsc.faults import SmscFaults
from simulator.smsc.pdus import ErrorResp, completes_message, received_submit, response, strip_plus
from simulator.smsc.records import RECEIVED_MAX, BindStats, QueuedDeliver, ReceivedSubmit

log = logging.getLogger("simulator.smsc")


class SmscSubmits(SmscFaults):
    """What the SMSC does with the messages it is sent and asked about."""

    def _on_submit(self, conn: SmppConnection, pdu: Any, raw: bytes) -> None:
        peer = self._peers.get(conn)
        stats = peer.stats if peer is not None else None
        if stats is None:  # the session lets only bound peers submit; be safe anyway
            conn.respond(pdu, response(SubmitSmResp, CommandStatus.ESME_RINVBNDSTS))
            return
        try:
            fields = parse_submit(raw)  # the octets as sent: aiosmpplib keeps only the text
        except ValueError as exc:  # what aiosmpplib let through but the octets do not hold
            log.info("smsc: malformed submit_sm from %s: %s", conn.peername, exc)
            self._respond(conn, pdu, ErrorResp(CommandStatus.ESME_RINVMSGLEN))
            return
        profile = self.profile
        self.submits_total += 1
        stats.submits += 1
        if profile.disconnect_after is not None and stats.submits >= profile.disconnect_after:
            self._drop_link(conn, f"disconnect_after={profile.disconnect_after}")
            self._notify()
            return
        if not self._take_token(stats.system_id):
            self.throttled_total += 1
            self._respond(conn, pdu, response(SubmitSmResp, CommandStatus.ESME_RTHROTTLED))
            self._notify()
            return
        handset = profile.handsets.lookup(pdu.destination.number) if profile.handsets else None
        if handset is not None and handset.behaviour == "invalid":
            self.invalid_total += 1
            self._respond(conn, pdu, ErrorResp(CommandStatus.ESME_RINVDSTADR))
            self._notify()
            return
        fault = self.roll_fault(profile)
        if fault == "drop":
            self.dropped_total += 1
            self._notify()
            return
        stats.outstanding += 1
        stats.max_outstanding = max(stats.max_outstanding, stats.outstanding)
        if fault == "error":
            self.errors_total += 1
            self._notify()
            self._after_latency(profile, self._answer_error, conn, stats, pdu,
                                profile.error_status)
            return
        self.accepted_total += 1
        message_id = self._next_id()
        self._record(received_submit(pdu, fields, message_id, stats.bind_id))
        self._notify()
        completes = completes_message(fields)
        self._after_latency(profile, self._answer, conn, stats, pdu, message_id, handset,
                            completes)

    def _record(self, submit: ReceivedSubmit) -> None:
        received = self.received
        received.append(submit)
        if len(received) >= RECEIVED_MAX + RECEIVED_MAX // 10:
            del received[: len(received) - RECEIVED_MAX]

    def _take_token(self, system_id: str) -> bool:
        """max_tps per system_id, with one second of burst; a rate changed at run time applies
        from now on."""
        rate = self.profile.max_tps
        if rate is None:
            return True
        bucket = self._buckets.get(system_id)
        if bucket is None:
            bucket = self._buckets[system_id] = TokenBucket(rate, burst=max(rate, 1.0),
                                                            clock=self._now)
        elif bucket.max_rate != rate:
            bucket.set_rate(rate, burst=max(rate, 1.0))
        return bucket.try_take() == 0.0

    def _next_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_base + self._id_counter:x}"

    def _respond(self, conn: SmppConnection, pdu: Any, resp: Any) -> None:
        """An immediate answer (throttled, invalid number), unless paused."""
        if not self._hold(self._respond, conn, pdu, resp) and conn in self._peers:
            conn.respond(pdu, resp)

    def _settle(self, conn: SmppConnection, stats: BindStats) -> bool:
        """One outstanding submit is answered now; False if there is nobody to answer."""
        if stats.outstanding > 0:
            stats.outstanding -= 1
            self._notify()
        # The session may have gone away while we were "processing" (or we dropped it).
        return conn in self._peers and not conn.session.closed

    def _answer_error(
        self, conn: SmppConnection, stats: BindStats, pdu: Any, status: int
    ) -> None:
        if self._hold(self._answer_error, conn, stats, pdu, status) or not self._settle(
            conn, stats
        ):
            return
        try:
            conn.respond(pdu, ErrorResp(status))
        except Exception as exc:
            log.debug("smsc: could not answer submit on %s: %r", conn.peername, exc)

    def _answer(
        self, conn: SmppConnection, stats: BindStats, pdu: Any, message_id: str,
        handset: Handset | None, completes: bool,
    ) -> None:
        """`completes`: the submit is a whole message or its last part (a handset replies)."""
        if self._hold(self._answer, conn, stats, pdu, message_id, handset,
                      completes) or not self._settle(conn, stats):
            return
        try:
            conn.respond(pdu, SubmitSmResp(sequence_num=pdu.sequence_num, message_id=message_id))
        except Exception as exc:
            log.debug("smsc: could not answer submit on %s: %r", conn.peername, exc)
            return
        profile = self.profile
        if handset is not None and handset.behaviour == "unreachable":
            delivered = False
        else:
            ratio = profile.undeliverable_ratio
            delivered = not (ratio > 0 and self._rng.random() < ratio)
        receipt = self._make_receipt(conn, stats.system_id, pdu, message_id, delivered)
        reply = None
        if delivered and handset is not None and handset.reply and completes:
            reply = QueuedDeliver(
                message_id=message_id, system_id=stats.system_id, origin=conn,
                source=PhoneNumber(strip_plus(pdu.destination.number), TON(1), NPI(1)),
                destination=pdu.source, submitted_at=time.time(), delivered=True,
                mo_text=handset.reply,
            )
        delay = profile.receipt_delay
        if handset is not None and handset.behaviour == "roaming":
            delay += profile.roaming_delay
        # What query_sm answers: en route until the handset has it (or not), then final.
        self._set_state(message_id, query.ENROUTE)
        final = query.DELIVERED if delivered else query.UNDELIVERABLE
        if delay > 0:
            self._later(delay, self._set_state, message_id, final)
        else:
            self._set_state(message_id, final)
        if receipt is None and reply is None:
            return
        reply_delay = handset.reply_delay if handset is not None else 0.0
        if delay > 0:
            self._later(delay, self._delivered, receipt, reply, reply_delay)
        else:
            self._delivered(receipt, reply, reply_delay)

    def _set_state(self, message_id: str, state: int) -> None:
        states = self._states
        states[message_id] = (state, time.time() if state != query.ENROUTE else 0.0)
        states.move_to_end(message_id)
        if len(states) > RECEIVED_MAX:
            states.popitem(last=False)

    def _on_query(self, conn: SmppConnection, pdu: QuerySm) -> None:
        """The state of a message this SMSC accepted; ESME_RINVMSGID for an id it does not
        know (or no longer keeps)."""
        self.queries_total += 1
        if not self.profile.answer_query_sm:
            self._respond(conn, pdu, response(GenericNack, CommandStatus.ESME_RINVCMDID))
        else:
            known = self._states.get(pdu.message_id)
            if known is None:
                resp = QuerySmResp(command_status=CommandStatus.ESME_RINVMSGID)
            else:
                state, done_at = known
                self.queries_answered += 1
                resp = QuerySmResp(pdu.message_id, query.final_date(done_at) if done_at else "",
                                   state, 0 if state != query.UNDELIVERABLE else 1)
            self._respond(conn, pdu, resp)
        self._notify()
