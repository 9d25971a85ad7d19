"""`smsagg-sim load` on the command line: its options, the run, the summary and files."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from aggregator.eventloop import install_stop_signals, run_loop
from simulator.load.options import MODES, LoadOptions, LoadResult
from simulator.load.report import format_summary, plot_available, write_plot
from simulator.load.run import run_load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LoadOptions()
    parser.add_argument("--mode", choices=MODES, default=d.mode,
                        help="http: one message per POST; batch: POST /v1/messages/batch;"
                             " smpp: submit_sm on transceiver binds")
    target = parser.add_argument_group("target")
    target.add_argument("--url", default=d.url, help="smsagg HTTP API base URL")
    target.add_argument("--api-key", default=d.api_key)
    target.add_argument("--smpp-host", default=d.smpp_host)
    target.add_argument("--smpp-port", type=int, default=d.smpp_port)
    target.add_argument("--system-id", default=d.system_id)
    target.add_argument("--password", default=d.password)
    load = parser.add_argument_group("load")
    load.add_argument("--rate", type=float, default=d.rate,
                      help="messages per second (0: as fast as possible)")
    load.add_argument("--count", type=int, default=None,
                      help="messages to send (default 1000 unless --duration)")
    load.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="send for this long (with --count: whichever ends first)")
    load.add_argument("--concurrency", type=int, default=d.concurrency,
                      help="HTTP requests in flight")
    load.add_argument("--batch-size", type=int, default=d.batch_size,
                      help="messages per batch request (--mode batch)")
    load.add_argument("--binds", type=int, default=d.binds, help="SMPP transceiver binds")
    load.add_argument("--window", type=int, default=d.window,
                      help="SMPP requests in flight per bind")
    load.add_argument("--timeout", type=float, default=d.timeout,
                      help="seconds per HTTP request / SMPP response")
    content = parser.add_argument_group("messages")
    content.add_argument("--prefix", default=d.prefix,
                         help="destinations: this prefix plus --digits random digits")
    content.add_argument("--digits", type=int, default=d.digits)
    content.add_argument("--sender", default=d.sender, help="'from' / source_addr")
    content.add_argument("--text", default=d.text)
    content.add_argument("--segments", type=int, default=None,
                         help="repeat --text to exactly this many GSM-7 segments")
    content.add_argument("--seed", type=int, default=None, help="random seed for destinations")
    receipts = parser.add_argument_group("receipts")
    receipts.add_argument("--no-receipts", action="store_true",
                          help="no callback URL / registered_delivery=0")
    receipts.add_argument("--callback-listen", default=None, metavar="HOST:PORT",
                          help="where the callback receiver listens (default 127.0.0.1:0)")
    receipts.add_argument("--callback-url", default=None,
                          help="callback URL put in messages (default: the receiver's own)")
    receipts.add_argument("--receipt-wait", type=float, default=d.receipt_wait,
                          metavar="SECONDS", help="after sending, wait this long for receipts")
    output = parser.add_argument_group("output")
    output.add_argument("--json", default=None, metavar="FILE",
                        help="write the results (with a per-second timeline) as JSON")
    output.add_argument("--plot", default=None, metavar="FILE.png",
                        help="plot rate and latency over time (needs matplotlib)")
    output.add_argument("--ids", default=None, metavar="FILE",
                        help="write every accepted message id to FILE, one per line")
    output.add_argument("--no-progress", action="store_true", help="no live progress on stderr")


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(
        mode=args.mode, url=args.url, api_key=args.api_key, smpp_host=args.smpp_host,
        smpp_port=args.smpp_port, system_id=args.system_id, password=args.password,
        binds=args.binds, window=args.window, rate=args.rate, count=args.count,
        duration=args.duration, concurrency=args.concurrency, batch_size=args.batch_size,
        prefix=args.prefix, digits=args.digits, sender=args.sender, text=args.text,
        segments=args.segments, callback_url=args.callback_url,
        callback_listen=args.callback_listen, receipts=not args.no_receipts,
        receipt_wait=args.receipt_wait, timeout=args.timeout, seed=args.seed,
        progress=not args.no_progress, record_ids=args.ids is not None,
    )


async def _main(options: LoadOptions) -> LoadResult:
    stop = asyncio.Event()
    install_stop_signals(stop)
    return await run_load(options, stop)


async def _main_code(options: LoadOptions, box: list[LoadResult]) -> int:
    box.append(await _main(options))
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Exit 0 after a completed run, 1 when nothing was accepted, 2 on bad options."""
    options = options_from_args(args)
    options.check()  # ValueError: the CLI prints it and exits 2
    if args.plot and not plot_available():
        print("smsagg-sim load: --plot needs matplotlib, which is not installed"
              " (pip install 'smsagg[plot]' or pip install matplotlib)", file=sys.stderr)
        return 2
    box: list[LoadResult] = []
    run_loop(_main_code(options, box), args.loop)
    result = box[0]
    print(format_summary(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n",
                                   encoding="utf-8")
    if args.plot:
        write_plot(result, args.plot)
    if args.ids is not None:
        Path(args.ids).write_text("".join(f"{i}\n" for i in result.ids), encoding="utf-8")
    return 0 if result.accepted > 0 or result.sent == 0 else 1
