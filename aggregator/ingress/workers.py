"""The daemon's side of `[http] workers`: holds the HTTP port, answers the ingress worker
processes' status calls (ingress/rpc.py; they store on their own), starts them, restarts one
that dies, and stops them first on shutdown so that every request they took is answered
before the store closes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable

from prometheus_client import generate_latest

from aggregator import metrics
from aggregator.config import ListenAddress
from aggregator.ingress.rpc import WorkerServer
from aggregator.log import get_logger
from aggregator.metrics_merge import merge_exposition
from aggregator.store.base import Store

log = get_logger("smsagg.workers")

START_TIMEOUT = 30.0  # seconds for every worker to connect at start
RESTART_DELAY = 1.0  # seconds before a worker that exited is started again


class IngressWorkers:
    def __init__(self, count: int, listen: ListenAddress, config_path: str | None, store: Store,
                 ready: Callable[[], tuple[bool, list[str]]]) -> None:
        self.count = count
        self._listen = listen
        self._config_path = config_path
        self._store = store  # its writer_address (SQLite) goes to the workers
        self.server = WorkerServer(
            lambda: (store.pending, dict(store.pending_by_account)), ready, self.exposition)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._holder: socket.socket | None = None
        self._dir: str | None = None
        self._stopping = False
        self.port = 0

    @property
    def connected(self) -> int:
        return self.server.workers

    def exposition(self) -> str:
        """This process's metrics and every worker's last report, summed."""
        own = generate_latest(metrics.REGISTRY).decode()
        return merge_exposition([own, *self.server.worker_metrics()])

    async def start(self) -> None:
        self.port = self._hold_port()
        self._dir = tempfile.mkdtemp(prefix="smsagg-")  # mode 0700: only our user connects
        path = os.path.join(self._dir, "store.sock")
        await self.server.start(path)
        self._tasks = [asyncio.create_task(self._supervise(i, path), name=f"ingress-worker-{i}")
                       for i in range(1, self.count + 1)]
        deadline = time.monotonic() + START_TIMEOUT
        while self.connected < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.connected} of {self.count} ingress workers started "
                                   f"within {START_TIMEOUT:g} s")
            await asyncio.sleep(0.05)

    def _hold_port(self) -> int:
        """Bind (without listening) with SO_REUSEPORT: it reserves the port, an ephemeral one
        included, for the workers, and takes no connections itself."""
        host, port = self._listen.host, self._listen.port
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        self._holder = sock
        return int(sock.getsockname()[1])

    async def _supervise(self, index: int, rpc_path: str) -> None:
        args = [sys.executable, "-m", "aggregator", "ingress-worker", "--rpc", rpc_path,
                "--port", str(self.port), "--node", str(index)]
        if self._config_path:
            args += ["--config", self._config_path]
        if self._store.writer_address is not None:  # SQLite: the writer process's socket
            args += ["--writer", self._store.writer_address]
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(*args)
            self._procs[index] = proc
            code = await proc.wait()
            if self._stopping:
                return
            log.error("ingress_worker_exited", worker=index, code=code,
                      restart_in=RESTART_DELAY)
            await asyncio.sleep(RESTART_DELAY)

    def reload(self) -> None:
        """Pass a SIGHUP on: each worker re-reads accounts and routes from the file."""
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGHUP)

    async def stop(self, deadline: float) -> None:
        """SIGTERM every worker and wait (until `deadline`, monotonic) for the requests they
        took to be answered; then close the store's socket."""
        self._stopping = True
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        if procs:
            _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                         timeout=max(1.0, deadline - time.monotonic()))
            if late:
                log.error("ingress_workers_killed", count=len(late))
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                await asyncio.gather(*(p.wait() for p in procs))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.stop()
        if self._holder is not None:
            self._holder.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
