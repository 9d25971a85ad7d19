"""`smsagg-sim` command: operator simulators and load tools, one subcommand each.

To add a subcommand, write `_add_<name>_args(parser)` and `_run_<name>(args) -> int` and list
them in COMMANDS. Every subcommand also gets the common options (--loop, --log-level).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.smsc import Smsc, SmscProfile


@dataclass(slots=True, frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def run_async(main: Coroutine[Any, Any, int], loop: str = "auto") -> int:
    """Run a coroutine on uvloop ("auto": when it is installed) or on asyncio's own loop."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                main.close()
                raise
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set `stop`; a second one forces exit (the clean stop may hang)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            print(f"signal {signum} again: forced exit", file=sys.stderr, flush=True)
            os._exit(1)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


def emit_summary(summary: dict[str, Any], stats_file: str | None) -> None:
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text, flush=True)
    if stats_file:
        Path(stats_file).write_text(text + "\n", encoding="utf-8")


# -- smsc ---------------------------------------------------------------------------------------


def _add_smsc_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2776, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="delay before answering submit_sm")
    parser.add_argument("--receipt-delay-ms", type=float, default=0.0,
                        help="delay between submit_sm_resp and the receipt")
    parser.add_argument("--undeliverable-ratio", type=float, default=0.0,
                        help="share of receipts with stat:UNDELIV (0..1)")
    parser.add_argument("--max-tps", type=float, default=None,
                        help="submits/s per system_id above which ESME_RTHROTTLED is answered")
    parser.add_argument("--no-receipts", action="store_true", help="never send receipts")
    parser.add_argument("--all-receipts", action="store_true",
                        help="send receipts even when registered_delivery does not ask for one")
    parser.add_argument("--receipt-id-format", choices=("same", "decimal"), default="same")
    parser.add_argument("--system-id", default=None, help="only accept binds with this system_id")
    parser.add_argument("--password", default=None, help="only accept binds with this password")
    parser.add_argument("--window", type=int, default=100,
                        help="deliver_sm window per session")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stats-interval", type=float, default=5.0,
                        help="seconds between stats lines on stderr (0: none)")
    parser.add_argument("--stats-file", default=None, help="also write the final JSON here")


def _smsc_profile(args: argparse.Namespace) -> SmscProfile:
    return SmscProfile(
        latency=args.latency_ms / 1000.0,
        receipt_delay=args.receipt_delay_ms / 1000.0,
        undeliverable_ratio=args.undeliverable_ratio,
        max_tps=args.max_tps,
        receipts=not args.no_receipts,
        receipt_id_format=args.receipt_id_format,
        system_id=args.system_id,
        password=args.password,
        window=args.window,
        seed=args.seed,
        honor_registered_delivery=not args.all_receipts,
    )


def _stats_line(smsc: Smsc, previous_submits: int, interval: float) -> str:
    rate = (smsc.submits_total - previous_submits) / interval if interval > 0 else 0.0
    per_bind = " ".join(
        f"{s.bind_id}={s.max_outstanding}" for s in smsc.bind_stats.values() if s.bound
    )
    return (
        f"submits={smsc.submits_total} rate={rate:.0f}/s throttled={smsc.throttled_total}"
        f" receipts_sent={smsc.receipts_sent} receipts_acked={smsc.receipts_acked}"
        f" pending={smsc.pending_receipts} binds={smsc.binds_total}"
        f" max_outstanding[{per_bind}]"
    )


async def _serve_smsc(args: argparse.Namespace) -> int:
    smsc = Smsc(_smsc_profile(args), host=args.host, port=args.port)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await smsc.start()
    print(f"listening on {smsc.host}:{smsc.port}", file=sys.stderr, flush=True)
    started = last_time = time.monotonic()
    last_submits = 0
    interval = args.stats_interval if args.stats_interval > 0 else None
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            now = time.monotonic()
            print(_stats_line(smsc, last_submits, now - last_time), file=sys.stderr, flush=True)
            last_time, last_submits = now, smsc.submits_total
    await smsc.stop()
    summary = smsc.summary()
    elapsed = time.monotonic() - started
    summary["elapsed_s"] = round(elapsed, 3)
    summary["submit_rate"] = round(smsc.submits_total / elapsed, 1) if elapsed > 0 else 0.0
    emit_summary(summary, args.stats_file)
    return 0


def _run_smsc(args: argparse.Namespace) -> int:
    return run_async(_serve_smsc(args), args.loop)


COMMANDS: dict[str, Command] = {
    "smsc": Command("run a simulated operator SMSC (SMPP server)", _add_smsc_args, _run_smsc),
}


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop (auto: uvloop when installed)")
    common.add_argument("--log-level", default="WARNING")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsagg-sim", description="smsagg simulators")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(
            name, help=command.help, description=command.help, parents=[common]
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.run(args)
    except ValueError as exc:  # invalid profile values
        print(f"smsagg-sim: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ImportError) as exc:  # address in use, --loop uvloop without uvloop
        print(f"smsagg-sim: error: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
