"""smsagg and the simulator SMSC as child processes, as an operator runs them: a configuration
builder, processes whose output is read line by line, start-and-wait-until-up helpers.

Used by `smsagg demo`, `smsagg-sim bench` and the tests (tests/helpers.py, tests/cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

START_TIMEOUT = 30.0  # seconds for "listening on", "started" and /readyz
STOP_TIMEOUT = 20.0  # seconds after SIGTERM, before SIGKILL

# The one provider of a generated configuration: the simulator SMSC (its defaults accept any
# system_id and password).
SIM_PROVIDER: dict[str, Any] = {
    "name": "sim", "host": "127.0.0.1", "system_id": "smsagg", "password": "pw",
    "binds": 2, "window": 10,
}
# Retries and reconnects in tens of milliseconds, for tests that wait for them.
QUICK_RECONNECT: dict[str, Any] = {"reconnect_min": 0.05, "reconnect_max": 0.5}
QUICK_RETRIES: dict[str, Any] = {"retry_min": 0.05, "retry_max": 0.5}
# Callbacks may reach a receiver on loopback (the load's, the tests').
LOOPBACK_CALLBACKS: dict[str, Any] = {"allowed_networks": ["127.0.0.0/8"]}


# -- configuration ------------------------------------------------------------------------------


def daemon_config(
    smsc_port: int,
    store: Mapping[str, Any],
    accounts: Sequence[Mapping[str, Any]],
    *,
    provider: Mapping[str, Any] | None = None,
    prefixes: Sequence[str] = ("*",),
    http: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A configuration for smsagg, as TOML parses it: HTTP on 127.0.0.1 (a free port; `http`
    adds keys), `store`, `accounts`, and one provider "sim" (SIM_PROVIDER with `provider` over
    it, at 127.0.0.1:`smsc_port`) on the route for `prefixes`; `sections` are more sections by
    name ([smpp], [messages], [callbacks], [log], [instance], ...)."""
    return {
        "http": {"listen": "127.0.0.1:0", **(http or {})},
        "store": dict(store),
        **{name: dict(section) for name, section in (sections or {}).items()},
        "accounts": [dict(account) for account in accounts],
        "providers": [{**SIM_PROVIDER, "port": smsc_port, **(provider or {})}],
        "routes": [{"prefixes": list(prefixes), "providers": ["sim"]}],
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(data: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]]) -> str:
    """`data` (sections of scalar keys, or lists of them: arrays of tables) as TOML."""
    out: list[str] = []
    for name, section in data.items():
        tables = [section] if isinstance(section, Mapping) else list(section)
        header = f"[{name}]" if isinstance(section, Mapping) else f"[[{name}]]"
        for table in tables:
            out.append(header)
            out.extend(f"{key} = {_toml_value(v)}" for key, v in table.items() if v is not None)
    return "\n".join(out) + "\n"


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    """Write `data` (daemon_config's form) to `path` as TOML; returns `path`."""
    path.write_text(toml_text(data), encoding="utf-8")
    return path


# -- processes ----------------------------------------------------------------------------------


