"""Fault injection in the simulator SMSC (errors, drops, link drops, refused binds, jitter) and
its profile files, driven through aggregator.smpp's client on ephemeral ports."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from aiosmpplib import SmppCommandStatus

from aggregator.smpp.transport import (
    BindError,
    ConnectionLost,
    RequestTimeout,
)
from simulator.cli import build_parser, main, smsc_profile
from simulator.profiles import ProfileError, SmscSpec, load_profiles, parse_profiles
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import ROOT, Start
from tests.sim_helpers import (
    DEADLINE,
    Client,
    Connect,
    make_submit,
    sigterm_and_wait,
    simulator_process,
    stderr_match,
)


async def statuses(client: Client, n: int) -> list[int]:
    resps = await asyncio.gather(*(client.submit(make_submit(f"m{i}")) for i in range(n)))
    return [int(r.command_status) for r in resps]


# -- error and drop ratios --------------------------------------------------------------------


async def test_error_ratio_one_answers_every_submit_with_the_status(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(error_ratio=1.0, latency=0.01)
    client = await connect(smsc)
    assert await statuses(client, 10) == [0x08] * 10
    assert smsc.errors_total == 10 and smsc.accepted_total == 0
    assert smsc.received == [] and smsc.receipts_sent == 0 and smsc.pending_receipts == 0
    assert smsc.bind_stats["b1"].outstanding == 0
    summary = smsc.summary()
    assert (summary["errors"], summary["accepted"], summary["submits"]) == (10, 0, 10)


async def test_error_status_may_be_any_code(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(error_ratio=1.0, error_status=0x400)  # vendor-specific
    client = await connect(smsc)
    assert await statuses(client, 2) == [0x400, 0x400]


async def test_drop_ratio_one_never_answers(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(drop_ratio=1.0)
    client = await connect(smsc, response_timeout=0.2)
    futures = [client.conn.request(make_submit()) for _ in range(3)]
    for future in futures:
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(future, DEADLINE)
    assert smsc.dropped_total == 3 and smsc.submits_total == 3
    assert smsc.received == [] and smsc.receipts_sent == 0
    assert smsc.summary()["dropped"] == 3
    assert not client.closed.is_set()  # the link stays up; only the answers are missing


def test_ratios_share_one_draw_and_are_reproducible() -> None:
    results = []
    for _ in range(2):
        smsc = Smsc(SmscProfile(error_ratio=0.3, drop_ratio=0.3, seed=42))
        outcomes = [smsc.roll_fault(smsc.profile) for _ in range(2000)]
        results.append(outcomes)
        assert 450 < outcomes.count("drop") < 750
        assert 450 < outcomes.count("error") < 750
    assert results[0] == results[1]


async def test_seeded_errors_reproducible_over_the_wire(
    start_smsc: Start, connect: Connect
) -> None:
    runs = []
    for _ in range(2):
        smsc = await start_smsc(error_ratio=0.5, seed=7, receipts=False)
        runs.append(await statuses(await connect(smsc), 30))
    assert runs[0] == runs[1]
    assert set(runs[0]) == {0, 0x08}


# -- link drops -------------------------------------------------------------------------------


async def test_disconnect_after_closes_at_the_nth_submit(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(disconnect_after=3, receipts=False)
    client = await connect(smsc)
    assert await statuses(client, 1) == [0]
    assert await statuses(client, 1) == [0]
    assert not client.closed.is_set()
    with pytest.raises(ConnectionLost):
        await client.submit(make_submit("third"))
    await asyncio.wait_for(client.closed.wait(), DEADLINE)
    assert smsc.disconnects_total == 1 and smsc.submits_total == 3
    assert len(smsc.received) == 2
    assert not smsc.bind_stats["b1"].bound

    again = await connect(smsc)  # the count is per session
    assert await statuses(again, 2) == [0, 0]
    assert not again.closed.is_set()


async def test_disconnect_after_leaves_later_submits_unanswered(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(disconnect_after=2, latency=0.05, receipts=False)
    client = await connect(smsc)
    results = await asyncio.gather(
        *(client.submit(make_submit()) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionLost) for r in results)
    assert smsc.disconnects_total == 1


async def test_disconnect_every_drops_bound_sessions(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(disconnect_every=0.2)
    first, second = await connect(smsc), await connect(smsc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(first.closed.wait(), DEADLINE)
    await asyncio.wait_for(second.closed.wait(), DEADLINE)
    assert loop.time() - started < 1.0
    assert smsc.disconnects_total == 2
    third = await connect(smsc)  # reconnecting works; that link is dropped in turn
    await asyncio.wait_for(third.closed.wait(), DEADLINE)
    await smsc.wait_until(lambda: smsc.disconnects_total == 3, DEADLINE)


# -- binds and latency ------------------------------------------------------------------------


async def test_refuse_binds(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(refuse_binds=True)
    with pytest.raises(BindError) as refused:
        await connect(smsc)
    assert refused.value.status == 0x0D
    assert smsc.bind_failures == 1 and smsc.binds_total == 0


async def test_latency_jitter_stays_within_bounds(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(latency=0.1, latency_jitter=0.05, seed=3, receipts=False)
    client = await connect(smsc)
    loop = asyncio.get_running_loop()

    async def timed() -> float:
        started = loop.time()
        await client.submit(make_submit())
        return loop.time() - started

    latencies = await asyncio.gather(*(timed() for _ in range(20)))
    assert min(latencies) >= 0.045
    assert max(latencies) < 0.15 + 0.5  # loose: a busy test machine adds delay, never removes
    assert max(latencies) - min(latencies) > 0.02  # spread, not one fixed latency


# -- whole-SMSC faults: crash and hang -------------------------------------------------------


async def test_abort_drops_every_link_and_start_listens_again(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(latency=0.2, receipt_delay=1.0)
    client = await connect(smsc)
    first = await client.submit(make_submit("answered"))
    unanswered = [client.conn.request(make_submit(f"u{i}")) for i in range(2)]
    await smsc.wait_until(lambda: smsc.bind_stats["b1"].outstanding == 2, DEADLINE)
    port = smsc.port

    assert smsc.abort() == 2
    for future in unanswered:
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(future, DEADLINE)
    await asyncio.wait_for(client.closed.wait(), DEADLINE)
    with pytest.raises(OSError):  # the listener is gone too
        await connect(port)
    assert not smsc.bind_stats["b1"].bound and smsc.bind_stats["b1"].outstanding == 0

    await smsc.start()  # the restart: same port, same record
    assert smsc.port == port
    again = await connect(smsc)
    receipt = await again.next_deliver()  # kept across the crash
    assert next(p.value for p in receipt.optional_params if p.tag == 0x001E) == first.message_id
    assert int((await again.submit(make_submit("after"))).command_status) == 0
    assert smsc.submits_total == 4 and len(smsc.received) == 4


async def test_pause_holds_answers_and_receipts_until_resume(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(receipt_delay=0.2)
    client = await connect(smsc, response_timeout=0.3)
    first = await client.submit(make_submit("before"))
    smsc.pause()
    await smsc.wait_until(lambda: smsc.pending_receipts == 1, DEADLINE)  # due, not sent
    for future in [client.conn.request(make_submit(f"p{i}")) for i in range(2)]:
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(future, DEADLINE)
    assert smsc.submits_total == 3 and len(smsc.received) == 3  # read and recorded
    assert client.delivers.empty() and not client.closed.is_set()  # the link stays up

    assert smsc.resume() == 2  # the late answers, then their receipts, go out now
    receipts = [await client.next_deliver() for _ in range(3)]
    ids = {next(p.value for p in r.optional_params if p.tag == 0x001E) for r in receipts}
    assert first.message_id in ids and len(ids) == 3
    assert int((await client.submit(make_submit("after"))).command_status) == 0
    assert not client.closed.is_set()


def test_profile_validation() -> None:
    for bad in (
        {"error_ratio": 1.5}, {"drop_ratio": -0.1}, {"error_ratio": 0.6, "drop_ratio": 0.6},
        {"error_status": 0}, {"disconnect_after": 0}, {"disconnect_every": 0.0},
        {"latency_jitter": -1.0},
    ):
        with pytest.raises(ValueError):
            SmscProfile(**bad)


# -- run-time profile changes -----------------------------------------------------------------


async def test_profile_changes_take_effect_on_the_next_submit(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(receipts=False)
    client = await connect(smsc)
    assert await statuses(client, 1) == [0]
    smsc.profile = SmscProfile(error_ratio=1.0, error_status=0x14, receipts=False)
    assert await statuses(client, 1) == [0x14]
    smsc.profile.error_ratio = 0.0  # fields may be changed in place too
    assert await statuses(client, 1) == [0]

    smsc.profile.refuse_binds = True
    with pytest.raises(BindError):
        await connect(smsc)
    smsc.profile.refuse_binds = False
    await connect(smsc)

    smsc.profile.max_tps = 1
    assert (await statuses(client, 5)).count(int(SmppCommandStatus.ESME_RTHROTTLED)) >= 3
    smsc.profile.max_tps = None
    assert await statuses(client, 5) == [0] * 5


async def test_disconnect_every_switched_on_at_run_time(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc()
    client = await connect(smsc)
    smsc.profile.disconnect_every = 0.1
    await asyncio.wait_for(client.closed.wait(), DEADLINE)
    smsc.profile.disconnect_every = None
    steady = await connect(smsc)
    drops = smsc.disconnects_total
    assert await statuses(steady, 1) == [0]
    assert smsc.disconnects_total == drops and not steady.closed.is_set()


# -- profile files ----------------------------------------------------------------------------

VALID = """
[[smsc]]
name = "A"
port = 2776
max_tps = 50
disconnect_every = 10
latency = 0.02

