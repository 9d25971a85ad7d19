"""A throw-away PostgreSQL server: Debian's binaries, initdb in a temporary directory as an
unprivileged user (initdb refuses root), a free loopback port, the unix socket in that
directory, fsync on. Used by `smsagg-sim bench --store postgres` and by the tests (tests/pg.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from itertools import count

START_TIMEOUT = 60.0
_databases = count(1)


def _bin_dir() -> str | None:
    """The newest installed PostgreSQL's bin directory (Debian layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(slots=True)
class PgServer:
    root: str  # temporary directory: data/, the socket, the log
    port: int
    bin_dir: str
    as_user: str | None  # run the binaries as this user (we are root)
    settings: str = ""  # more server options ("-c name=value ..."), e.g. for measuring

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://smsagg@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://smsagg@127.0.0.1:{self.port}/{database}"

    @property
    def socket_dsn(self) -> str:
        """admin_dsn through the unix socket in `root`: no TCP stack per round trip (the
        bench's figures); create_database keeps its query for the new database's DSN."""
        return f"postgresql://smsagg@/postgres?host={self.root}&port={self.port}"

    def _cmd(self, name: str, *args: str) -> list[str]:
        cmd = [os.path.join(self.bin_dir, name), *args]
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def run(self, name: str, *args: str, timeout: float = START_TIMEOUT) -> None:
        done = subprocess.run(self._cmd(name, *args), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            log = ""
            with contextlib.suppress(OSError), open(os.path.join(self.root, "log")) as f:
                log = f.read()[-3000:]
            raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        data = os.path.join(self.root, "data")
        self.run("initdb", "-D", data, "-U", "smsagg", "--auth=trust", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        self.resume()

    def resume(self) -> None:
        """Start the server again after stop(): the same data, port and socket."""
        data = os.path.join(self.root, "data")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=on "
                   f"-c max_connections=300 -c shared_buffers=32MB {self.settings}")
        self.run("pg_ctl", "start", "-w", "-t", str(int(START_TIMEOUT)), "-D", data,
                 "-l", os.path.join(self.root, "log"), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "stop", "-w", "-m", mode, "-D", os.path.join(self.root, "data"))

    def discard(self) -> None:
        """Stop it at once (a throw-away cluster: no shutdown checkpoint) and remove its files."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(settings: str = "") -> PgServer:
    """A new server (with more `settings`, "-c name=value ..."); FileNotFoundError without the
    binaries, KeyError without a `postgres` user to run them as (when we are root),
    RuntimeError when it does not start."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin "
                                "(install the Debian package `postgresql`)")
    as_user: str | None = None
    root = tempfile.mkdtemp(prefix="smsagg-pg-")  # under /tmp: the postgres user can reach it
    if os.geteuid() == 0:
        as_user = "postgres"
        try:
            entry = pwd.getpwnam(as_user)  # KeyError: no such user
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        os.chown(root, entry.pw_uid, entry.pw_gid)
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken before the server binds it
        server = PgServer(root, _free_port(), bin_dir, as_user, settings)
        try:
            server.start()
            return server
        except RuntimeError as exc:
            last = exc
            shutil.rmtree(os.path.join(root, "data"), ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    assert last is not None
    raise last


async def create_database(admin_dsn: str, base_dsn: str | None = None) -> str:
    """A fresh empty database on the server `admin_dsn` reaches; its DSN (`base_dsn`, or
    `admin_dsn`, with the database name replaced)."""
    import urllib.parse

    import asyncpg

    name = f"t{os.getpid()}_{next(_databases)}"
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = await asyncpg.connect(admin_dsn)
            break
        except (OSError, asyncpg.CannotConnectNowError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = urllib.parse.urlsplit(base_dsn or admin_dsn)
    return urllib.parse.urlunsplit(url._replace(path=f"/{name}"))
