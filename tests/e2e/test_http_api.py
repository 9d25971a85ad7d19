"""Every error the HTTP API gives, with its status and machine-readable code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import Running, running, serve_app, wait_for

MOBILE = "+38344123456"
OK = {"to": MOBILE, "from": "ACME", "text": "hello"}


@pytest.fixture
async def r(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(tmp_path, prefixes=("+383", "+7"), http={"max_body_bytes": 200_000},
                       messages={"max_segments": 3}) as run:
        yield run


async def expect(r: Running, status: int, code: str, body: Any = None, *,
                 raw: bytes | None = None, headers: dict[str, str] | None = None) -> str:
    got, data = await r.post(body, raw=raw, headers=headers)
    assert (got, data["error"]["code"]) == (status, code), data
    message = data["error"]["message"]
    assert isinstance(message, str) and message
    return str(message)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_malformed_body_is_400(r: Running, raw: bytes, needle: str) -> None:
    assert needle in await expect(r, 400, "bad_request", raw=raw)


@pytest.mark.parametrize("field", ["to", "from", "text"])
async def test_missing_field_is_400_naming_it(r: Running, field: str) -> None:
    body = {k: v for k, v in OK.items() if k != field}
    assert f"'{field}'" in await expect(r, 400, "bad_request", body)


@pytest.mark.parametrize(
    ("field", "value"),
    [("to", 38344123456), ("text", ["a"]), ("from", None), ("transliterate", "yes"),
     ("callback_url", 5), ("reference", {"a": 1})],
)
async def test_wrong_type_is_400_naming_the_field(r: Running, field: str, value: Any) -> None:
    body = {**OK, field: value}
    message = await expect(r, 400, "bad_request", body)
    assert f"'{field}'" in message


async def test_unknown_field_and_bad_callback_url_are_400(r: Running) -> None:
    assert "'colour'" in await expect(r, 400, "bad_request", {**OK, "colour": "red"})
    assert "callback_url" in await expect(r, 400, "bad_request",
                                          {**OK, "callback_url": "ftp://x"})


async def test_missing_or_unknown_key_is_401(r: Running) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic c2hvcDpr"}):
        async with r.http.post(f"{r.base}/v1/messages", json=OK, headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_unknown_and_foreign_ids_are_404(r: Running) -> None:
    status, data = await r.get("0" * 32)
    assert (status, data["error"]["code"]) == (404, "not_found")
    _, created = await r.post(OK)
    status, data = await r.get(created["id"], key="bank-key")  # another account's message
    assert (status, data["error"]["code"]) == (404, "not_found")
    status, _ = await r.get(created["id"])
    assert status == 200


async def test_body_too_large_is_413(r: Running) -> None:
    await expect(r, 413, "body_too_large", {**OK, "text": "x" * 250_000})


@pytest.mark.parametrize(
    ("to", "code"),
    [("12345", "invalid_number"), ("+3834412", "invalid_number"), ("hello", "invalid_number"),
     ("+38338123456", "not_mobile"), ("+77172123456", "not_mobile"),
     ("+447700900123", "invalid_number"), ("+14155552671", "no_route")],
)
async def test_number_problems_are_422(r: Running, to: str, code: str) -> None:
    await expect(r, 422, code, {**OK, "to": to})


async def test_too_long_and_bad_sender_and_empty_text_are_422(r: Running) -> None:
    assert "4" in await expect(r, 422, "too_long", {**OK, "text": "x" * (153 * 3 + 1)})
    status, _ = await r.post({**OK, "text": "x" * (153 * 3)})
    assert status == 202
    await expect(r, 422, "invalid_sender", {**OK, "from": "TWELVE_CHARS"})
    await expect(r, 422, "invalid_sender", {**OK, "from": ""})
    await expect(r, 422, "empty_text", {**OK, "text": ""})


async def test_queue_full_is_503_with_retry_after(r: Running) -> None:
    r.app.store.pending = 10**9  # as if the queue were at its bound
    async with r.http.post(f"{r.base}/v1/messages", json=OK,
                           headers={"Authorization": "Bearer shop-key"}) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "queue_full"


async def test_callback_is_retried_until_it_answers_2xx(tmp_path: Path) -> None:
    calls: list[int] = []

    async def flaky(request: web.Request) -> web.Response:
        calls.append(1)
        return web.Response(status=500 if len(calls) < 3 else 200)

    async with serve_app([web.post("/cb", flaky)]) as base, running(tmp_path) as run:
        status, body = await run.post({**OK, "callback_url": f"{base}/cb"})
        assert status == 202
        await run.wait_status(body["id"], {"delivered"})
        await wait_for(lambda: len(calls) >= 3, what="third callback attempt")
        # The 2xx removes the job from the outbox: nothing is due, however late it is.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await run.app.store.due_callbacks(10**12, 10):
            assert loop.time() < deadline, "callback job still in the outbox"
            await asyncio.sleep(0.02)
        assert len(calls) == 3


async def test_batch_answers_each_item_in_order_and_stores_the_valid_ones(r: Running) -> None:
    items = [OK, {**OK, "to": "12"}, {"to": MOBILE}, {**OK, "text": "second"}]
    async with r.http.post(f"{r.base}/v1/messages/batch", json={"messages": items},
                           headers={"Authorization": "Bearer shop-key"}) as resp:
        assert resp.status == 200
        results = (await resp.json())["results"]
    assert [x["status"] for x in results] == [202, 422, 400, 202]
    assert results[1]["error"]["code"] == "invalid_number"
    assert "messages[2]" in results[2]["error"]["message"]
    for x in (results[0], results[3]):
        _, view = await r.get(x["id"])
        assert view["status"] in ("accepted", "queued", "submitted", "delivered")


@pytest.mark.parametrize(("body", "status"),
                         [({"messages": []}, 400), ({"nope": 1}, 400),
                          ({"messages": [OK] * 1001}, 413)])
async def test_batch_shape_errors(r: Running, body: Any, status: int) -> None:
    async with running_batch(r, body) as resp:
        assert resp.status == status


def running_batch(r: Running, body: Any) -> Any:
    return r.http.post(f"{r.base}/v1/messages/batch", json=body,
                       headers={"Authorization": "Bearer shop-key"})