class Process:
    """A child process whose output is read line by line (so it never blocks on a full pipe);
    its last lines are kept for error messages, and every line goes to `on_line` when given."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.proc = proc
        self.tail: deque[str] = deque(maxlen=20)
        self._on_line = on_line
        self._readers: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, name: str, *args: str, merge_stderr: bool = False,
                    env: Mapping[str, str] | None = None, cwd: Path | None = None,
                    on_line: Callable[[str], None] | None = None) -> Process:
        """`python ARGS`; with `merge_stderr`, its stderr goes to its stdout."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None, cwd=cwd,
        )
        return cls(name, proc, on_line)

    def _seen(self, raw: bytes) -> str:
        line = raw.decode(errors="replace").rstrip("\n")
        self.tail.append(line)
        if self._on_line is not None:
            self._on_line(line)
        return line

    async def wait_for_line(self, stream: asyncio.StreamReader | None, marker: str,
                            timeout: float = START_TIMEOUT) -> str:
        """The first line containing `marker` (lines before it are kept in the tail)."""
        assert stream is not None

        async def scan() -> str:
            while True:
                raw = await stream.readline()
                if not raw:
                    raise RuntimeError(f"{self.name} exited before printing {marker!r}"
                                       f"{self.describe_tail()}")
                line = self._seen(raw)
                if marker in line:
                    return line

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name} printed no {marker!r} within {timeout:g} s"
                               f"{self.describe_tail()}") from None

    def follow(self, stream: asyncio.StreamReader | None,
               on_line: Callable[[str], None] | None = None) -> None:
        """Read `stream` to its end in the background, calling on_line(line) for each line."""
        if stream is None:
            return

        async def read() -> None:
            while raw := await stream.readline():
                line = self._seen(raw)
                if on_line is not None:
                    on_line(line)

        self._readers.append(asyncio.create_task(read(), name=f"{self.name}-reader"))

    def follow_all(self) -> None:
        """Read (and keep the tail of) everything the process still writes."""
        self.follow(self.proc.stdout)
        self.follow(self.proc.stderr)

    def describe_tail(self) -> str:
        return (":\n  " + "\n  ".join(self.tail)) if self.tail else ""

    async def stop(self, timeout: float = STOP_TIMEOUT, *, kill: bool = False,
                   output_wait: float = 5.0) -> int:
        """SIGTERM (SIGKILL with `kill`), then SIGKILL after `timeout` seconds; waits up to
        `output_wait` seconds for the rest of its output."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            code = await self.proc.wait()
        if self._readers:
            _, pending = await asyncio.wait(self._readers, timeout=output_wait)
            for task in pending:
                task.cancel()
        return code


async def start_smsc(*options: str, timeout: float = START_TIMEOUT) -> tuple[Process, int]:
    """`python -m simulator smsc --port 0 OPTIONS`, once it listens: the process (stdout and
    stderr still to be read: `follow`) and its SMPP port."""
    smsc = await Process.start("simulator SMSC", "-m", "simulator", "smsc", "--port", "0",
                               *options)
    try:
        line = await smsc.wait_for_line(smsc.proc.stderr, "listening on", timeout)
    except BaseException:
        await smsc.stop(kill=True)
        raise
    return smsc, int(line.rsplit(":", 1)[1].split()[0])  # "listening on HOST:PORT (notes)"


async def start_daemon(config: Path, *options: str, timeout: float = START_TIMEOUT,
                       merge_stderr: bool = False, env: Mapping[str, str] | None = None,
                       cwd: Path | None = None,
                       on_line: Callable[[str], None] | None = None,
                       ) -> tuple[Process, dict[str, Any]]:
    """`python -m aggregator run --config CONFIG OPTIONS`, once it has started: the process
    (its output still to be read: `follow`) and its "started" log record (keys ``http``: the
    HTTP host:port, ``smpp``: the SMPP port or None, ...)."""
    daemon = await Process.start("smsagg", "-m", "aggregator", "run", "--config", str(config),
                                 *options, merge_stderr=merge_stderr, env=env, cwd=cwd,
                                 on_line=on_line)
    try:
        if not merge_stderr:
            daemon.follow(daemon.proc.stderr)
        started = started_record(await daemon.wait_for_line(daemon.proc.stdout, '"started"',
                                                            timeout))
    except BaseException:
        await daemon.stop(kill=True)
        raise
    return daemon, started


def started_record(line: str) -> dict[str, Any]:
    """The daemon's "started" log record in `line`. Its child processes write to the same pipe,
    so another record may share the line (one written before its newline)."""
    decoder = json.JSONDecoder()
    start = line.find("{")
    while start >= 0:
        try:
            record, end = decoder.raw_decode(line, start)
        except ValueError:
            start = line.find("{", start + 1)
            continue
        if isinstance(record, dict) and record.get("event") == "started":
            return record
        start = line.find("{", end)
    raise RuntimeError(f"smsagg: no \"started\" record in {line!r}")


async def wait_ready(base: str, timeout: float = START_TIMEOUT) -> None:
    """Poll smsagg's /readyz until it answers 200 (a provider bind is up)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"smsagg not ready within {timeout:g} s (no provider bind up)")
