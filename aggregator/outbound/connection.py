"""One bind to a provider: connect, bind as transceiver, keep it up (reconnect with backoff), and
hand incoming deliver_sm to the receipt handler. Window and timers live in the SMPP session."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable
from typing import Any

from aggregator import metrics
from aggregator.config import ProviderConfig
from aggregator.log import get_logger
from aggregator.smpp.session import BindMode, RequestReceived, SessionClosed
from aggregator.smpp.transport import BindError, ConnectionLost, SmppConnection, open_client

log = get_logger("smsagg.outbound")

# (bind, the connection the request came on, the request): the answer goes on that
# connection, which may not be `bind.conn` yet (an SMSC sends queued receipts right behind its
# bind_resp, before open_client returns) or any more (the bind reconnected meanwhile).
DeliverHandler = Callable[["Bind", SmppConnection, Any], None]


class Bind:
    def __init__(
        self,
        provider: ProviderConfig,
        index: int,
        on_deliver: DeliverHandler,
        on_change: Callable[[], None],
        on_up: Callable[[], None] | None = None,
        on_window_free: Callable[[], None] | None = None,
    ) -> None:
        """`on_change`: the bind came up or went down; `on_window_free`: a response freed window
        slots (default: `on_change`)."""
        self.provider = provider
        self.name = str(index)
        self.conn: SmppConnection | None = None
        self._on_deliver = on_deliver
        self._on_change = on_change
        self._on_up = on_up
        self._on_window_free = on_window_free or on_change
        self._task: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None
        self._stopping = False
        self._g_up = metrics.bind_up.labels(provider.name, self.name)
        self._g_up.set(0)
        # Read when scraped, not set on every submit and response.
        metrics.window_in_use.labels(provider.name, self.name).set_function(
            lambda: self.in_flight if self.up else 0)

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.closed.done()

    @property
    def free_window(self) -> int:
        conn = self.conn
        if conn is None or conn.closed.done():
            return 0
        return int(conn.session.free_window)

    @property
    def in_flight(self) -> int:
        return int(self.conn.session.in_flight) if self.conn is not None else 0

    def start(self, tls: ssl.SSLContext | None = None) -> None:
        """Keep the bind up from now on; over TLS with ``tls`` (the provider's tls = true)."""
        self._tls = tls
        self._task = asyncio.create_task(self._run(), name=f"bind-{self.provider.name}-{self.name}")

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        conn = self.conn
        if conn is not None and not conn.closed.done():
            try:
                await asyncio.wait_for(conn.unbind(timeout), timeout + 1)
            except (TimeoutError, Exception):  # shutdown: a failed unbind still closes
                conn.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def request(self, pdu: Any, future: asyncio.Future[Any]) -> None:
        """Send now (the caller picked this bind for its free window); ``future`` gets the
        response. Raises WindowFull or NotBound."""
        assert self.conn is not None
        self.conn.request(pdu, future)

    def _on_event(self, conn: SmppConnection, event: object) -> None:
        if isinstance(event, RequestReceived):
            self._on_deliver(self, conn, event.pdu)
        elif isinstance(event, SessionClosed):
            log.info("bind_closed", provider=self.provider.name, bind=self.name,
                     reason=event.reason)

    async def _run(self) -> None:
        p = self.provider
        delay = p.reconnect_min
        last_error = ""
        while not self._stopping:
            try:
                conn = await open_client(
                    p.host, p.port, mode=BindMode.TRANSCEIVER, system_id=p.system_id,
                    password=p.password, system_type=p.system_type, window=p.window,
                    response_timeout=p.response_timeout,
                    enquire_link_interval=p.enquire_link_interval, bind_timeout=p.bind_timeout,
                    on_event=self._on_event, ssl=self._tls, server_hostname=p.tls_server_name,
                    lean_receipts=True,  # receipts come as ReceiptPdu (delivers.py reads them)
                )
            except (OSError, TimeoutError, BindError, ConnectionLost) as exc:
                reason = _failure_reason(exc)
                metrics.bind_failures.labels(p.name, reason).inc()
                error = f"{type(exc).__name__}: {exc}"
                if reason == "tls":
                    error = f"TLS handshake failed: {error}"
                # Once per backoff step, and quieter when nothing changed.
                (log.warning if error != last_error else log.info)(
                    "bind_failed", provider=p.name, bind=self.name, host=p.host, port=p.port,
                    reason=reason, error=error, retry_in=round(delay, 2),
                )
                last_error = error
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(p.reconnect_max, delay * 2)
                continue
            if self._stopping:  # a cancel swallowed by wait_for (Python 3.11) lands here
                conn.close()
                break
            self.conn = conn
            conn.on_window_free = self._on_window_free
            delay = p.reconnect_min
            last_error = ""
            self._g_up.set(1)
            log.info("bind_up", provider=p.name, bind=self.name, host=p.host, port=p.port,
                     tls=self._tls is not None)
            self._on_change()
            if self._on_up is not None:
                self._on_up()
            reason = await conn.closed
            self._g_up.set(0)
            self._on_change()
            if not self._stopping:
                log.warning("bind_lost", provider=p.name, bind=self.name, reason=reason)
                await asyncio.sleep(p.reconnect_min)


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):  # certificate not trusted, wrong name, not TLS, ...
        return "tls"
    if isinstance(exc, BindError):
        return "bind_rejected"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return "network"
