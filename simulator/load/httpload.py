"""The load over HTTP: single-message or batch POSTs, and the receiver of their callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from simulator.callback_server import CallbackServer
from simulator.http_client import HttpClient, HttpError
from simulator.load.content import Destinations
from simulator.load.options import LoadOptions, http_target, split_host_port
from simulator.load.recorder import Recorder, wait_receipts
from simulator.load.schedule import schedule

CALLBACK_PATH = "/receipts"


def _error_code(status: int, data: object) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return str(error["code"])
    return f"http_{status}"


class HttpLoad:
    def __init__(self, options: LoadOptions, rec: Recorder, content: Callable[[], dict[str, Any]],
                 client: HttpClient) -> None:
        self.options = options
        self.rec = rec
        self.content = content
        self.client = client
        self.path = urlsplit(options.url).path.rstrip("/")

    async def single(self, index: int, n: int) -> None:
        body = json.dumps(self.content()).encode()
        rec = self.rec
        t0 = time.perf_counter()
        rec.sent(1, t0)
        try:
            status, raw = await self.client.post(f"{self.path}/v1/messages", body)
        except HttpError as exc:
            rec.error(exc.code, time.perf_counter())
            return
        now = time.perf_counter()
        data = _json_or_none(raw)
        if status == 202 and isinstance(data, dict) and "id" in data:
            rec.accepted(str(data["id"]), t0, now)
        else:
            rec.error(_error_code(status, data), now)

    async def batch(self, index: int, n: int) -> None:
        body = json.dumps({"messages": [self.content() for _ in range(n)]}).encode()
        rec = self.rec
        t0 = time.perf_counter()
        rec.sent(n, t0)
        try:
            status, raw = await self.client.post(f"{self.path}/v1/messages/batch", body)
        except HttpError as exc:
            rec.error(exc.code, time.perf_counter(), n)
            return
        now = time.perf_counter()
        data = _json_or_none(raw)
        results = data.get("results") if isinstance(data, dict) else None
        if status != 200 or not isinstance(results, list):
            rec.error(_error_code(status, data), now, n)
            return
        for item in results[:n]:
            if not isinstance(item, dict):
                rec.error("bad_batch_item", now)
            elif item.get("status") == 202 and "id" in item:
                rec.accepted(str(item["id"]), t0, now)
            else:
                rec.error(_error_code(int(item.get("status") or 0), item), now)
        if len(results) < n:
            rec.error("missing_batch_result", now, n - len(results))


def _json_or_none(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@contextlib.asynccontextmanager
async def callback_receiver(options: LoadOptions, rec: Recorder) -> AsyncIterator[str]:
    """A server for delivery callbacks (`simulator.callback_server`); yields the URL to put in
    messages."""

    def receive(body: dict[str, object]) -> None:
        message_id = body.get("id")
        if isinstance(message_id, str):
            rec.receipt(message_id, str(body.get("status", "unknown")), time.perf_counter())

    host, port = split_host_port(options.callback_listen or "127.0.0.1:0")
    server = CallbackServer(host, port, CALLBACK_PATH, receive)
    await server.start()
    try:
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if ":" in url_host:
            url_host = f"[{url_host}]"
        yield options.callback_url or f"http://{url_host}:{server.port}{CALLBACK_PATH}"
    finally:
        server.close()


async def run_http(options: LoadOptions, rec: Recorder, start: float, stop: asyncio.Event,
                    text: str, rng: random.Random) -> None:
    destinations = Destinations(options.prefix, options.digits, rng)
    async with contextlib.AsyncExitStack() as stack:
        callback_url: str | None = None
        if options.receipts:
            callback_url = await stack.enter_async_context(callback_receiver(options, rec))

        def content() -> dict[str, Any]:
            body: dict[str, Any] = {"to": destinations.next(), "from": options.sender,
                                    "text": text}
            if callback_url is not None:
                body["callback_url"] = callback_url
            return body

        host, port = http_target(options.url)
        client = HttpClient(host, port, {"Authorization": f"Bearer {options.api_key}"},
                            options.timeout)
        stack.callback(client.close)
        load = HttpLoad(options, rec, content, client)
        if options.mode == "batch":
            await schedule(options, load.batch, options.concurrency, options.batch_size, start,
                           stop)
        else:
            await schedule(options, load.single, options.concurrency, 1, start, stop)
        await wait_receipts(options, rec, stop)
