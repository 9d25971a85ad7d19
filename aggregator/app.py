"""Builds and wires every part from one Config, and owns the lifecycle: start, run, drain, stop.
The one module that knows all the others."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aggregator import metrics
from aggregator.cluster import share_of
from aggregator.config import (
    Config,
    ConfigError,
    ListenAddress,
    ProviderConfig,
    account_max_pending,
)
from aggregator.configread import ConfigReadTimeout, load_config_off_pool
from aggregator.delivers import ProviderDelivers
from aggregator.dispatch import Dispatcher
from aggregator.ingress.accept import Acceptor
from aggregator.ingress.connections import ConnectionGuard, GuardedSite, guard_for
from aggregator.ingress.http import HttpApi
from aggregator.ingress.smpp import SmppServer
from aggregator.ingress.workers import IngressWorkers
from aggregator.log import get_logger
from aggregator.mo import MoHandler
from aggregator.model import FinalNotice
from aggregator.notify.callback_guard import CallbackPolicy
from aggregator.notify.callbacks import CallbackSender
from aggregator.outbound.connection import Bind
from aggregator.outbound.pool import ProviderPool
from aggregator.overdue import OverdueReceipts
from aggregator.policy.gate import PolicyGate
from aggregator.policy.profiles import profiles_for
from aggregator.policy.sendcheck import SendCheck
from aggregator.policy.throughput import CountryThroughput
from aggregator.receipts import ReceiptProcessor
from aggregator.retention import Retention
from aggregator.routing import Route, RouteTable
from aggregator.smpp.transport import SmppConnection
from aggregator.store.base import StoreError
from aggregator.store.factory import build_store

log = get_logger("smsagg.app")

GAUGE_INTERVAL = 5.0
QUEUE_STATES = ("accepted", "queued", "submitted")  # the queue_depth gauge's
# Sections a reload does not apply: what they say is used at start-up only.
RESTART_ONLY = ("http", "store", "messages", "callbacks", "log", "smpp", "metrics", "policy")


@dataclass(slots=True, frozen=True)
class BoundAddresses:
    http_host: str
    http_port: int


class App:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        """`config_path` is what ingress workers read ([http] workers; None: the embedded
        default configuration)."""
        self.config = config
        self.store = build_store(
            config, on_commit=metrics.store_commit_seconds.observe, on_lost=self._fail,
            on_accepted=lambda: self.dispatcher.wake(),
            on_outbox=lambda account: (self.callbacks.wake() if account is None
                                       else self._wake_smpp(account)),
            on_members=self._members_changed, held=lambda: self.dispatcher.holding,
            on_recorded=self._recorded)
        # The live instances sharing the store (PostgreSQL), sorted; () alone: whole limits.
        self._members: tuple[str, ...] = ()
        self.routes = RouteTable(Route.from_config(r) for r in config.routes)
        # Changed in place by reload(): the dispatcher, acceptor and MO handler hold these.
        self.pools = {p.name: ProviderPool(p, self._on_deliver) for p in config.providers}
        self.callbacks = CallbackSender(self.store, config.callbacks)
        self.retention = Retention(self.store, config.messages)
        self.receipts = ReceiptProcessor(self.store, self._on_final)
        self.dispatcher = Dispatcher(
            self.store, self.routes, self.pools, config.messages, self._on_final,
            max_in_flight=self._max_in_flight(config),
        )
        for pool in self.pools.values():
            self._wire(pool)
        self.overdue = OverdueReceipts(self.store, self.pools, self.receipts, config.messages,
                                       self._on_final)
        self.profiles = profiles_for(config.policy.countries)
        self.dispatcher.country_limits = CountryThroughput(self.profiles)
        self.accounts = {a.name: a for a in config.accounts}
        # Opt-out, quiet hours and frequency caps again when a message is taken for sending.
        self.send_check = SendCheck(self.profiles, self.accounts, self.store)
        self.dispatcher.send_check = self.send_check
        self.acceptor = Acceptor(
            self.store, self.routes, config.messages,
            max_pending=config.store.max_pending, on_accepted=self.dispatcher.wake,
            policy=PolicyGate(self.profiles, self.accounts, self.store), accounts=self.accounts,
            account_limit=lambda name: account_max_pending(self.accounts.get(name),
                                                           config.store),
        )
        self.mo = MoHandler(self.store, self.profiles, self.accounts, self.acceptor,
                            self.callbacks.wake, on_smpp=self._wake_smpp,
                            auto_reply_interval=config.policy.auto_reply_interval)
        self.delivers = ProviderDelivers(self.receipts, self.mo, self._pool_of)
        self.workers = (
            IngressWorkers(config.http.workers, config.http.listen, config_path, self.store,
                           self.readiness)
            if config.http.workers else None
        )
        self.api = HttpApi(
            self.acceptor, self.store, config.accounts,
            max_body_bytes=config.http.max_body_bytes, ready=self.readiness,
            exposition=self._exposition if self.workers is not None else None,
            callback_policy=CallbackPolicy(config.callbacks.allowed_networks),
        )
        self.smpp = (
            SmppServer(config.smpp, config.accounts, self.acceptor, self.store)
            if config.smpp is not None else None
        )
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._site: GuardedSite | None = None
        self.http_guard: ConnectionGuard | None = None  # when this process serves HTTP
        self._gauges: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._retiring: set[ProviderPool] = set()  # removed or replaced, draining
        self._retire_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.http_port = 0
        self.metrics_port = 0  # [metrics] listen's port once started (0 there: the one taken)
        self.http_scheme = "https" if config.http.tls_cert else "http"
        self.started = asyncio.Event()
        # Set when the daemon cannot go on (its store writer process died): `smsagg run` then
        # stops and exits 1, so that its supervisor restarts it.
        self.failed = asyncio.Event()
        self.failure = ""

    def _recorded(self, provider: str, provider_msg_ids: list[str]) -> None:
        pool = self.pools.get(provider)
        if pool is not None:
            pool.recorded(provider_msg_ids)

    @staticmethod
    def _max_in_flight(config: Config) -> int:
        return max(100, 4 * sum(p.binds * p.window for p in config.providers))

    def _wire(self, pool: ProviderPool) -> None:
        pool.on_bind_change = self.dispatcher.wake
        pool.on_bind_up = self.dispatcher.provider_back
        self._share(pool)

    # ---- cluster limits (aggregator/cluster.py) ---------------------------------------------

    def _share(self, pool: ProviderPool) -> None:
        """This instance's share of the provider's binds and max_tps among the live ones."""
        c = pool.config
        mine = share_of(c.binds, c.max_tps, self._members, self.config.instance.name)
        pool.set_share(mine.binds, mine.max_tps)

    def _members_changed(self, members: tuple[str, ...]) -> None:
        """The live instances changed (one joined or left): share the limits out again."""
        if members == self._members:
            return
        self._members = members
        metrics.cluster_rebalances.inc()
        log.info("cluster_members", instance=self.config.instance.name, members=list(members))
        for pool in self.pools.values():
            self._share(pool)

    # ---- wiring callbacks ----------------------------------------------------------------------

    def _wake_smpp(self, account: str) -> None:
        if self.smpp is not None:
            self.smpp.wake_receipts(account)

    def _fail(self, why: str) -> None:
        self.failure = why
        self.failed.set()

    def _on_final(self, notice: FinalNotice) -> None:
        if notice.callback_url:
            self.callbacks.wake()
        if self.smpp is not None:
            self.smpp.wake_receipts(notice.account)

    def _on_deliver(self, bind: Bind, conn: SmppConnection, pdu: Any) -> None:
        self.delivers.on_deliver(bind, conn, pdu)

    def _pool_of(self, bind: Bind) -> ProviderPool | None:
        """The pool a bind belongs to: the current one, or one draining after a reload."""
        pool = self.pools.get(bind.provider.name)
        if pool is not None and bind in pool.binds:
            return pool
        return next((p for p in self._retiring if bind in p.binds), None)

    # ---- health ---------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[str]]:
        problems = []
        if self.store.pending < 0 or not self.started.is_set():
            problems.append("not started")
        if self.workers is not None and self.workers.connected < self.workers.count:
            problems.append(f"{self.workers.connected} of {self.workers.count} ingress "
                            "workers connected")
        # A provider this instance holds no bind of (its share in a cluster) is not missed.
        holding = [p for p in self.pools.values() if p.share_binds]
        if not any(p.binds_up for p in holding) and (holding or not self.pools):
            problems.append("no provider bind is up")
        store_error = self.store.write_failure()
        if store_error is not None:  # accepts get 503 store_unavailable meanwhile
            problems.append(f"store is failing writes: {store_error}")
        return not problems, problems

    async def _update_gauges(self) -> None:
        while True:
            try:
                counts = await self.store.count_by_status(QUEUE_STATES)
                for state in QUEUE_STATES:
                    metrics.queue_depth.labels(state).set(counts.get(state, 0))
            except StoreError:
                pass
            metrics.store_waiting.set(self.store.writes_queued)
            for name in self.accounts:
                metrics.account_pending.labels(name).set(self.store.pending_by_account.get(name, 0))
            metrics.store_bytes.set(self.store.size_bytes())
            await asyncio.sleep(GAUGE_INTERVAL)

    def _publish_bounds(self) -> None:
        """Each in-memory queue's bound, and its depth read at scrape time."""
        metrics.watch_buffer("store_pending", self.config.store.max_pending,
                             lambda: self.store.pending)
        metrics.watch_buffer("store_writes", self.store.max_writes_queued,
                             lambda: self.store.writes_queued)
        metrics.watch_buffer("dispatch", self.dispatcher.max_in_flight,
                             lambda: self.dispatcher.in_flight)
        metrics.watch_buffer("provider_delivers", self.delivers.max_delivers,
                             lambda: self.delivers.in_flight)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        for note in self.config.store.ignored:
            log.warning("config_key_ignored", note=note)
        await self.store.open()
        for pool in self.pools.values():
            pool.start()
        self.callbacks.start()
        self.dispatcher.start()
        self.overdue.start()
        self.retention.start()
        self._gauges = asyncio.create_task(self._update_gauges(), name="gauges")
        metrics.queue_bound.set(self.config.store.max_pending)
        self._publish_bounds()
        metrics.config_loaded_at.set(time.time())
        if self.config.metrics is not None:
            self._metrics_runner = web.AppRunner(self.api.metrics_app(), access_log=None,
                                                 handle_signals=False)
            await self._metrics_runner.setup()
            m = self.config.metrics.listen
            await web.TCPSite(self._metrics_runner, m.host, m.port).start()
            self.metrics_port = self._metrics_runner.addresses[0][1]
        listen = self.config.http.listen
        if self.workers is not None:  # they serve HTTP; this process relays
            await self.workers.start()
            self.http_port = self.workers.port
        else:
            await self._serve_http()
        if self.smpp is not None:
            await self.smpp.start()
        log.info("started", http=f"{listen.host}:{self.http_port}",
                 url=f"{self.http_scheme}://{ListenAddress(listen.host, self.http_port)}",
                 smpp=self.smpp.port if self.smpp else None,
                 providers=[p.name for p in self.config.providers],
                 store=self.config.store.path, pending=self.store.pending)
        self.started.set()

    async def _serve_http(self) -> None:
        guard = self.http_guard = guard_for(self.config.http)
        self._runner = web.AppRunner(self.api.app(guard), access_log=None,
                                     handle_signals=False, **guard.runner_options())
        await self._runner.setup()
        http = self.config.http
        self._site = GuardedSite(guard, self._runner, http.listen.host, http.listen.port,
                                 backlog=1024, ssl_context=http.ssl_context())
        guard.publish()
        await self._site.start()
        addresses = self._runner.addresses  # (host, port, ...) of each listening socket
        self.http_port = addresses[0][1] if addresses else http.listen.port

    async def _exposition(self) -> bytes:
        assert self.workers is not None
        return self.workers.exposition().encode()

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop taking requests, let submits in flight finish, unbind, close the store."""
        deadline = time.monotonic() + drain_seconds
        self._stopping = True
        log.info("stopping", in_flight=self.dispatcher.in_flight)
        for retire in list(self._retire_tasks):
            retire.cancel()
        await asyncio.gather(*self._retire_tasks, return_exceptions=True)
        if self.workers is not None:
            await self.workers.stop(deadline)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.http_guard is not None:
            self.http_guard.stop()
            metrics.unwatch_buffers("http_connections")
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self.smpp is not None:
            await self.smpp.stop(timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        await self.dispatcher.stop(deadline)
        await self.overdue.stop()
        # Receipts still arriving for what we just sent are worth a moment.
        await self.delivers.wait(max(0.0, min(1.0, deadline - time.monotonic())))
        for pool in [*self.pools.values(), *self._retiring]:
            await pool.stop()
        await self.callbacks.stop()
        await self.retention.stop()
        await self.receipts.close()
        if self._gauges is not None:
            self._gauges.cancel()
            await asyncio.gather(self._gauges, return_exceptions=True)
        await self.delivers.cancel()
        await self.store.close()
        metrics.unwatch_buffers("store_pending", "store_writes", "dispatch", "provider_delivers")
        log.info("stopped")

    # ---- reload (SIGHUP) ------------------------------------------------------------------------

    async def reload_file(self, path: str | None) -> bool:
        """Read the configuration again (``path``, or the embedded default for None) and apply
        it. An invalid file changes nothing: its problems are logged and counted, and the
        running configuration stays."""
        try:
            new = await load_config_off_pool(path)
        except ConfigError as exc:
            metrics.config_reloads.labels("error").inc()
            log.error("config_reload_failed", source=path or "<embedded default>",
                      problems=exc.problems, keeping=self.config.source)
            return False
        except ConfigReadTimeout as exc:  # e.g. a FIFO: the read goes on, unawaited
            metrics.config_reloads.labels("error").inc()
            log.error("config_reload_failed", source=path or "<embedded default>",
                      problems=[str(exc)], keeping=self.config.source)
            return False
        applied = await self.reload(new)
        if applied and self.workers is not None:
            self.workers.reload()
        return applied

    async def reload(self, new: Config) -> bool:
        """Apply a new, valid configuration while running: accounts, providers and routes.

        Providers whose settings did not change keep their pools and binds as they are. A
        changed provider's old pool gets no new submits, drains what it has in flight, unbinds,
        and then the new pool binds (break before make: operators limit binds per system_id);
        meanwhile its messages go to the route's other providers or wait for it. Added
        providers bind at once; removed ones drain and unbind. Every other setting is used at
        start-up only: a change to one is logged as ignored until a restart."""
        async with self._reload_lock:
            if self._stopping:
                return False
            old = self.config
            before = {p.name: p for p in old.providers}
            after = {p.name: p for p in new.providers}
            added = [n for n in after if n not in before]
            changed = [n for n in after if n in before and after[n] != before[n]]
            removed = [n for n in before if n not in after]
            # Added pools first, as the only step that can fail (e.g. a TLS file): then nothing
            # else has changed yet and the old configuration stays whole.
            fresh: dict[str, ProviderPool] = {}
            try:
                for name in added:
                    fresh[name] = ProviderPool(after[name], self._on_deliver)
                    self._wire(fresh[name])
                    fresh[name].start()
            except Exception as exc:
                for pool in fresh.values():
                    await pool.stop()
                    pool.forget_metrics()
                metrics.config_reloads.labels("error").inc()
                log.error("config_reload_failed", source=new.source, error=str(exc),
                          keeping=old.source)
                return False
            ignored = _restart_only_changes(old, new)
            if ignored:
                log.warning("config_reload_ignored", keys=ignored, why="needs a restart")
            self.accounts.clear()
            self.accounts.update((a.name, a) for a in new.accounts)
            self.api.set_accounts(new.accounts)
            if self.smpp is not None:
                self.smpp.set_accounts(new.accounts)
            self.pools.update(fresh)
            self.routes.replace(Route.from_config(r) for r in new.routes)
            self.dispatcher.routes_changed()
            for name in changed:
                self._retire(self.pools.pop(name), after[name])
            for name in removed:
                self._retire(self.pools.pop(name), None)
            self.dispatcher.max_in_flight = self._max_in_flight(new)
            metrics.buffer_bound.labels("dispatch").set(self.dispatcher.max_in_flight)
            self.config = dataclasses.replace(
                old, accounts=new.accounts, providers=new.providers, routes=new.routes,
                source=new.source)
            self.dispatcher.wake()
            metrics.config_reloads.labels("ok").inc()
            metrics.config_loaded_at.set(time.time())
            log.info("config_reloaded", source=new.source,
                     accounts=[a.name for a in new.accounts], routes=len(new.routes),
                     providers_added=added, providers_changed=changed,
                     providers_removed=removed,
                     providers_kept=[n for n in after if n not in added and n not in changed])
            return True

    def _retire(self, pool: ProviderPool, replacement: ProviderConfig | None) -> None:
        """Drain and stop a pool in the background; then start its replacement, if any."""
        self._retiring.add(pool)
        task = asyncio.create_task(self._drain_pool(pool, replacement),
                                   name=f"retire-{pool.name}")
        self._retire_tasks.add(task)
        task.add_done_callback(self._retire_tasks.discard)

    async def _drain_pool(self, pool: ProviderPool, replacement: ProviderConfig | None) -> None:
        deadline = time.monotonic() + pool.config.response_timeout + 1.0
        while pool.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        log.info("provider_retired", provider=pool.name, unanswered=pool.in_flight,
                 replaced=replacement is not None)
        await pool.stop()
        self._retiring.discard(pool)
        pool.forget_metrics()
        if replacement is None or self._stopping:
            return
        new = ProviderPool(replacement, self._on_deliver)
        self._wire(new)
        try:
            new.start()
        except Exception as exc:  # e.g. a TLS file that went missing since the check
            log.error("provider_start_failed", provider=new.name, error=str(exc))
            await new.stop()
            return
        self.pools[new.name] = new
        self.dispatcher.wake()


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys (``section.key``, or a whole optional section) that differ in sections a
    reload does not apply."""
    keys: list[str] = []
    for section in RESTART_ONLY:
        a, b = getattr(old, section), getattr(new, section)
        if a == b:
            continue
        if a is None or b is None:
            keys.append(section)
            continue
        keys.extend(f"{section}.{f.name}" for f in dataclasses.fields(a)
                    if getattr(a, f.name) != getattr(b, f.name))
    return keys
