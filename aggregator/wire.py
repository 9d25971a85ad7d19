"""Every message between smsagg's processes, as typed classes (msgspec Structs, MessagePack).

Two links carry them (frames.py frames them, link.py is the asyncio end):

- the daemon and an ingress worker to the store's writer process (store/writer_process.py):
  `Call` (a write of store/writes.py, its arguments typed by that function's signature) and
  `Stop` (the daemon's, after its last call); the writer answers a worker with `Answers` and
  the daemon with `Done` (its answers, the writer's figures, commit times and what the
  workers' writes changed in the pending counts), after `Ready` or `OpenFailed` at start;
- an ingress worker to the daemon (ingress/rpc.py): `Call` of a `DAEMON_CALLS` entry
  (its status report, the merged metrics, readiness, "serving"), answered with `Answers`.

A call's arguments and result travel as MessagePack inside the envelope (`msgspec.Raw`) and
are decoded with the types the operation declares (`Signature`): a row comes back a list, a
FinalNotice a FinalNotice. An error crosses as a `Fault`: the caller raises StoreBusy or
StoreError, never an exception class the peer chose. MessagePack, unlike pickle, builds nothing
but these types. Per accept (a call and its answer, framed and read) it costs about what pickled
tuples did: 4.2 against 3.8 µs of CPU, 163 against 218 bytes (tests/bench_frames.py).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from aggregator.store.base import StoreBusy, StoreError
from aggregator.store.writes import WriteFigures

NIL = msgspec.Raw(b"\xc0")  # MessagePack nil: the result of a failed call
ENCODER = msgspec.msgpack.Encoder()


class Fault(msgspec.Struct, array_like=True, frozen=True):
    """Why a call failed: "busy" (back-pressure, StoreBusy), "store" (StoreError: the store,
    e.g. a full disk or a locked file) or "op" (OperationFailed: the operation's own error,
    e.g. a constraint its data broke, in a transaction of its own)."""

    kind: Literal["busy", "store", "op"]
    text: str


class Call(msgspec.Struct, tag="call", array_like=True):
    """Run the operation `op` with `args` (its signature's parameters, encoded); the answer
    carries `id`."""

    id: int
    op: str
    args: msgspec.Raw


class Answer(msgspec.Struct, array_like=True):
    """One call's outcome: `result` (encoded as the operation's return type), or a `fault`."""

    id: int
    result: msgspec.Raw = NIL
    fault: Fault | None = None


class Answers(msgspec.Struct, tag="answers", array_like=True):
    """The answers to a peer's calls done in one round (one write)."""

    answers: list[Answer]


class Stop(msgspec.Struct, tag="stop", array_like=True):
    """The daemon to its writer process: answer what came before, then exit."""


class Ready(msgspec.Struct, tag="ready", array_like=True):
    """The writer process has the database open."""


class OpenFailed(msgspec.Struct, tag="open_failed", array_like=True):
    """The writer process could not open the database: why, for the daemon's error line."""

    error: str


class Done(msgspec.Struct, tag="done", array_like=True):
    """The writer process to the daemon, once per round of group commits: the answers to the
    daemon's calls, the writer's figures (readiness, metrics), each commit's seconds, and how
    the workers' writes changed the pending counts (per account; a cancel counts -1), and the
    earliest due time of the waiting messages they stored (None: none)."""

    figures: WriteFigures
    durations: list[float]
    answers: list[Answer]
    pending: dict[str, int]
    due: float | None = None


Wire = Call | Answers | Stop | Ready | OpenFailed | Done
DECODER = msgspec.msgpack.Decoder(Wire)


@dataclass(slots=True, frozen=True)
class Signature:
    """How an operation's arguments and result travel: decoders for the types it declares."""

    args: msgspec.msgpack.Decoder[Any]
    result: msgspec.msgpack.Decoder[Any]
    defaults: tuple[Any, ...]  # of the parameters, from the first; inspect.Parameter.empty

    def complete(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """`args` with the defaults of the parameters left out: the decoder wants them all."""
        if len(args) >= len(self.defaults):
            return args
        return args + self.defaults[len(args):]


@functools.cache
def signature(fn: Callable[..., Any]) -> Signature:
    """The Signature of a writes.py operation (its first parameter, the connection, does not
    travel) or of any typed function."""
    hints = typing.get_type_hints(fn)
    result = hints.pop("return", Any)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "conn"]
    types = tuple(hints.get(p.name, Any) for p in params)
    args: Any = tuple.__class_getitem__(types) if types else tuple[()]
    return Signature(msgspec.msgpack.Decoder(args), msgspec.msgpack.Decoder(result),
                     tuple(p.default for p in params))


def call(rid: int, op: str, args: tuple[Any, ...]) -> Call:
    return Call(rid, op, msgspec.Raw(ENCODER.encode(args)))


def answer(rid: int, result: Any) -> Answer:
    if result is None:  # most writes: no second encoder pass
        return Answer(rid)
    return Answer(rid, msgspec.Raw(ENCODER.encode(result)))


def failed(rid: int, exc: BaseException) -> Answer:
    """An exception as an answer: the caller raises StoreBusy or StoreError with its text."""
    if isinstance(exc, StoreBusy):
        return Answer(rid, fault=Fault("busy", str(exc)))
    if isinstance(exc, StoreError):
        return Answer(rid, fault=Fault("store", str(exc)))
    return Answer(rid, fault=Fault("op", f"{type(exc).__name__}: {exc}"))


class OperationFailed(StoreError):
    """A store operation failed on its own data (Fault "op"), not for the store's sake."""


def fault_error(fault: Fault) -> StoreError:
    if fault.kind == "busy":
        return StoreBusy(fault.text)
    return OperationFailed(fault.text) if fault.kind == "op" else StoreError(fault.text)


# ---- what a worker asks of the daemon ---------------------------------------------------------

def _status(metrics_text: str) -> tuple[int, dict[str, int]]:
    """A worker's metrics in; the daemon's pending count, in total and per account, out."""
    raise NotImplementedError  # a signature only: the daemon answers it


def _metrics() -> str:
    """Every process's metrics, merged (GET /metrics on a worker)."""
    raise NotImplementedError


def _ready() -> tuple[bool, list[str]]:
    """The daemon's readiness and its problems (GET /readyz on a worker)."""
    raise NotImplementedError


def _serving() -> None:
    """The worker's HTTP site is up."""
    raise NotImplementedError


DAEMON_CALLS: dict[str, Signature] = {
    name: signature(fn) for name, fn in (
        ("status", _status), ("metrics", _metrics), ("ready", _ready), ("serving", _serving))
}