[[smsc]]
name = "B"
port = 2777
error_ratio = 0.1
error_status = 0x14
refuse_binds = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_profile_file(tmp_path: Path) -> None:
    specs = load_profiles(write(tmp_path, VALID))
    assert specs == [
        SmscSpec("A", 2776, SmscProfile(max_tps=50.0, disconnect_every=10.0, latency=0.02)),
        SmscSpec("B", 2777, SmscProfile(error_ratio=0.1, error_status=0x14)),
    ]
    name, port, profile = specs[0]
    assert (name, port) == ("A", 2776) and isinstance(profile.disconnect_every, float)


def test_example_profile_file_loads() -> None:
    specs = load_profiles(ROOT / "config" / "sim-profile.example.toml")
    assert [s.name for s in specs] == ["A", "B"]
    assert specs[0].profile.max_tps == 50 and specs[0].profile.disconnect_every == 10.0


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('name = "B"\nport = 1\nbogus = 1', r"#2 \('B'\): unknown key 'bogus'"),
        ('name = "B"\nport = 1\nmax_tps = "fast"', r"#2 \('B'\): key 'max_tps': expected a number"),
        ('name = "B"\nport = 1\nerror_ratio = 2', r"#2 \('B'\): key 'error_ratio': .*0\.\.1"),
        ('name = "B"\nport = 1\nrefuse_binds = 1', r"key 'refuse_binds': expected true or false"),
        ('name = "B"\nport = 1\ndisconnect_after = 2.5', r"key 'disconnect_after': expected an"),
        ('name = "B"', r"#2 \('B'\): key 'port' is required"),
        ('name = "B"\nport = 70000', r"key 'port': expected an integer 0\.\.65535"),
        ('name = "A"\nport = 1', r"#2 \('A'\): key 'name': 'A' is used twice"),
        ('name = "B"\nport = 2776', r"key 'port': 2776 is used twice"),
        ('name = "B"\nport = 1\nerror_ratio = 0.6\ndrop_ratio = 0.6', r"#2 \('B'\): error_rat"),
    ],
)
def test_bad_profile_entry_names_file_entry_and_key(
    tmp_path: Path, entry: str, expected: str
) -> None:
    path = write(tmp_path, f'[[smsc]]\nname = "A"\nport = 2776\n[[smsc]]\n{entry}\n')
    with pytest.raises(ProfileError) as error:
        load_profiles(path)
    message = str(error.value)
    assert message.startswith(f"{path}: [[smsc]] #2"), message
    assert re.search(expected, message), message


