"""Operator SMSC simulator: an SMPP server built on aggregator.smpp's session and transport.

It answers submit_sm (after a configurable latency, or ESME_RTHROTTLED above a rate) and sends
delivery receipts back as deliver_sm, in the text form and as TLVs. Everything runs on the event
loop: timers are loop.call_later handles, never a sleeping task per message.

Faults for tests (all off by default, see SmscProfile): error answers, dropped submits (no answer
at all), link drops after N submits per session or every T seconds, refused binds and latency
jitter. `Smsc.profile` may be replaced or changed at run time; see Smsc. Whole-SMSC faults are
methods: `abort()` crashes it (start() restarts it on the same port) and `pause()` / `resume()`
hang it and bring it back.

Handsets (simulator.handsets, `SmscProfile.handsets`): per destination number or prefix, a
message is delivered, unreachable (UNDELIV), roaming (DELIVRD after an extra roaming_delay) or
invalid (ESME_RINVDSTADR at once); a handset with a reply answers each message it receives with
a mobile-originated deliver_sm, queued and retried like a receipt.

Modules, one job each; Smsc is their layers stacked (each a subclass of the one before):
profile (SmscProfile), records (what it keeps), pdus (answers and reading a submit_sm),
base (state, timers, waiting, statistics), receipts (queue, sessions, retries), faults,
submits (submit_sm, query_sm) and server (listening, connections, binds).
"""

from __future__ import annotations

from simulator.smsc.pdus import raw_short_message
from simulator.smsc.profile import SmscProfile
from simulator.smsc.records import BindStats, ReceivedSubmit
from simulator.smsc.server import Smsc

__all__ = ["BindStats", "ReceivedSubmit", "Smsc", "SmscProfile", "raw_short_message"]
