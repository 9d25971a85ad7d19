"""A raw-socket ESME that sends the PDUs Kannel 1.4.5 sends as an smsagg customer (transceiver,
window of `max-pending-submits`, receipts asked with registered_delivery 0x11 on a long
message's first part only), written independently of aggregator.smpp: struct and sockets only.

It acknowledges every deliver_sm at once (as Kannel does), answers enquire_link and unbind, and
turns a dropped connection into ConnectionError for the submit_sm still unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("!IIII")
BIND_TRANSMITTER = 0x02
BIND_TRANSCEIVER = 0x09
SUBMIT_SM = 0x04
DELIVER_SM = 0x05
QUERY_SM = 0x03
DATA_SM = 0x103
UNBIND = 0x06
ENQUIRE_LINK = 0x15
GENERIC_NACK = 0x80000000
RESP = 0x80000000
ESME_RTHROTTLED = 0x58


def cstr(value: str) -> bytes:
    return value.encode() + b"\0"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("!HH", tag, len(value)) + value


def udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes([5, 0, 3, ref, total, seq])


def submit_body(dest: str, message: bytes, *, source: str = "ACME", source_ton: int = 5,
                source_npi: int = 0, dest_ton: int = 1, dest_npi: int = 1, esm_class: int = 0,
                registered_delivery: int = 0, data_coding: int = 0, tlvs: bytes = b"") -> bytes:
    """A submit_sm body field by field (SMPP 3.4 section 4.4.1)."""
    return (
        cstr("") + bytes([source_ton, source_npi]) + cstr(source)
        + bytes([dest_ton, dest_npi]) + cstr(dest)
        + bytes([esm_class, 0, 0]) + cstr("") + cstr("")
        + bytes([registered_delivery, 0, data_coding, 0, len(message)]) + message + tlvs
    )


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\0", pos)
    return body[pos:end].decode("latin-1"), end + 1


def parse_deliver(body: bytes) -> tuple[int, str, dict[int, bytes], str]:
    """(esm_class, short_message, TLVs, source_addr) of a deliver_sm body."""
    _, pos = _cstring(body, 0)
    pos += 2
    source, pos = _cstring(body, pos)
    pos += 2
    _, pos = _cstring(body, pos)
    esm_class = body[pos]
    pos += 3
    _, pos = _cstring(body, pos)
    _, pos = _cstring(body, pos)
    pos += 4
    length = body[pos]
    pos += 1
    text = body[pos:pos + length].decode("latin-1")
    pos += length
    tlvs: dict[int, bytes] = {}
    while pos + 4 <= len(body):
        tag, size = struct.unpack_from("!HH", body, pos)
        tlvs[tag] = body[pos + 4:pos + 4 + size]
        pos += 4 + size
    return esm_class, text, tlvs, source


def _write(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    if writer is not None and not writer.is_closing():
        writer.write(data)


@dataclass(slots=True, frozen=True)
class Answer:
    command_id: int
    status: int
    body: bytes

    @property
    def message_id(self) -> str:
        return _cstring(self.body, 0)[0] if self.body else ""


@dataclass
class KannelEsme:
    host: str
    port: int
    system_id: str = "shop"
    password: str = "secret"
    bind_command: int = BIND_TRANSCEIVER
    # Seconds before a deliver_sm is acknowledged (a gateway that stores the receipt first);
    # enquire_link and unbind are answered at once.
    ack_delay: float = 0.0
    # Every deliver_sm as (esm_class, key, short_message), in order; the key is a receipt's
    # receipted_message_id, or an MO's source_addr (the handset).
    delivers: list[tuple[int, str, str]] = field(default_factory=list)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _seq: int = 0
    _pending: dict[int, asyncio.Future[Answer]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self) -> None:
        """Connect and bind as a transceiver; raises OSError / ConnectionError on failure."""
        self.closed = asyncio.Event()
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.create_task(self._read_loop())
        body = (cstr(self.system_id) + cstr(self.password) + cstr("") + bytes([0x34, 0, 0])
                + cstr(""))
        answer = await asyncio.wait_for(self.request(self.bind_command, body), 10)
        if answer.status != 0:
            await self.close()
            raise ConnectionError(f"bind refused with 0x{answer.status:02X}")

    def request(self, command_id: int, body: bytes) -> asyncio.Future[Answer]:
        if self._writer is None or self.closed.is_set():
            raise ConnectionError("not connected")
        self._seq += 1
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[self._seq] = fut
        self._writer.write(HEADER.pack(16 + len(body), command_id, 0, self._seq) + body)
        return fut

    def submit_burst(self, bodies: list[bytes]) -> list[asyncio.Future[Answer]]:
        """submit_sm for each body, all in one TCP write (the server reads them together)."""
        if self._writer is None or self.closed.is_set():
            raise ConnectionError("not connected")
        loop = asyncio.get_running_loop()
        futures, data = [], b""
        for body in bodies:
            self._seq += 1
            fut: asyncio.Future[Answer] = loop.create_future()
            self._pending[self._seq] = fut
            futures.append(fut)
            data += HEADER.pack(16 + len(body), SUBMIT_SM, 0, self._seq) + body
        self._writer.write(data)
        return futures

    async def submit(self, body: bytes) -> Answer:
        return await self.request(SUBMIT_SM, body)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    def _send(self, command_id: int, status: int, seq: int, body: bytes = b"") -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(HEADER.pack(16 + len(body), command_id, status, seq) + body)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                length, command_id, status, seq = HEADER.unpack(
                    await self._reader.readexactly(16))
                body = await self._reader.readexactly(length - 16)
                if command_id & RESP:
                    fut = self._pending.pop(seq, None)
                    if fut is not None and not fut.done():
                        fut.set_result(Answer(command_id, status, body))
                elif command_id == DELIVER_SM:
                    esm_class, text, tlvs, source = parse_deliver(body)
                    receipted = tlvs.get(0x001E, b"").rstrip(b"\0").decode()
                    self.delivers.append((esm_class, receipted or source, text))
                    self.delivered.set()
                    if self.ack_delay:
                        # On this connection only: a late ack never reaches the next one.
                        asyncio.get_running_loop().call_later(
                            self.ack_delay, _write, self._writer,
                            HEADER.pack(17, DELIVER_SM | RESP, 0, seq) + b"\0")
                    else:
                        self._send(DELIVER_SM | RESP, 0, seq, b"\0")
                elif command_id == ENQUIRE_LINK:
                    self._send(ENQUIRE_LINK | RESP, 0, seq)
                elif command_id == UNBIND:
                    self._send(UNBIND | RESP, 0, seq)
                else:
                    self._send(GENERIC_NACK, 0x03, seq)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            if self._writer is not None:
                self._writer.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection lost unanswered"))
            self._pending.clear()
