"""The SQLite store's writer, a process of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from aggregator.frames import frame
from aggregator.link import Link
from aggregator.model import MessageStatus
from aggregator.store.base import StoreError
from aggregator.store.rows import message_row
from aggregator.store.sqlite import SqliteStore
from aggregator.wire import Answers, call
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, ROOT, daemon, wait_for, write_daemon_config
from tests.store_helpers import NOW, make_message, parts, receipt


@pytest.fixture
def commit_seconds() -> list[float]:
    return []


@pytest.fixture
async def store(tmp_path: Path, commit_seconds: list[float]) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "smsagg.db"),
                    on_commit=commit_seconds.append)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_a_message_goes_through_every_write_in_the_writer_process(
    store: SqliteStore, commit_seconds: list[float]
) -> None:
    m = make_message(callback_url="https://cb.example/hook")
    assert (await store.accept(m, "key-1")).created
    replay = await store.accept(make_message(), "key-1")  # the same key: the first message
    assert not replay.created and replay.message.id == m.id
    [claimed] = await store.claim_due(NOW, 10)
    assert claimed.id == m.id and claimed.status is MessageStatus.QUEUED
    await store.record_submitted(m.id, "opA", parts(m, 1), NOW + 1)
    [result] = await store.apply_receipts([receipt(m, 1)])
    assert result.final is not None and result.final.status is MessageStatus.DELIVERED
    [job] = await store.due_callbacks(NOW + 100, 10)
    await store.callbacks_done([job.id])

    assert await store.due_callbacks(NOW + 100, 10) == []
    stored = await store.get_message(m.account, m.id)
    assert stored is not None and stored.status is MessageStatus.DELIVERED
    assert store.pending == 0
    assert store.commits >= 5
    assert len(commit_seconds) == store.commits
    assert store.write_failure() is None


async def test_writes_of_one_turn_share_a_few_commits(store: SqliteStore) -> None:
    before = store.commits

    results = await asyncio.gather(*(store.accept(make_message(), None) for _ in range(300)))

    assert all(r.created for r in results)
    assert store.commits - before <= 3  # one write of requests, read in a few pieces at most


async def test_an_operation_that_fails_alone_fails_alone(store: SqliteStore) -> None:
    m = make_message()
    await store.accept(m, None)

    first, second = await asyncio.gather(store.accept(m, None), store.accept(make_message(), None),
                                         return_exceptions=True)

    assert isinstance(first, Exception) and "UNIQUE" in str(first)  # the same id twice
    assert not isinstance(second, BaseException) and second.created


async def test_the_writer_process_outlives_sigint_and_sigterm(store: SqliteStore) -> None:
    """Ctrl-C and systemd's stop reach the writer too; the daemon drains and must still write."""
    assert store.writer.proc is not None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        store.writer.proc.send_signal(signum)

    assert (await store.accept(make_message(), None)).created  # answered after the signals
    assert store.writer.proc.poll() is None and store.write_failure() is None


async def test_an_unknown_operation_gets_an_error_not_a_dead_writer(store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="no store operation 'drop_everything'"):
        await store.writer.submit("drop_everything")

    assert (await store.accept(make_message(), None)).created


async def test_run_on_writer_runs_named_tools_only(store: SqliteStore) -> None:
    """A function does not travel to the writer process: only writes.TOOLS do, and of the
    PRAGMAs only TOOL_PRAGMAS."""
    with pytest.raises(StoreError, match="no writer tool"):
        await store.run_on_writer("drop_everything")
    with pytest.raises(StoreError, match="not a writer tool"):
        await store.run_on_writer("pragma", "writable_schema", 1)
    assert await store.run_on_writer("pragma", "query_only", None) == 0


async def test_a_dead_writer_process_fails_writes_and_readiness(store: SqliteStore) -> None:
    assert store.writer.proc is not None
    store.writer.proc.kill()
    await wait_for(lambda: store.write_failure() is not None, what="the loss noticed")

    with pytest.raises(StoreError, match="writer process exited"):
        await store.accept(make_message(), None)
    assert "writer process exited" in (store.write_failure() or "")


