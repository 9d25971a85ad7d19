"""Builds and wires every part from one Config, and owns the lifecycle: start, run, drain, stop.
The one module that knows all the others."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiosmpplib import DeliverSm, DeliverSmResp

from aggregator import metrics
from aggregator.config import Config
from aggregator.dispatch import Dispatcher
from aggregator.ingress.accept import Acceptor
from aggregator.ingress.callbacks import CallbackSender
from aggregator.ingress.http import HttpApi
from aggregator.ingress.smpp import SmppServer
from aggregator.log import get_logger
from aggregator.mo import MoHandler
from aggregator.model import FinalNotice, ReceiptUpdate
from aggregator.outbound.connection import Bind
from aggregator.outbound.pool import ProviderPool
from aggregator.policy.gate import PolicyGate
from aggregator.policy.profiles import bundled_profiles, load_profiles
from aggregator.receipts import (
    ReceiptProcessor,
    normalise_receipt_id,
    parse_receipt,
    receipt_error,
)
from aggregator.routing import Route, RouteTable
from aggregator.store.base import StoreError
from aggregator.store.sqlite import SqliteStore

log = get_logger("smsagg.app")

GAUGE_INTERVAL = 5.0


@dataclass(slots=True, frozen=True)
class BoundAddresses:
    http_host: str
    http_port: int


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = SqliteStore(config.store.path, commit_batch=config.store.commit_batch)
        self.routes = RouteTable(
            Route(r.prefixes, r.providers, r.message_class, r.strategy, r.weights, r.max_tps)
            for r in config.routes
        )
        self.pools = {p.name: ProviderPool(p, self._on_deliver) for p in config.providers}
        self.callbacks = CallbackSender(self.store, config.callbacks)
        self.receipts = ReceiptProcessor(self.store, self._on_final)
        window_total = sum(p.binds * p.window for p in config.providers)
        self.dispatcher = Dispatcher(
            self.store, self.routes, self.pools, config.messages, self._on_final,
            max_in_flight=max(100, 4 * window_total),
        )
        for pool in self.pools.values():
            pool.on_bind_change = self.dispatcher.wake
            pool.on_bind_up = self.dispatcher.provider_back
        self.profiles = (load_profiles(config.policy.countries) if config.policy.countries
                         else bundled_profiles())
        accounts = {a.name: a for a in config.accounts}
        self.acceptor = Acceptor(
            self.store, self.routes, config.messages,
            max_pending=config.store.max_pending, on_accepted=self.dispatcher.wake,
            policy=PolicyGate(self.profiles, accounts, self.store),
        )
        self.mo = MoHandler(self.store, self.profiles, accounts, self.acceptor,
                            self.callbacks.wake, on_smpp=self._wake_smpp)
        self.api = HttpApi(
            self.acceptor, self.store, config.accounts,
            max_body_bytes=config.http.max_body_bytes, ready=self.readiness,
        )
        self.smpp = (
            SmppServer(config.smpp, config.accounts, self.acceptor, self.store)
            if config.smpp is not None else None
        )
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gauges: asyncio.Task[None] | None = None
        self.http_port = 0
        self.started = asyncio.Event()

    # ---- wiring callbacks ----------------------------------------------------------------------

    def _wake_smpp(self, account: str) -> None:
        if self.smpp is not None:
            self.smpp.wake_receipts(account)

    def _on_final(self, notice: FinalNotice) -> None:
        if notice.callback_url:
            self.callbacks.wake()
        if self.smpp is not None:
            self.smpp.wake_receipts(notice.account)

    def _on_deliver(self, bind: Bind, pdu: Any) -> None:
        task = asyncio.ensure_future(self._handle_deliver(bind, pdu))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_deliver(self, bind: Bind, pdu: Any) -> None:
        conn = bind.conn
        provider = bind.provider
        if not isinstance(pdu, DeliverSm) or not pdu.is_receipt():
            try:
                await self.mo.handle(provider.name, pdu)
            except StoreError as exc:  # not acknowledged: the operator sends it again
                log.error("mo_store_failed", provider=provider.name, error=str(exc))
                return
            if conn is not None and not conn.closed.done():
                conn.respond(pdu, DeliverSmResp())
            return
        tlvs = {p.tag: p.value for p in (pdu.optional_params or [])}
        parsed = parse_receipt(pdu.short_message or pdu.message_payload or "", tlvs)
        if parsed is None:
            metrics.receipts.labels(provider.name, "unparsable").inc()
            log.warning("receipt_unparsable", provider=provider.name, bind=bind.name)
            if conn is not None:
                conn.respond(pdu, DeliverSmResp())
            return
        update = ReceiptUpdate(
            provider=provider.name,
            provider_msg_id=normalise_receipt_id(parsed.provider_msg_id, provider.receipt_id),
            status=parsed.status,
            error=receipt_error(parsed),
            received_at=time.time(),
        )
        try:
            await self.pools[provider.name].wait_recorded(update.provider_msg_id)
            await self.receipts.apply(update)
        except StoreError as exc:
            # Not acknowledged: the operator sends it again.
            log.error("receipt_store_failed", provider=provider.name, error=str(exc))
            return
        if conn is not None and not conn.closed.done():
            conn.respond(pdu, DeliverSmResp())

    # ---- health ---------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[str]]:
        problems = []
        if self.store.pending < 0 or self._runner is None:
            problems.append("not started")
        if not any(p.binds_up for p in self.pools.values()):
            problems.append("no provider bind is up")
        return not problems, problems

    async def _update_gauges(self) -> None:
        while True:
            try:
                counts = await self.store.count_by_status()
                for state in ("accepted", "queued", "submitted"):
                    metrics.queue_depth.labels(state).set(counts.get(state, 0))
            except StoreError:
                pass
            metrics.store_waiting.set(self.store.waiting)
            metrics.store_bytes.set(self.store.size_bytes())
            await asyncio.sleep(GAUGE_INTERVAL)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        for pool in self.pools.values():
            pool.start()
        self.callbacks.start()
        self.dispatcher.start()
        self._gauges = asyncio.create_task(self._update_gauges(), name="gauges")
        metrics.queue_bound.set(self.config.store.max_pending)
        if self.config.metrics is not None:
            self._metrics_runner = web.AppRunner(self.api.metrics_app(), access_log=None,
                                                 handle_signals=False)
            await self._metrics_runner.setup()
            m = self.config.metrics.listen
            await web.TCPSite(self._metrics_runner, m.host, m.port).start()
        self._runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        listen = self.config.http.listen
        self._site = web.TCPSite(self._runner, listen.host, listen.port, backlog=1024)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else listen.port
        if self.smpp is not None:
            await self.smpp.start()
        log.info("started", http=f"{listen.host}:{self.http_port}",
                 smpp=self.smpp.port if self.smpp else None,
                 providers=[p.name for p in self.config.providers],
                 store=self.config.store.path, pending=self.store.pending)
        self.started.set()

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop taking requests, let submits in flight finish, unbind, close the store."""
        deadline = time.monotonic() + drain_seconds
        log.info("stopping", in_flight=self.dispatcher.in_flight)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self.smpp is not None:
            await self.smpp.stop(timeout=2.0)
        await self.dispatcher.stop(deadline)
        # Receipts still arriving for what we just sent are worth a moment.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        for pool in self.pools.values():
            await pool.stop()
        await self.callbacks.stop()
        await self.receipts.close()
        if self._gauges is not None:
            self._gauges.cancel()
            await asyncio.gather(self._gauges, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
        log.info("stopped")
