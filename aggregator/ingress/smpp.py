"""SMPP server for upstream ESMEs: binds, submit_sm through the same accept path as HTTP, long
messages reassembled, and receipts back as deliver_sm from a durable outbox."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiosmpplib import DeliverSm, DeliverSmResp, SubmitSm, SubmitSmResp

from aggregator import metrics
from aggregator.auth import Authenticator, FailedLogins
from aggregator.config import AccountConfig, SmppConfig
from aggregator.ingress.accept import Acceptor, SubmitInput
from aggregator.ingress.reassembly import Reassembler, ReassemblyFull
from aggregator.log import get_logger
from aggregator.loglimit import LogLimiter
from aggregator.memory import give_back
from aggregator.model import ApiError, ErrorCode, Message
from aggregator.notify.smpp_outbox import RECEIPT_STATE, SmppOutbox
from aggregator.policy.classes import class_for_smpp
from aggregator.ratelimit import TokenBucket
from aggregator.smpp.fields import RawSubmit, parse_submit
from aggregator.smpp.querysm import ENROUTE, QuerySm, QuerySmResp, final_date
from aggregator.smpp.session import (
    BindMode,
    BindRequested,
    Bound,
    RequestReceived,
    RequestRefused,
    Role,
    SessionClosed,
    SessionError,
    SmppSession,
)
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import SmppConnection, start_server
from aggregator.store.base import Store, StoreError
from aggregator.text import ESM_CLASS_UDHI, decode_text, parse_udh

log = get_logger("smsagg.smpp")

# One table from the accept path's error codes to SMPP statuses.
STATUS_FOR_CODE: dict[str, int] = {
    ErrorCode.INVALID_NUMBER: CommandStatus.ESME_RINVDSTADR,
    ErrorCode.NOT_MOBILE: CommandStatus.ESME_RINVDSTADR,
    ErrorCode.NO_ROUTE: CommandStatus.ESME_RINVDSTADR,
    ErrorCode.INVALID_SENDER: CommandStatus.ESME_RINVSRCADR,
    ErrorCode.TOO_LONG: CommandStatus.ESME_RINVMSGLEN,
    ErrorCode.EMPTY_TEXT: CommandStatus.ESME_RINVMSGLEN,
    ErrorCode.QUEUE_FULL: CommandStatus.ESME_RMSGQFUL,
    ErrorCode.STORE_UNAVAILABLE: CommandStatus.ESME_RSYSERR,
    ErrorCode.SENDER_NOT_REGISTERED: CommandStatus.ESME_RINVSRCADR,
    ErrorCode.SENDER_TYPE_UNSUPPORTED: CommandStatus.ESME_RINVSRCADR,
    ErrorCode.FREQUENCY_CAPPED: CommandStatus.ESME_RTHROTTLED,
    # opted_out and content_rejected: ESME_RSUBMITFAIL (the default below)
}
DECODABLE = {0, 1, 3, 8}
# Bytes of expired parts above which freed heap memory is returned to the OS at once.
GIVE_BACK_BYTES = 1 << 20


def query_answer(message: Message) -> QuerySmResp:
    """query_sm_resp for one of the account's messages: message_state, and for a final message
    final_date (UTC) and error_code (the receipt's err: when it is a number that fits)."""
    if not message.status.is_final:
        return QuerySmResp(message_id=message.id, message_state=ENROUTE)
    done = "" if message.done_at is None else final_date(message.done_at)
    error = 0
    if message.error is not None:
        _, _, err = message.error.partition("err:")
        error = int(err) if err.isdigit() and int(err) < 256 else 0
    return QuerySmResp(message_id=message.id, final_date=done,
                       message_state=RECEIPT_STATE.get(message.status, ("UNKNOWN", 7))[1],
                       error_code=error)


def smpp_status_for(code: str) -> int:
    return STATUS_FOR_CODE.get(code, CommandStatus.ESME_RSUBMITFAIL)


def _address(number: str, ton: int) -> str:
    """An SMPP address as the accept path expects it: E.164 numbers with '+'."""
    if ton == 1 and number and not number.startswith("+"):
        return "+" + number
    return number


def message_receipt_mode(registered_deliveries: Iterable[int]) -> int:
    """The receipt request of a message from its parts' registered_delivery (bits 1-0): any
    part asking counts, as gateways such as Kannel ask on the first part only. Asked always
    (01) on any part wins over on failure only (10)."""
    modes = {int(rd) & 0x03 for rd in registered_deliveries}
    if 1 in modes:
        return 1
    return 2 if 2 in modes else 0


@dataclass(slots=True, frozen=True)
class _HeldRequest:
    """A part held for reassembly, as answering it needs it: only its sequence number."""

    sequence_num: int


@dataclass(slots=True)
class _BoundEsme:
    """A bound session of an upstream ESME: its account and bind mode."""

    account: AccountConfig
    conn: SmppConnection
    mode: BindMode


@dataclass(slots=True)
class _AccountState:
    config: AccountConfig
    clients: list[_BoundEsme] = field(default_factory=list)
    bucket: TokenBucket | None = None


class SmppServer:
    def __init__(
        self,
        config: SmppConfig,
        accounts: tuple[AccountConfig, ...],
        acceptor: Acceptor,
        store: Store,
        clock: Callable[[], float] = time.time,
        failed_logins: FailedLogins | None = None,
    ) -> None:
        self.config = config
        self._acceptor = acceptor
        self._store = store
        self._clock = clock
        self._by_system_id = {a.system_id: a for a in accounts if a.system_id}
        self._auth = Authenticator(accounts)
        self._failed_logins = FailedLogins() if failed_logins is None else failed_logins
        self._accounts: dict[str, _AccountState] = {}
        self._conns: set[SmppConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._reassembler: Reassembler[tuple[SmppConnection, Any]] = Reassembler(
            config.reassembly_timeout, config.max_pending_parts, config.max_pending_bytes,
            config.max_pending_bytes_per_account,
        )
        self._expiry: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_bind: dict[SmppConnection, AccountConfig] = {}
        # submit_sm of each session being accepted (answer not sent yet): at most `window`.
        self._submits: dict[SmppConnection, int] = {}
        self._outbox = SmppOutbox(store, self._receivers, self._spawn, config.window,
                                  config.receipt_attempts, clock)
        # registered_delivery of the parts held for reassembly, and when they expire, by key.
        self._part_receipts: dict[Hashable, tuple[tuple[int, ...], float]] = {}
        # Sessions already logged for exceeding the window, and when that was last logged.
        self._window_warned: set[SmppConnection] = set()
        self._window_logged_at = -1e9
        self._refused_logged: set[tuple[SmppConnection, str]] = set()  # (session, command)
        # Connections not bound yet (source address each), capped in total and per address.
        self._unbound: dict[SmppConnection, str] = {}
        self._unbound_per_address: dict[str, int] = {}
        # Lines a peer can trigger at will: one per source and window, with a count.
        self._log_limit = LogLimiter()
        self._stopping = False
        self._ignored_at_stop = 0  # requests that arrived while stopping, left unanswered
        self.port = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        for account in self._by_system_id.values():
            self._accounts[account.name] = _AccountState(account)
            self._publish_account(account)
        listen = self.config.listen
        self._server = await start_server(listen.host, listen.port, self._new_connection)
        self.port = self._server.sockets[0].getsockname()[1]
        for name in self._accounts:
            self._outbox.add(name)
        self._expiry = asyncio.create_task(self._expire_parts())
        metrics.smpp_sessions_max.set(self.config.max_sessions)
        window_total = self.config.window * self.config.max_sessions
        metrics.watch_buffer("reassembly", self.config.max_pending_parts,
                             lambda: self._reassembler.held)
        metrics.watch_buffer("smpp_submits", window_total, lambda: sum(self._submits.values()))
        metrics.watch_buffer("smpp_receipts", window_total, lambda: self._outbox.in_flight)
        metrics.watch_buffer("smpp_unbound", self.config.max_unbound, lambda: len(self._unbound))
        metrics.watch_buffer("reassembly_bytes", self.config.max_pending_bytes,
                             lambda: self._reassembler.held_bytes)
        log.info("smpp_listening", listen=f"{listen.host}:{self.port}")

    @staticmethod
    def _publish_account(account: AccountConfig) -> None:
        metrics.smpp_account_sessions_max.labels(account.name).set(account.max_binds)
        metrics.smpp_sessions.labels(account.name).set(0)

    @property
    def sessions(self) -> dict[str, int]:
        """Bound sessions per account that may bind."""
        return {name: len(state.clients) for name, state in self._accounts.items()}

    def set_accounts(self, accounts: tuple[AccountConfig, ...]) -> None:
        """Take a reloaded set of accounts. New credentials apply to the next bind. Sessions of
        an account that was removed, lost its system_id or had its system_id or password
        changed are unbound (their credentials are no longer valid); other sessions stay, with
        the account's new settings (max_tps, ...). A lower max_binds refuses new binds only."""
        self._by_system_id = {a.system_id: a for a in accounts if a.system_id}
        self._auth = Authenticator(accounts)
        wanted = {a.name: a for a in self._by_system_id.values()}
        for name, state in list(self._accounts.items()):
            new = wanted.get(name)
            old = state.config
            if new is None or (new.system_id, new.password_digest) != (
                    old.system_id, old.password_digest):
                for client in state.clients:
                    log.info("smpp_session_revoked", account=name, peer=client.conn.peername)
                    self._spawn(client.conn.unbind(5.0))
            if new is None:
                del self._accounts[name]
                self._outbox.remove(name)
                for gauge in (metrics.smpp_sessions, metrics.smpp_account_sessions_max):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name)
                continue
            state.config = new
            if new.max_tps != old.max_tps:
                state.bucket = None
            for client in state.clients:
                client.account = new
            metrics.smpp_account_sessions_max.labels(name).set(new.max_binds)
        for name, account in wanted.items():
            if name in self._accounts:
                continue
            state = _AccountState(account)
            self._accounts[name] = state
            self._publish_account(account)
            if self._server is not None and not self._stopping:
                self._outbox.add(name)

    async def stop(self, timeout: float = 5.0) -> None:
        """Hand over cleanly: stop listening and taking requests, answer every submit_sm
        already being accepted once its accept has committed, wait for the ESMEs' answers to
        the receipts in flight and record them, then unbind. What is left at `timeout` seconds
        is cut short; an unanswered receipt stays due and goes out after the restart.

        submit_sm and query_sm that arrive from now on, and the parts held for reassembly, are
        left unanswered and nothing of them is stored: the ESME sends them again after it
        reconnects, as for any request unanswered at a close. (An ESME_RTHROTTLED answer would
        say the same, but Kannel puts a throttled message in its resend queue for
        sms-resend-freq, 60 s by default, where an unanswered one goes out on the next bind.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._server is not None:
            self._server.close()
        # The loops end on this flag: on Python 3.11 wait_for() can swallow a cancel that
        # races with its timeout, so cancelling alone could leave a loop running forever.
        self._stopping = True
        held = self._drop_held_parts()
        log.info("smpp_draining", submits_in_flight=sum(self._submits.values()),
                 receipts_in_flight=self._outbox.in_flight, parts_dropped=held,
                 sessions=len(self._conns))
        tasks: list[asyncio.Task[None]] = self._outbox.halt()
        if self._expiry is not None:
            tasks.append(self._expiry)
            self._expiry.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        await self._wait_tasks(deadline)
        left = (sum(self._submits.values()), self._outbox.in_flight)
        if self._ignored_at_stop:
            log.info("smpp_requests_left_unanswered", requests=self._ignored_at_stop,
                     why="arrived while stopping; the ESME sends them again")
        if left != (0, 0):
            metrics.smpp_drain_cut.inc()
            log.warning("smpp_drain_cut_short", submits_unanswered=left[0],
                        receipts_unanswered=left[1], seconds=timeout)
        await asyncio.gather(*(c.unbind(min(2.0, timeout)) for c in list(self._conns)),
                             return_exceptions=True)
        # Receipts aborted by the close record their retry before the store closes.
        await self._wait_tasks(loop.time() + 1.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        metrics.unwatch_buffers("reassembly", "smpp_submits", "smpp_receipts")
        metrics.unwatch_buffers("smpp_unbound", "reassembly_bytes")

    def _drop_held_parts(self) -> int:
        """Parts of long messages still waiting for the rest: forgotten unanswered, so that the
        ESME sends them again after the restart (nothing of them is stored)."""
        self._part_receipts.clear()
        dropped = sum(len(contexts) for contexts in self._reassembler.expire(float("inf")))
        metrics.smpp_submits.labels("stopping").inc(dropped)
        return dropped

    def _ignore_at_stop(self) -> None:
        """A request that arrived while stopping: not processed, not answered (see stop())."""
        self._ignored_at_stop += 1
        metrics.smpp_submits.labels("stopping").inc()

    async def _wait_tasks(self, deadline: float) -> None:
        """Until every accept and receipt in flight has finished, or the deadline."""
        loop = asyncio.get_running_loop()
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())

    def wake_receipts(self, account: str) -> None:
        self._outbox.wake(account)

    # ---- sessions -------------------------------------------------------------------------------

    def _new_connection(self) -> SmppConnection:
        session = SmppSession(
            Role.SERVER, now=asyncio.get_running_loop().time(), window=self.config.window,
            idle_timeout=self.config.idle_timeout,
            # Our keep-alive must be inside the client's idle limit; theirs drives the link.
            enquire_link_interval=self.config.idle_timeout / 2,
            bind_timeout=self.config.bind_timeout,
        )
        conn = SmppConnection(session, self._on_event)
        conn.on_connected = self._on_connected
        self._conns.add(conn)
        conn.closed.add_done_callback(lambda _f: self._forget(conn))
        return conn

    @staticmethod
    def _address(conn: SmppConnection) -> str:
        return conn.peername.rpartition(":")[0] or conn.peername

    def _on_connected(self, conn: SmppConnection) -> None:
        """Count the new connection as unbound, or close it at once when too many are."""
        address = self._address(conn)
        reason = None
        if len(self._unbound) >= self.config.max_unbound:
            reason = "unbound_total"
        elif self._unbound_per_address.get(address, 0) >= self.config.max_unbound_per_address:
            reason = "unbound_per_address"
        if reason is None:
            self._unbound[conn] = address
            self._unbound_per_address[address] = self._unbound_per_address.get(address, 0) + 1
            return
        metrics.smpp_connections_refused.labels(reason).inc()
        held = self._log_limit.allow((address, "refused"), "smpp_connection_refused")
        if held is not None:
            log.warning("smpp_connection_refused", peer=address, reason=reason,
                        unbound=len(self._unbound), max_unbound=self.config.max_unbound,
                        max_unbound_per_address=self.config.max_unbound_per_address,
                        suppressed=held)
        conn.close()

    def _drop_unbound(self, conn: SmppConnection) -> None:
        address = self._unbound.pop(conn, None)
        if address is None:
            return
        left = self._unbound_per_address.get(address, 0) - 1
        if left > 0:
            self._unbound_per_address[address] = left
        else:
            self._unbound_per_address.pop(address, None)

    def _on_closed(self, conn: SmppConnection, reason: str) -> None:
        if conn.session.mode is not None:  # was bound: always worth a line
            log.info("smpp_session_closed", peer=conn.peername, reason=reason)
            return
        if reason == "bind timeout":
            metrics.smpp_unbound_closed.inc()
        held = self._log_limit.allow((self._address(conn), "closed"), "smpp_session_closed")
        if held is not None:
            log.info("smpp_session_closed", peer=conn.peername, reason=reason, bound=False,
                     suppressed=held)

    def _forget(self, conn: SmppConnection) -> None:
        self._drop_unbound(conn)
        self._conns.discard(conn)
        self._pending_bind.pop(conn, None)
        self._window_warned.discard(conn)
        self._refused_logged = {k for k in self._refused_logged if k[0] is not conn}
        for name, state in self._accounts.items():
            before = len(state.clients)
            state.clients = [c for c in state.clients if c.conn is not conn]
            if len(state.clients) != before:
                metrics.smpp_sessions.labels(name).set(len(state.clients))

    def _on_event(self, conn: SmppConnection, event: object) -> None:
        if isinstance(event, BindRequested):
            self._on_bind(conn, event.pdu)
        elif isinstance(event, Bound):
            self._on_bound(conn, event)
        elif isinstance(event, SessionClosed):
            self._on_closed(conn, event.reason)
        elif isinstance(event, RequestRefused):
            self._on_refused(conn, event)
        elif isinstance(event, RequestReceived):
            pdu = event.pdu
            if isinstance(pdu, SubmitSm) and not isinstance(pdu, DeliverSm):
                if self._stopping:  # shutting down: the ESME keeps it and sends it again
                    self._ignore_at_stop()
                    return
                open_now = self._submits.get(conn, 0)
                if open_now >= self.config.window:  # the ESME ignores its window: slow it down
                    self._refuse(conn, pdu, CommandStatus.ESME_RTHROTTLED, "window_full")
                    self._window_exceeded(conn)
                    return
                self._submits[conn] = open_now + 1
                self._spawn(self._on_submit(conn, pdu, event.raw),
                            lambda: self._submit_done(conn))
            elif isinstance(pdu, QuerySm):
                self._on_query_request(conn, pdu)
            else:  # deliver_sm goes from an SMSC to an ESME, not the other way
                conn.respond(pdu, _resp(DeliverSmResp, CommandStatus.ESME_RINVCMDID))

    def _on_refused(self, conn: SmppConnection, event: RequestRefused) -> None:
        """data_sm (refused by the session with ESME_RINVCMDID): counted; logged once per
        session."""
        command = "data_sm" if event.command_id == 0x103 else f"0x{event.command_id:08X}"
        metrics.smpp_refused_commands.labels(command).inc()
        if (conn, command) in self._refused_logged:
            return
        self._refused_logged.add((conn, command))
        client = self._client(conn)
        log.warning("smpp_command_refused", command=command, peer=conn.peername,
                    account=client.account.name if client is not None else None,
                    status=f"0x{event.status:02X}", hint="send submit_sm instead")

    def _window_exceeded(self, conn: SmppConnection) -> None:
        """Counted per account; logged once per session, and at most once a second over all
        sessions (an ESME reconnecting in a loop does not flood the log)."""
        client = self._client(conn)
        account = client.account.name if client is not None else ""
        metrics.smpp_window_exceeded.labels(account).inc()
        if conn in self._window_warned:
            return
        self._window_warned.add(conn)
        now = time.monotonic()
        if now - self._window_logged_at < 1.0:
            return
        self._window_logged_at = now
        log.warning("smpp_window_exceeded", account=account, peer=conn.peername,
                    window=self.config.window, status="ESME_RTHROTTLED",
                    hint="set the client's window (Kannel: max-pending-submits) to at most "
                         "[smpp] window")

    def _spawn(self, coro: Any, done: Callable[[], None] | None = None) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if done is not None:
            task.add_done_callback(lambda _t: done())

    def _submit_done(self, conn: SmppConnection) -> None:
        left = self._submits.get(conn, 0) - 1
        if left > 0:
            self._submits[conn] = left
        else:
            self._submits.pop(conn, None)

    def _on_bind(self, conn: SmppConnection, pdu: Any) -> None:
        # An address with too many failed binds lately is refused before any credential check.
        address = conn.peername.rpartition(":")[0] or conn.peername
        account: AccountConfig | None = None
        result = "rejected"
        if self._failed_logins.blocked_for(address) > 0:
            status = CommandStatus.ESME_RBINDFAIL
            metrics.auth_failures.labels("smpp").inc()
        else:
            account, status = self._auth.check_bind(str(pdu.system_id), str(pdu.password or ""))
            if account is None:
                metrics.auth_failures.labels("smpp").inc()
                if self._failed_logins.failed(address):
                    log.warning("smpp_logins_blocked", peer=address,
                                seconds=self._failed_logins.cooldown)
            else:
                limit = self._limit_reached(account)
                if limit is not None:
                    status, result = CommandStatus.ESME_RBINDFAIL, limit
        if status != CommandStatus.ESME_ROK:
            metrics.smpp_binds.labels(result).inc()
            # Never the presented system_id or password (a typo of one is the other); one line
            # per source and window, however fast the binds come.
            held = self._log_limit.allow((address, "bind_rejected"), "smpp_bind_rejected")
            if held is None:
                pass
            elif result == "rejected":
                log.warning("smpp_bind_rejected", peer=conn.peername, status=f"0x{status:02X}",
                            suppressed=held)
            else:
                assert account is not None
                log.warning("smpp_bind_rejected", peer=conn.peername,
                            status=f"0x{status:02X}", reason=result, account=account.name,
                            account_sessions=self._sessions_of(account),
                            max_binds=account.max_binds, sessions=self._sessions_total(),
                            max_sessions=self.config.max_sessions, suppressed=held)
            conn.reject_bind(pdu, status)
            return
        assert account is not None
        self._pending_bind[conn] = account
        try:
            conn.accept_bind(pdu, "smsagg")
        except SessionError:  # the peer unbound or dropped in the same breath
            self._pending_bind.pop(conn, None)

    def _sessions_of(self, account: AccountConfig) -> int:
        """Bound sessions of the account, and binds of it accepted but not yet Bound."""
        pending = sum(1 for a in self._pending_bind.values() if a.name == account.name)
        return len(self._accounts[account.name].clients) + pending

    def _sessions_total(self) -> int:
        return sum(len(s.clients) for s in self._accounts.values()) + len(self._pending_bind)

    def _limit_reached(self, account: AccountConfig) -> str | None:
        """None if the account may bind one more session, else which limit stops it."""
        if self._sessions_of(account) >= account.max_binds:
            return "account_limit"
        if self._sessions_total() >= self.config.max_sessions:
            return "total_limit"
        return None

    def _on_bound(self, conn: SmppConnection, event: Bound) -> None:
        self._drop_unbound(conn)
        account = self._pending_bind.pop(conn)
        state = self._accounts.get(account.name)
        if state is None:  # the account was removed by a reload in between
            self._spawn(conn.unbind(5.0))
            return
        state.clients.append(_BoundEsme(account, conn, event.mode))
        metrics.smpp_sessions.labels(account.name).set(len(state.clients))
        metrics.smpp_binds.labels("ok").inc()
        log.info("smpp_bound", account=account.name, peer=conn.peername, mode=event.mode.value)
        if event.mode in (BindMode.RECEIVER, BindMode.TRANSCEIVER):
            self._outbox.wake(account.name)

    def _client(self, conn: SmppConnection) -> _BoundEsme | None:
        for state in self._accounts.values():
            for client in state.clients:
                if client.conn is conn:
                    return client
        return None

    # ---- submit_sm ------------------------------------------------------------------------------

    def _refuse(self, conn: SmppConnection, pdu: Any, status: int, reason: str) -> None:
        metrics.smpp_submits.labels(reason).inc()
        conn.respond(pdu, _resp(SubmitSmResp, status))

    async def _on_submit(self, conn: SmppConnection, pdu: Any, raw: bytes) -> None:
        client = self._client(conn)
        if client is None:  # closed meanwhile
            return
        state = self._accounts[client.account.name]
        if client.account.max_tps is not None:
            if state.bucket is None:
                state.bucket = TokenBucket(client.account.max_tps,
                                           burst=max(1.0, client.account.max_tps))
            if state.bucket.try_take() > 0:
                metrics.rate_limited.labels("smpp").inc()
                self._refuse(conn, pdu, CommandStatus.ESME_RTHROTTLED, "throttled")
                return
        try:
            fields = parse_submit(raw)
        except ValueError:
            self._refuse(conn, pdu, CommandStatus.ESME_RINVMSGLEN, "malformed")
            return
        if fields.data_coding not in DECODABLE:
            self._refuse(conn, pdu, CommandStatus.ESME_RINVDCS, "data_coding")
            return
        concat, body = None, fields.message
        if fields.esm_class & ESM_CLASS_UDHI:
            try:
                concat, body = parse_udh(fields.message)
            except ValueError:
                self._refuse(conn, pdu, CommandStatus.ESME_RINVMSGLEN, "malformed_udh")
                return
        parts = None
        if concat is not None and concat.total > 1:
            parts = (concat.reference, concat.total, concat.seq)
        elif fields.sar is not None and fields.sar.total > 1:
            parts = (fields.sar.reference, fields.sar.total, fields.sar.seq)
        if parts is None:
            await self._accept(client, [(conn, pdu)], pdu, fields, body)
            return
        key = (client.account.name, pdu.source.number, pdu.destination.number, parts[0],
               parts[1])
        try:
            # A held part keeps its sequence number, not its PDU (the part's text once more).
            whole = self._reassembler.add(key, parts[1], parts[2], body,
                                          (conn, _HeldRequest(pdu.sequence_num)),
                                          self._clock(), client.account.name)
        except ReassemblyFull:
            self._refuse(conn, pdu, CommandStatus.ESME_RMSGQFUL, "reassembly_full")
            return
        except ValueError:
            self._refuse(conn, pdu, CommandStatus.ESME_RINVMSGLEN, "bad_part_number")
            return
        receipt_mode = self._parts_receipt_mode(key, fields.registered_delivery, whole is not None)
        if whole is not None:
            await self._accept(client, whole.contexts, pdu, fields, whole.body, receipt_mode)

    def _parts_receipt_mode(self, key: Hashable, registered_delivery: int, whole: bool) -> int:
        """Collect the registered_delivery of a long message's parts as they are held; once the
        message is whole, its receipt request (see message_receipt_mode). Entries of messages whose
        parts expired are dropped when there are more than parts could be held."""
        now = self._clock()
        seen, deadline = self._part_receipts.get(key, ((), now + self.config.reassembly_timeout))
        seen = (*seen, registered_delivery)
        if whole:
            self._part_receipts.pop(key, None)
            return message_receipt_mode(seen)
        if len(self._part_receipts) >= self.config.max_pending_parts:
            self._part_receipts = {k: v for k, v in self._part_receipts.items() if v[1] > now}
        self._part_receipts[key] = (seen, deadline)
        return 0

    async def _accept(self, client: _BoundEsme, requests: list[tuple[SmppConnection, Any]],
                      pdu: Any, fields: RawSubmit, body: bytes,
                      receipt_mode: int | None = None) -> None:
        try:
            text = decode_text(body, fields.data_coding)
        except ValueError:
            for conn, req in requests:
                self._refuse(conn, req, CommandStatus.ESME_RINVMSGLEN, "undecodable")
            return
        item = SubmitInput(
            to=_address(pdu.destination.number, int(pdu.destination.ton)),
            sender=_address(pdu.source.number, int(pdu.source.ton)),
            text=text,
            receipt_mode=(fields.registered_delivery & 0x03 if receipt_mode is None
                          else receipt_mode),
            message_class=class_for_smpp(client.account, pdu.service_type or ""),
        )
        try:
            result = await self._acceptor.accept(client.account.name, item)
        except ApiError as exc:
            status = smpp_status_for(exc.code)
            log.debug("smpp_submit_refused", account=client.account.name, code=exc.code.value)
            for conn, req in requests:
                self._refuse(conn, req, status, exc.code.value)
            return
        metrics.smpp_submits.labels("ok").inc()
        for conn, req in requests:
            if not conn.closed.done():
                conn.respond(req, SubmitSmResp(message_id=result.message.id))

    # ---- query_sm -------------------------------------------------------------------------------

    def _on_query_request(self, conn: SmppConnection, pdu: QuerySm) -> None:
        """query_sm shares the session's window with submit_sm, and is left unanswered the
        same way while stopping."""
        if self._stopping:
            self._ignore_at_stop()
            return
        open_now = self._submits.get(conn, 0)
        if open_now >= self.config.window:
            self._answer_query(conn, pdu, _query_error(CommandStatus.ESME_RTHROTTLED),
                               "window_full")
            return
        self._submits[conn] = open_now + 1
        self._spawn(self._on_query(conn, pdu), lambda: self._submit_done(conn))

    async def _on_query(self, conn: SmppConnection, pdu: QuerySm) -> None:
        """The state of one of the bound account's own messages. An unknown id and another
        account's id get the same answer (ESME_RINVMSGID): ids of others are not revealed."""
        client = self._client(conn)
        if client is None:  # closed meanwhile
            return
        if not pdu.message_id:
            self._answer_query(conn, pdu, _query_error(CommandStatus.ESME_RINVMSGID),
                               "invalid_id")
            return
        try:
            message = await self._store.get_message(client.account.name, pdu.message_id)
        except StoreError as exc:
            metrics.store_errors.labels("smpp_query").inc()
            log.error("smpp_query_failed", account=client.account.name, error=str(exc))
            self._answer_query(conn, pdu, _query_error(CommandStatus.ESME_RQUERYFAIL),
                               "store_error")
            return
        if message is None:
            log.debug("smpp_query_unknown", account=client.account.name)
            self._answer_query(conn, pdu, _query_error(CommandStatus.ESME_RINVMSGID),
                               "unknown_id")
            return
        self._answer_query(conn, pdu, query_answer(message), "ok")

    @staticmethod
    def _answer_query(conn: SmppConnection, pdu: QuerySm, resp: QuerySmResp,
                      result: str) -> None:
        metrics.smpp_queries.labels(result).inc()
        if not conn.closed.done():
            conn.respond(pdu, resp)

    async def _expire_parts(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            held = self._reassembler.held_bytes
            expired = self._reassembler.expire(self._clock())
            if held - self._reassembler.held_bytes >= GIVE_BACK_BYTES:
                give_back()  # a flood of parts expired: return the heap, not just free it
            for contexts in expired:
                for conn, req in contexts:
                    if not conn.closed.done():
                        self._refuse(conn, req, CommandStatus.ESME_RSUBMITFAIL,
                                     "reassembly_timeout")

    # ---- receipts back ------------------------------------------------------------------------

    def _receivers(self, account: str) -> list[SmppConnection]:
        """The account's sessions that may receive its receipts and MO (notify/smpp_outbox.py)."""
        state = self._accounts.get(account)
        if state is None:
            return []
        return [c.conn for c in state.clients if c.mode is not BindMode.TRANSMITTER]


def _query_error(status: int) -> QuerySmResp:
    return QuerySmResp(command_status=status)


def _resp(cls: Any, status: int) -> Any:
    """A header-only error response; aiosmpplib's enum lacks some statuses, so set it after."""
    resp = cls()
    resp.command_status = status
    return resp
