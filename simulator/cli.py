"""`smsagg-sim` command: operator simulators and load tools, one subcommand each.

To add a subcommand, write `_add_<name>_args(parser)` and `_run_<name>(args) -> int` and list
them in COMMANDS. Every subcommand also gets the common options (--loop, --log-level).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.eventloop import install_stop_signals, run_loop
from aggregator.smpp.status import CommandStatus
from simulator import bench as bench_command
from simulator import load as load_command
from simulator.handsets import HandsetBook
from simulator.profiles import SmscSpec, load_profiles
from simulator.smsc import Smsc, SmscProfile


@dataclass(slots=True, frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def emit_summary(summary: dict[str, Any], stats_file: str | None) -> None:
    text = json.dumps(summary, indent=2, sort_keys=True)
    print(text, flush=True)
    if stats_file:
        Path(stats_file).write_text(text + "\n", encoding="utf-8")


# -- smsc ---------------------------------------------------------------------------------------


def add_smsc_args(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--lose-receipts", type=float, default=0.0, metavar="RATIO",
                        help="share of receipts never sent (query_sm still answers), 0..1")
    parser.add_argument("--no-query-sm", action="store_true",
                        help="answer query_sm with generic_nack (ESME_RINVCMDID)")
    parser.add_argument("--receipts-any-bind", action="store_true",
                        help="send each receipt on the next bound session of the system_id in"
                             " turn, not the submit's own (as real SMSCs may)")
    parser.add_argument("--system-id", default=None, help="only accept binds with this system_id")
    parser.add_argument("--password", default=None, help="only accept binds with this password")
    parser.add_argument("--window", type=int, default=100,
                        help="deliver_sm window per session")
    parser.add_argument("--seed", type=int, default=None)
    faults = parser.add_argument_group("faults")
    faults.add_argument("--error-ratio", type=float, default=0.0,
                        help="share of submit_sm answered with --error-status, no receipt (0..1)")
    faults.add_argument("--error-status", type=_command_status,
                        default=int(CommandStatus.ESME_RSYSERR),
                        help="command_status for --error-ratio, e.g. 0x08 or 8 (default 0x08)")
    faults.add_argument("--drop-ratio", type=float, default=0.0,
                        help="share of submit_sm never answered (0..1)")
    faults.add_argument("--disconnect-after", type=int, default=None, metavar="N",
                        help="close a session's connection (no unbind) at its Nth submit_sm")
    faults.add_argument("--disconnect-every", type=float, default=None, metavar="SECONDS",
                        help="close every bound session's connection every SECONDS")
    faults.add_argument("--refuse-binds", action="store_true",
                        help="answer every bind with ESME_RBINDFAIL")
    faults.add_argument("--latency-jitter-ms", type=float, default=0.0,
                        help="answer latency uniform in latency +/- this (floor 0)")
    handsets = parser.add_argument_group("handsets")
    handsets.add_argument("--handset", action="append", type=_number_value, default=None,
                          metavar="NUMBER_OR_PREFIX=BEHAVIOUR",
                          help="deliver, unreachable, roaming or invalid for this number or"
                               " prefix (longest prefix wins); repeatable")
    handsets.add_argument("--reply", action="append", type=_number_value, default=None,
                          metavar="NUMBER=TEXT",
                          help="this number (or prefix) answers every message it receives"
                               " with TEXT as an MO deliver_sm, e.g. +38344123456=STOP;"
                               " repeatable")
    handsets.add_argument("--roaming-delay-ms", type=float, default=5000.0,
                          help="extra receipt delay for roaming handsets (default 5000)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="TOML file with one [[smsc]] table per SMSC (name, port, profile"
                             " keys; see config/sim-profile.example.toml): runs them all;"
                             " the profile options above are then not allowed")
    parser.add_argument("--stats-interval", type=float, default=5.0,
                        help="seconds between stats lines on stderr (0: none)")
    parser.add_argument("--stats-file", default=None, help="also write the final JSON here")
    parser.add_argument("--tls-cert", default=None, metavar="PEM",
                        help="serve SMPP over TLS only, with this certificate chain (PEM);"
                             " needs --tls-key; with --profile, for every SMSC")
    parser.add_argument("--tls-key", default=None, metavar="PEM",
                        help="the unencrypted private key (PEM) of --tls-cert")


def _number_value(text: str) -> tuple[str, str]:
    number, sep, value = text.partition("=")
    if not sep or not number or not value:
        raise argparse.ArgumentTypeError(f"expected NUMBER=VALUE, got {text!r}")
    return number.strip(), value


def _handset_book(args: argparse.Namespace) -> HandsetBook | None:
    if not args.handset and not args.reply:
        return None
    book = HandsetBook()
    for number, behaviour in args.handset or ():
        try:
            book.set_behaviour(number, behaviour)
        except ValueError as exc:
            raise ValueError(f"--handset {number}={behaviour}: {exc}") from None
    for number, text in args.reply or ():
        try:
            book.set_reply(number, text)
        except ValueError as exc:
            raise ValueError(f"--reply {number}={text}: {exc}") from None
    return book


def _command_status(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r} (0x08 or 8)") from None


# Options that describe one SMSC; with --profile they come from the file instead.
_PER_SMSC_OPTIONS = (
    "port", "latency_ms", "receipt_delay_ms", "undeliverable_ratio", "max_tps", "no_receipts",
    "all_receipts", "receipt_id_format", "system_id", "password", "window", "seed",
    "error_ratio", "error_status", "drop_ratio", "disconnect_after", "disconnect_every",
    "refuse_binds", "latency_jitter_ms", "handset", "reply", "roaming_delay_ms",
    "lose_receipts", "no_query_sm", "receipts_any_bind",
)


def _check_no_per_smsc_options(args: argparse.Namespace) -> None:
    defaults = argparse.ArgumentParser()
    add_smsc_args(defaults)
    for dest in _PER_SMSC_OPTIONS:
        if getattr(args, dest) != defaults.get_default(dest):
            option = "--" + dest.replace("_", "-")
            raise ValueError(f"{option} cannot be combined with --profile (set it in the file)")


def smsc_profile(args: argparse.Namespace) -> SmscProfile:
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
        error_ratio=args.error_ratio,
        error_status=args.error_status,
        drop_ratio=args.drop_ratio,
        disconnect_after=args.disconnect_after,
        disconnect_every=args.disconnect_every,
        refuse_binds=args.refuse_binds,
        latency_jitter=args.latency_jitter_ms / 1000.0,
        handsets=_handset_book(args),
        roaming_delay=args.roaming_delay_ms / 1000.0,
        lose_receipts=args.lose_receipts,
        answer_query_sm=not args.no_query_sm,
        receipts_any_bind=args.receipts_any_bind,
    )


def _stats_line(smsc: Smsc, previous_submits: int, interval: float) -> str:
    rate = (smsc.submits_total - previous_submits) / interval if interval > 0 else 0.0
    per_bind = " ".join(
        f"{s.bind_id}={s.max_outstanding}" for s in smsc.bind_stats.values() if s.bound
    )
    return (
        f"submits={smsc.submits_total} rate={rate:.0f}/s throttled={smsc.throttled_total}"
        f" errors={smsc.errors_total} dropped={smsc.dropped_total}"
        f" disconnects={smsc.disconnects_total} bind_failures={smsc.bind_failures}"
        f" receipts_sent={smsc.receipts_sent} receipts_acked={smsc.receipts_acked}"
        f" pending={smsc.pending_receipts} binds={smsc.binds_total}"
        f" max_outstanding[{per_bind}]"
    )


@dataclass(slots=True)
class _Served:
    name: str | None  # None: the single SMSC of the command-line options
    smsc: Smsc
    last_submits: int = 0

    @property
    def label(self) -> str:
        return f"{self.name}: " if self.name is not None else ""


async def _serve_smsc(args: argparse.Namespace, specs: list[SmscSpec] | None) -> int:
    tls = {"tls_cert": args.tls_cert, "tls_key": args.tls_key}
    if specs is None:
        served = [_Served(None, Smsc(smsc_profile(args), host=args.host, port=args.port,
                                     **tls))]
    else:
        served = [_Served(s.name, Smsc(s.profile, host=args.host, port=s.port, **tls))
                  for s in specs]
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        for one in served:
            await one.smsc.start()
    except BaseException:
        await asyncio.gather(*(one.smsc.stop() for one in served), return_exceptions=True)
        raise
    for one in served:
        notes = [one.name] if one.name is not None else []
        if args.tls_cert is not None:
            notes.append("TLS")
        suffix = f" ({', '.join(notes)})" if notes else ""
        print(f"listening on {one.smsc.host}:{one.smsc.port}{suffix}", file=sys.stderr,
              flush=True)
    started = last_time = time.monotonic()
    interval = args.stats_interval if args.stats_interval > 0 else None
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            now = time.monotonic()
            for one in served:
                line = _stats_line(one.smsc, one.last_submits, now - last_time)
                print(one.label + line, file=sys.stderr, flush=True)
                one.last_submits = one.smsc.submits_total
            last_time = now
    await asyncio.gather(*(one.smsc.stop() for one in served))
    elapsed = time.monotonic() - started
    if specs is None:
        summary = _final_summary(served[0].smsc, elapsed)
    else:  # keyed by SMSC name
        summary = {str(one.name): _final_summary(one.smsc, elapsed) for one in served}
    emit_summary(summary, args.stats_file)
    return 0


def _final_summary(smsc: Smsc, elapsed: float) -> dict[str, Any]:
    summary = smsc.summary()
    summary["elapsed_s"] = round(elapsed, 3)
    summary["submit_rate"] = round(smsc.submits_total / elapsed, 1) if elapsed > 0 else 0.0
    summary["port"] = smsc.port
    return summary


def _run_smsc(args: argparse.Namespace) -> int:
    specs = None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.profile is not None:
        _check_no_per_smsc_options(args)
        specs = load_profiles(args.profile)  # ProfileError (a ValueError): exit code 2
    return run_loop(_serve_smsc(args, specs), args.loop)


COMMANDS: dict[str, Command] = {
    "smsc": Command("run a simulated operator SMSC (SMPP server)", add_smsc_args, _run_smsc),
    "load": Command("generate load against smsagg over HTTP or SMPP and report latencies",
                    load_command.add_arguments, load_command.run_command),
    "bench": Command("run end-to-end scenarios (SMSC + smsagg subprocesses) and print a table",
                     bench_command.add_arguments, bench_command.run_command),
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