def test_bad_profile_file_shapes(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="unknown top-level key 'smscs'"):
        parse_profiles({"smscs": []}, "f.toml")
    with pytest.raises(ProfileError, match=r"f\.toml: needs at least one \[\[smsc\]\]"):
        parse_profiles({}, "f.toml")
    with pytest.raises(ProfileError, match="invalid TOML"):
        load_profiles(write(tmp_path, "[[smsc]\n"))
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "missing.toml")


# -- CLI --------------------------------------------------------------------------------------


def test_cli_fault_options() -> None:
    args = build_parser().parse_args([
        "smsc", "--error-ratio", "0.25", "--error-status", "0x14", "--drop-ratio", "0.1",
        "--disconnect-after", "5", "--disconnect-every", "2.5", "--refuse-binds",
        "--latency-ms", "100", "--latency-jitter-ms", "20",
    ])
    profile = smsc_profile(args)
    assert (profile.error_ratio, profile.error_status, profile.drop_ratio) == (0.25, 0x14, 0.1)
    assert (profile.disconnect_after, profile.disconnect_every) == (5, 2.5)
    assert profile.refuse_binds and profile.latency_jitter == pytest.approx(0.02)
    decimal = build_parser().parse_args(["smsc", "--error-status", "8"])
    assert smsc_profile(decimal).error_status == 8
    assert smsc_profile(build_parser().parse_args(["smsc"])) == SmscProfile()