async def test_the_writer_process_dies_with_a_killed_daemon(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from aggregator.store.sqlite import SqliteStore
        async def main():
            store = SqliteStore({str(tmp_path / "smsagg.db")!r})
            await store.open()
            print(store.writer.proc.pid, flush=True)
            await asyncio.Event().wait()
        asyncio.run(main())
    """)
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert daemon.stdout is not None
    child = int(await asyncio.wait_for(daemon.stdout.readline(), 30))
    assert _alive(child)

    daemon.send_signal(signal.SIGKILL)
    await daemon.wait()

    await wait_for(lambda: not _alive(child), what="the writer process to exit")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_daemon_whose_writer_process_dies_stops_with_exit_1(tmp_path: Path) -> None:
    """Nothing can be stored any more: the daemon stops, so that its supervisor restarts it;
    the restart has what was accepted."""
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port)
    log = tmp_path / "daemon.log"
    try:
        async with daemon(config, log) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base}/v1/messages",
                                 json={"to": "+38344123456", "from": "ACME", "text": "x"}) as r:
                assert r.status == 202
                message_id = (await r.json())["id"]
            [writer] = [pid for pid in _children(proc.pid) if "writer_process" in _cmdline(pid)]
            os.kill(writer, signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 1
        assert "store_writer_lost" in log.read_text()

        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while True:
                async with http.get(f"{base}/v1/messages/{message_id}") as r:
                    if (await r.json())["status"] == "delivered":
                        break
                assert asyncio.get_running_loop().time() < deadline, "not delivered"
                await asyncio.sleep(0.05)
    finally:
        await smsc.stop()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        return [int(x) for x in f.read().split()]


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


class _Worker:
    """An ingress worker's end of the writer's socket, recording its answers."""

    def __init__(self) -> None:
        self.link = Link(self)
        self.answers: dict[int, tuple[bool, Any]] = {}

    def frame_received(self, link: Link, obj: Any) -> None:
        assert isinstance(obj, Answers)
        for a in obj.answers:
            self.answers[a.id] = (a.fault is None, a.fault.text if a.fault else
                                  msgspec.msgpack.decode(a.result))

    def link_lost(self, link: Link) -> None:
        pass


async def test_a_workers_accepts_go_to_the_writer_and_the_daemon_counts_them(
    tmp_path: Path,
) -> None:
    woken: list[int] = []
    store = SqliteStore(str(tmp_path / "smsagg.db"),
                        on_accepted=lambda: woken.append(1))
    await store.open()
    try:
        assert store.writer_address is not None
        worker = _Worker()
        await asyncio.get_running_loop().create_unix_connection(lambda: worker.link,
                                                                store.writer_address)
        m, n = make_message(), make_message()
        worker.link.send(frame(call(1, "accept", (message_row(m), None))))
        worker.link.send(frame(call(2, "accept_many", ([message_row(n)], []))))
        worker.link.send(frame(call(3, "claim_due", (NOW, 10, None))))  # not a worker's to ask

        await wait_for(lambda: len(worker.answers) == 3, what="three answers")
        assert worker.answers[1] == (True, None) and worker.answers[2] == (True, None)
        ok, error = worker.answers[3]
        assert not ok and "no store operation 'claim_due'" in str(error)
        await wait_for(lambda: store.pending == 2, what="the daemon to count both")
        assert woken
        assert {c.id for c in await store.claim_due(NOW, 10)} == {m.id, n.id}
    finally:
        await store.close()
    assert not Path(store.writer_address).exists()


async def test_a_worker_sending_garbage_is_dropped_and_the_writer_goes_on(
    store: SqliteStore,
) -> None:
    assert store.writer_address is not None
    reader, writer = await asyncio.open_unix_connection(store.writer_address)
    writer.write((5).to_bytes(4, "big") + b"\xff\xfe\xfd\xfc\xfb")  # not a wire message
    await writer.drain()

    assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # dropped
    assert (await store.accept(make_message(), None)).created
    assert store.write_failure() is None
    writer.close()
