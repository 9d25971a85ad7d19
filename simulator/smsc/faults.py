"""Faults for tests: whole-SMSC crash and hang (abort, pause, resume), link drops
(disconnect_after, disconnect_every), dropped and error answers, latency jitter."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aggregator.smpp.transport import SmppConnection
from simulator.smsc.profile import SmscProfile
from simulator.smsc.receipts import SmscReceipts

log = logging.getLogger("simulator.smsc")

# How often a disabled disconnect_every is checked for having been enabled at run time.
DISCONNECT_POLL = 0.25


class SmscFaults(SmscReceipts):
    """The faults SmscProfile asks for, and those called as methods."""

    def abort(self) -> int:
        """Crash: close the listener and every connection at once, with no unbind and no answer
        to the submit_sm still outstanding. Returns how many submit_sm were left unanswered
        (received and recorded, no submit_sm_resp sent): a client sends those again.

        What an operator keeps on disk survives for a restart with start() on the same port: the
        counters, `received`, and the receipts not sent yet (they go out on the next binds).
        """
        if self._server is not None:
            self._server.close()
            self._server = None
        unanswered = sum(p.stats.outstanding for p in self._peers.values() if p.stats is not None)
        self._paused = False
        self._held.clear()  # their connections go now
        for conn in list(self._peers):
            self._drop_link(conn, "abort")
        self._notify()
        log.info("smsc: aborted with %d submits unanswered", unanswered)
        return unanswered

    def pause(self) -> None:
        """Hang: connections stay open and submit_sm are still read (and recorded) but none is
        answered, and no receipt is sent, until resume(). The session layer still answers
        enquire_link, so the links look alive."""
        self._paused = True

    def resume(self) -> int:
        """End pause(): send the held answers now (late: the client has probably given up on
        them and sends those messages again) and the queued receipts. Returns how many submit_sm
        answers were held."""
        self._paused = False
        held, self._held = self._held, []
        for callback, args in held:
            callback(*args)
        for system_id in list(self._pending):
            self._drain(system_id)
        self._notify()
        return len(held)

    def _hold(self, callback: Callable[..., None], *args: Any) -> bool:
        """While paused, keep this answer for resume() and return True."""
        if self._paused:
            self._held.append((callback, args))
        return self._paused

    def roll_fault(self, profile: SmscProfile) -> str | None:
        """None (answer normally), "drop" or "error"; one draw, only when a ratio is set (public
        for tests that check the ratios over many draws)."""
        drop, error = profile.drop_ratio, profile.error_ratio
        if drop <= 0 and error <= 0:
            return None
        draw = self._rng.random()
        if draw < drop:
            return "drop"
        if draw < drop + error:
            return "error"
        return None

    def _after_latency(
        self, profile: SmscProfile, callback: Callable[..., None], *args: Any
    ) -> None:
        delay = profile.latency
        if profile.latency_jitter > 0:
            delay = max(0.0, delay + self._rng.uniform(-profile.latency_jitter,
                                                       profile.latency_jitter))
        if delay > 0:
            self._later(delay, callback, *args)
        else:
            callback(*args)

    def _drop_link(self, conn: SmppConnection, reason: str) -> None:
        """Close the TCP connection without unbind; its unanswered submits stay unanswered."""
        peer = self._peers.pop(conn, None)  # from now on, nothing is answered or sent on it
        if peer is not None and peer.stats is not None:
            peer.stats.bound = False
            peer.stats.outstanding = 0
            peer.stats.close_reason = reason
        self.disconnects_total += 1
        log.info("smsc: dropping the link of %s (%s)", conn.peername, reason)
        conn.close()

    def _disconnect_tick(self) -> None:
        """disconnect_every: drop every bound session when due; re-read the profile each time."""
        if self._stopping:
            self._ticking = False
            return
        every = self.profile.disconnect_every
        now = self._now()
        if every is None:
            self._last_link_drop = None
            self._later(DISCONNECT_POLL, self._disconnect_tick)
            return
        if self._last_link_drop is None:  # just switched on (or at start)
            self._last_link_drop = now
        elif now >= self._last_link_drop + every - 0.001:  # timers may fire a little early
            self._last_link_drop = now
            for conn, peer in list(self._peers.items()):
                if peer.stats is not None:
                    self._drop_link(conn, f"disconnect_every={every}")
            self._notify()
        delay = min(DISCONNECT_POLL, self._last_link_drop + every - now)
        self._later(max(delay, 0.001), self._disconnect_tick)