def test_cli_bad_profile_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[[smsc]]\nname = "A"\nport = 0\nlatency_ms = 5\n')
    assert main(["smsc", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'A'" in err and "'latency_ms'" in err
    good = write(tmp_path, VALID)
    assert main(["smsc", "--profile", str(good), "--latency-ms", "5"]) == 2
    assert "--latency-ms cannot be combined with --profile" in capsys.readouterr().err


async def test_cli_runs_two_smscs_from_a_profile_file(tmp_path: Path, connect: Connect) -> None:
    path = write(tmp_path, (
        '[[smsc]]\nname = "A"\nport = 0\n'
        '[[smsc]]\nname = "B"\nport = 0\nerror_ratio = 1.0\nerror_status = 0x14\n'
    ))
    async with simulator_process("smsc", "--profile", str(path), "--stats-interval", "0.1",
                                 "--loop", "asyncio") as proc:
        ports: dict[str, int] = {}
        while len(ports) < 2:
            match = await stderr_match(proc, r"listening on [\d.]+:(\d+) \((\w+)\)", 20.0)
            ports[match[2]] = int(match[1])
        assert set(ports) == {"A", "B"} and ports["A"] != ports["B"]
        a, b = await connect(ports["A"]), await connect(ports["B"])
        assert (await a.submit(make_submit())).command_status == SmppCommandStatus.ESME_ROK
        assert int((await b.submit(make_submit())).command_status) == 0x14
        seen: set[str] = set()
        while seen != {"A", "B"}:  # periodic stats, one line per SMSC
            seen.add((await stderr_match(proc, r"(\w+): submits=1 .*errors=(\d+)"))[1])
        stdout = await sigterm_and_wait(proc)
    assert proc.returncode == 0
    summary = json.loads(stdout)
    assert set(summary) == {"A", "B"}
    assert summary["A"]["submits"] == 1 and summary["A"]["accepted"] == 1
    assert summary["B"]["errors"] == 1 and summary["B"]["port"] == ports["B"]
