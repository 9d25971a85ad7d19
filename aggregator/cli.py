"""The `smsagg` command: run the daemon, check a configuration, or run the self-contained demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from aggregator.config import Config, ConfigError, load_config, load_config_or_default
from aggregator.eventloop import run_loop
from aggregator.gctune import settle_after_start, tune_collector
from aggregator.log import get_logger, setup_logging


async def serve(config: Config, drain_seconds: float, config_path: str | None = None) -> int:
    """Run until SIGINT/SIGTERM, then drain and stop. A second signal exits at once. SIGHUP
    reloads accounts, providers and routes from ``config_path`` (None: the embedded default)."""
    from aggregator.app import App

    log = get_logger("smsagg.cli")
    app = App(config, config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        if stop.is_set() or not app.started.is_set():
            log.warning("reload_skipped", signal="SIGHUP",
                        why="stopping" if stop.is_set() else "still starting")
            return
        log.info("signal", signal="SIGHUP")
        task = asyncio.create_task(app.reload_file(config_path), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signame)
            os._exit(1)
        log.info("signal", signal=signame)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await app.start()
    except Exception as exc:
        log.error("start_failed", error=str(exc))
        # Also plainly on stderr: the log may be JSON on stdout, or filtered by level.
        print(f"smsagg: cannot start: {exc}", file=sys.stderr)
        await app.stop(0)
        return 1
    settle_after_start()
    waits: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait()),
                                      asyncio.create_task(app.failed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    code = 0
    if app.failed.is_set():
        log.error("fatal", error=app.failure, action="stopping; restart to recover")
        print(f"smsagg: stopping: {app.failure}", file=sys.stderr)
        code = 1
        drain_seconds = 0.0  # outcomes of submits in flight cannot be stored: no point waiting
    for task in reloads:
        task.cancel()
    await asyncio.gather(*reloads, return_exceptions=True)
    try:
        # The drain has its own deadline; this one catches a stage that never returns.
        await asyncio.wait_for(app.stop(drain_seconds), drain_seconds + 15)
    except TimeoutError:
        log.error("stop_timed_out", seconds=drain_seconds + 15)
        return 1
    return code


def _config_or_report(path: str | None) -> Config | None:
    """The configuration at `path` (None: the embedded default); None after printing why
    it is invalid."""
    try:
        return load_config_or_default(path)
    except ConfigError as exc:
        print(f"smsagg: configuration is invalid:\n{exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    config = _config_or_report(args.config)
    if config is None:
        return 2
    setup_logging(args.log_level or config.log.level, args.log_format or config.log.format,
                  config.log.log_numbers)
    tune_collector()
    return run_loop(serve(config, args.drain_seconds, args.config))


def cmd_ingress_worker(args: argparse.Namespace) -> int:
    from aggregator.ingress.worker import run_worker

    config = _config_or_report(args.config)
    if config is None:
        return 2
    setup_logging(config.log.level, config.log.format, config.log.log_numbers)
    tune_collector()
    return run_loop(run_worker(config, args.config, args.rpc, args.port, args.node,
                               args.writer))


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for note in config.store.ignored:
        print(f"{args.file}: warning: {note}", file=sys.stderr)
    print(
        f"{args.file}: OK ({len(config.accounts)} accounts, {len(config.providers)} providers, "
        f"{len(config.routes)} routes)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from aggregator.demo import run_demo

    return run_loop(run_demo(count=args.count, rate=args.rate, concurrency=args.concurrency,
                             timeout=args.timeout))


def cmd_store_copy(args: argparse.Namespace) -> int:
    from aggregator.store.base import StoreError
    from aggregator.store.copy import copy_store, parse_location

    try:
        source = parse_location(args.source, "sqlite")
        dsn = parse_location(args.target, "postgres")
    except ValueError as exc:
        print(f"smsagg: store copy: {exc}", file=sys.stderr)
        return 2
    setup_logging("warning", "console")  # stdout holds the summary
    try:
        counts = asyncio.run(copy_store(source, dsn, force=args.force))
    except StoreError as exc:
        print(f"smsagg: store copy: {exc}", file=sys.stderr)
        return 1
    print("copied: " + ", ".join(f"{table} {n}" for table, n in counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsagg", description="SMS aggregator daemon")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", help="TOML configuration (default: the embedded one)")
    run.add_argument("--log-format", choices=["json", "console"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--drain-seconds", type=float, default=10.0,
                     help="on SIGTERM, how long in-flight submits may take (default 10)")
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser(
        "ingress-worker", help="an HTTP ingress process ([http] workers); the daemon starts it")
    worker.add_argument("--config", help="TOML configuration (default: the embedded one)")
    worker.add_argument("--rpc", required=True, help="the daemon's socket for status calls")
    worker.add_argument("--writer", help="the SQLite store's writer process socket")
    worker.add_argument("--port", type=int, required=True, help="the HTTP port to share")
    worker.add_argument("--node", type=int, default=1,
                        help="this worker's number (1..127), part of decimal message ids")
    worker.set_defaults(func=cmd_ingress_worker)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    store = sub.add_parser("store", help="store tools").add_subparsers(dest="tool",
                                                                        required=True)
    copy = store.add_parser(
        "copy", help="copy a SQLite store into an empty PostgreSQL database (several instances)")
    copy.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH")
    copy.add_argument("--to", dest="target", required=True, metavar="postgres:DSN",
                      help="e.g. postgres:postgresql://smsagg@db:5432/smsagg")
    copy.add_argument("--force", action="store_true",
                      help="replace what the target database holds")
    copy.set_defaults(func=cmd_store_copy)

    demo = sub.add_parser(
        "demo", help="start the simulator and the daemon, send a burst, report, exit"
    )
    demo.add_argument("--count", type=int, default=2000, help="messages to send (default 2000)")
    demo.add_argument("--rate", type=float, default=0.0,
                      help="messages per second to offer; 0 = as fast as accepted (default)")
    demo.add_argument("--concurrency", type=int, default=50,
                      help="HTTP requests in flight (default 50)")
    demo.add_argument("--timeout", type=float, default=120.0,
                      help="seconds to wait for every receipt (default 120)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
