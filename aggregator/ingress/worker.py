"""An ingress worker process (`[http] workers`): serves the HTTP API on the daemon's port
(SO_REUSEPORT), parses and validates here, and stores on its own (store/factory.worker_store:
the SQLite writer process, or PostgreSQL directly); the daemon tells it the pending counts and
merges its metrics (ingress/rpc.py).

The daemon starts it with `smsagg ingress-worker`; it exits when the daemon goes away, stops on
SIGTERM after the requests under way, and re-reads the accounts on SIGHUP."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from aggregator import metrics
from aggregator.config import Config, ConfigError, account_max_pending, load_config_or_default
from aggregator.ingress.accept import Acceptor
from aggregator.ingress.connections import GuardedSite, guard_for
from aggregator.ingress.http import HttpApi
from aggregator.ingress.rpc import DaemonClient
from aggregator.log import get_logger
from aggregator.notify.callback_guard import CallbackPolicy
from aggregator.policy.gate import PolicyGate
from aggregator.policy.profiles import profiles_for
from aggregator.routing import Route, RouteTable
from aggregator.store.factory import worker_store

log = get_logger("smsagg.worker")


async def run_worker(config: Config, config_path: str | None, rpc_path: str, port: int,
                     node: int = 1, writer: str | None = None) -> int:
    store_lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def lost(why: str) -> None:  # SQLite: the writer process ends with the daemon
        if not store_lost.done():
            store_lost.set_result(why)

    store = worker_store(config, writer, node, on_lost=lost)
    await store.open()

    def on_status(pending: int, by_account: dict[str, int]) -> None:
        """The daemon's counts (every process's accepts, its sends) replace this worker's."""
        store.pending, store.pending_by_account = pending, Counter(by_account)

    remote = await DaemonClient.connect(
        rpc_path, lambda: generate_latest(metrics.REGISTRY).decode(), on_status)
    log.info("worker_store_opened", backend=config.store.backend, node=node)
    direct = metrics.worker_direct_accepts.labels(config.store.backend)
    routes = RouteTable(Route.from_config(r) for r in config.routes)
    profiles = profiles_for(config.policy.countries)
    accounts = {a.name: a for a in config.accounts}
    acceptor = Acceptor(store, routes, config.messages, max_pending=config.store.max_pending,
                        on_accepted=direct.inc, policy=PolicyGate(profiles, accounts, store),
                        accounts=accounts, id_node=node,
                        account_limit=lambda name: account_max_pending(accounts.get(name),
                                                                       config.store))

    async def exposition() -> bytes:
        await remote.report()  # this worker's figures as of now, not of its last report
        text: str = await remote.call("metrics")
        return text.encode()

    api = HttpApi(acceptor, store, config.accounts, max_body_bytes=config.http.max_body_bytes,
                  ready=lambda: remote.call("ready"), exposition=exposition,
                  callback_policy=CallbackPolicy(config.callbacks.allowed_networks))
    guard = guard_for(config.http)
    runner = web.AppRunner(api.app(guard), access_log=None, handle_signals=False,
                           **guard.runner_options())
    await runner.setup()
    site = GuardedSite(guard, runner, config.http.listen.host, port, backlog=1024,
                       reuse_port=True, ssl_context=config.http.ssl_context())
    guard.publish()
    await site.start()
    await remote.call("serving")  # the daemon says "started" once every worker has

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = load_config_or_default(config_path)
        except ConfigError as exc:
            log.error("worker_reload_failed", problems=exc.problems)
            return
        accounts.clear()
        accounts.update((a.name, a) for a in new.accounts)
        api.set_accounts(new.accounts)
        routes.replace(Route.from_config(r) for r in new.routes)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("worker_started", port=port)
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    ends: list[asyncio.Future[Any]] = [stopping, remote.lost, store_lost]
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if (remote.lost.done() or store_lost.done()) and not stop.is_set():
        log.error("worker_lost_daemon", note="the daemon is gone; exiting")
    await runner.cleanup()  # stops listening, then lets the requests under way finish
    guard.stop()
    await remote.close()
    await store.close()
    return 0
