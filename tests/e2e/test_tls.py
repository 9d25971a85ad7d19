"""TLS: the HTTPS listener ([http] tls_cert / tls_key), TLS provider binds ([[providers]] tls,
tls_ca, tls_verify, tls_server_name) and the simulator's TLS SMSC. Every certificate comes from
a throw-away CA made here with trustme; everything runs on loopback with ephemeral ports."""

from __future__ import annotations

import asyncio
import ssl
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import trustme
from cryptography.hazmat.primitives import serialization

from aggregator import metrics
from aggregator.app import App
from aggregator.cli import main as smsagg_main
from aggregator.config import ConfigError, HttpConfig, load_config, parse_config
from aggregator.tls import TlsFileError, client_context, server_context
from simulator.cli import main as sim_main
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, Start, make_config, wait_for

KOSOVO_MOBILE = "+38344123456"
MESSAGE = {"to": KOSOVO_MOBILE, "from": "ACME", "text": "over TLS"}


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA the daemon and the HTTPS client trust
    cert: Path  # 127.0.0.1 + localhost, signed by ca
    key: Path
    other_cert: Path  # 127.0.0.1, signed by a CA nobody trusts
    other_key: Path
    localhost_cert: Path  # only "localhost", signed by ca
    localhost_key: Path

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def http(self) -> dict[str, Any]:
        return {"tls_cert": str(self.cert), "tls_key": str(self.key)}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    ca, other_ca = trustme.CA(), trustme.CA()

    def issue(issuer: trustme.CA, name: str, *names: str) -> tuple[Path, Path]:
        leaf = issuer.issue_cert(*names)
        cert, key = d / f"{name}.pem", d / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert, key = issue(ca, "server", "127.0.0.1", "localhost")
    other_cert, other_key = issue(other_ca, "other", "127.0.0.1")
    localhost_cert, localhost_key = issue(ca, "localhost", "localhost")
    return Pki(d / "ca.pem", cert, key, other_cert, other_key, localhost_cert, localhost_key)


@asynccontextmanager
async def tls_smsc(cert: Path, key: Path) -> AsyncIterator[Smsc]:
    smsc = Smsc(SmscProfile(), tls_cert=str(cert), tls_key=str(key))
    await smsc.start()
    try:
        yield smsc
    finally:
        await smsc.stop(timeout=1.0)


@asynccontextmanager
async def daemon(tmp_path: Path, smsc_port: int, *, http: dict[str, Any] | None = None,
                 provider: dict[str, Any] | None = None) -> AsyncIterator[App]:
    app = App(make_config(tmp_path / "smsagg.db", smsc_port, binds=1, http=http,
                          extra_provider=provider))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(drain_seconds=1.0)


def tls_bind_failures() -> float:
    return metrics.REGISTRY.get_sample_value(
        "smsagg_bind_failures_total", {"provider": "sim", "reason": "tls"}) or 0.0


async def submit(base: str, tls: ssl.SSLContext | None = None) -> str:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/v1/messages", json=MESSAGE, headers=AUTH, ssl=tls or False) as resp:
        assert resp.status == 202, await resp.text()
        message_id: str = (await resp.json())["id"]
        return message_id


async def status_of(base: str, message_id: str, tls: ssl.SSLContext | None = None) -> str:
    async with aiohttp.ClientSession() as http, http.get(
            f"{base}/v1/messages/{message_id}", headers=AUTH, ssl=tls or False) as resp:
        assert resp.status == 200
        status: str = (await resp.json())["status"]
        return status


async def wait_delivered(base: str, message_id: str, tls: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while (status := await status_of(base, message_id, tls)) != "delivered":
        if time.monotonic() > deadline:
            raise AssertionError(f"{message_id} stayed {status}")
        await asyncio.sleep(0.02)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


# --------------------------------------------------------------------------- end to end


async def test_https_submit_is_delivered_through_a_tls_provider_bind(
    tmp_path: Path, pki: Pki
) -> None:
    provider = {"tls": True, "tls_ca": str(pki.ca)}
    with structlog.testing.capture_logs() as logs:
        async with tls_smsc(pki.cert, pki.key) as smsc, \
                daemon(tmp_path, smsc.port, http=pki.http(), provider=provider) as app:
            assert app.http_scheme == "https"
            await wait_for(lambda: app.pools["sim"].binds_up == 1, what="the TLS bind up")
            base = f"https://127.0.0.1:{app.http_port}"
            message_id = await submit(base, pki.client())
            await wait_delivered(base, message_id, pki.client())
            assert [s.destination for s in smsc.received] == [KOSOVO_MOBILE.lstrip("+")]
            port = app.http_port
    (started,) = events(logs, "started")
    assert started["url"] == f"https://127.0.0.1:{port}"
    assert [e["tls"] for e in events(logs, "bind_up")] == [True]
    key_body = pki.key.read_text().splitlines()[1]  # a line of the key's base64
    assert key_body not in repr(logs)


async def test_plain_http_to_the_https_port_fails_and_https_keeps_working(
    tmp_path: Path, pki: Pki, start_smsc: Start
) -> None:
    smsc = await start_smsc()
    async with daemon(tmp_path, smsc.port, http=pki.http()) as app:
        port = app.http_port
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), DEADLINE)  # until the server closes
            writer.close()
            assert not answer.startswith(b"HTTP/")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    await resp.read()
            async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=pki.client()) as resp:
                assert resp.status == 200 and (await resp.json()) == {"status": "ok"}
        await submit(f"https://127.0.0.1:{port}", pki.client())


async def test_untrusted_smsc_certificate_is_a_tls_bind_failure_and_nothing_is_sent(
    tmp_path: Path, pki: Pki
) -> None:
    before = tls_bind_failures()
    provider = {"tls": True, "tls_ca": str(pki.ca)}
    with structlog.testing.capture_logs() as logs:
        async with tls_smsc(pki.other_cert, pki.other_key) as smsc, \
                daemon(tmp_path, smsc.port, provider=provider) as app:
            await wait_for(lambda: tls_bind_failures() >= before + 2, what="TLS bind failures")
            base = f"http://127.0.0.1:{app.http_port}"
            message_id = await submit(base)
            seen = tls_bind_failures()
            await wait_for(lambda: tls_bind_failures() > seen, what="another bind failure")
            assert app.pools["sim"].binds_up == 0
            assert smsc.binds_total == 0 and smsc.submits_total == 0 and not smsc.received
            assert await status_of(base, message_id) in ("accepted", "queued")
    failed = events(logs, "bind_failed")
    assert failed and {e["reason"] for e in failed} == {"tls"}
    assert failed[0]["error"].startswith("TLS handshake failed: ")
    assert "CERTIFICATE_VERIFY_FAILED" in failed[0]["error"]
    assert not events(logs, "bind_up")


async def test_tls_verify_false_binds_to_an_untrusted_smsc_and_warns(
    tmp_path: Path, pki: Pki
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with tls_smsc(pki.other_cert, pki.other_key) as smsc, \
                daemon(tmp_path, smsc.port, provider={"tls": True, "tls_verify": False}) as app:
            await wait_for(lambda: app.pools["sim"].binds_up == 1, what="the unverified bind")
            base = f"http://127.0.0.1:{app.http_port}"
            await wait_delivered(base, await submit(base))
            assert len(smsc.received) == 1
    (warning,) = events(logs, "provider_tls_unverified")
    assert warning["log_level"] == "warning" and warning["provider"] == "sim"


async def test_the_certificate_must_name_the_host_or_tls_server_name(
    tmp_path: Path, pki: Pki
) -> None:
    async with tls_smsc(pki.localhost_cert, pki.localhost_key) as smsc:
        before = tls_bind_failures()
        provider: dict[str, Any] = {"tls": True, "tls_ca": str(pki.ca)}  # host is 127.0.0.1
        async with daemon(tmp_path / "a", smsc.port, provider=provider) as app:
            await wait_for(lambda: tls_bind_failures() >= before + 2, what="TLS bind failures")
            assert app.pools["sim"].binds_up == 0 and smsc.binds_total == 0
        provider["tls_server_name"] = "localhost"
        async with daemon(tmp_path / "b", smsc.port, provider=provider) as app:
            await wait_for(lambda: app.pools["sim"].binds_up == 1, what="bind as localhost")


async def test_plain_bind_to_a_tls_smsc_is_a_bind_failure_and_retried(
    tmp_path: Path, pki: Pki
) -> None:
    before = metrics.REGISTRY.get_sample_value(
        "smsagg_bind_failures_total", {"provider": "sim", "reason": "network"}) or 0.0
    async with tls_smsc(pki.cert, pki.key) as smsc, daemon(tmp_path, smsc.port) as app:
        def failures() -> float:
            return metrics.REGISTRY.get_sample_value(
                "smsagg_bind_failures_total", {"provider": "sim", "reason": "network"}) or 0.0
        # Retried: the bind keeps trying instead of its task dying on the first close.
        await wait_for(lambda: failures() >= before + 2, what="repeated bind failures")
        assert app.pools["sim"].binds_up == 0 and smsc.binds_total == 0


async def test_https_start_fails_cleanly_when_the_key_went_away(tmp_path: Path, pki: Pki,
                                                                start_smsc: Start) -> None:
    smsc = await start_smsc()
    app = App(make_config(tmp_path / "smsagg.db", smsc.port, http=pki.http()))
    pki.key.unlink()  # after the configuration was read: found again at start
    try:
        with pytest.raises(TlsFileError, match=r"cannot read .*server\.key"):
            await app.start()
    finally:
        await app.stop(0)


# --------------------------------------------------------------------------- configuration


def base_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "store": {"path": str(tmp_path / "x.db")},
        "accounts": [{"name": "shop", "api_key": "shop-key"}],
        "providers": [{"name": "sim", "host": "127.0.0.1", "port": 2776, "system_id": "smsagg",
                       "password": "pw", "binds": 1, "window": 10, "max_tps": 100}],
        "routes": [{"prefixes": ["*"], "providers": ["sim"]}],
    }


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "x.toml")
    return info.value.problems


def with_http(tmp_path: Path, **http: Any) -> dict[str, Any]:
    return {**base_config(tmp_path), "http": http}


def with_provider(tmp_path: Path, **keys: Any) -> dict[str, Any]:
    data = base_config(tmp_path)
    data["providers"][0].update(keys)
    return data


def test_tls_keys_default_off_and_load_when_valid(tmp_path: Path, pki: Pki) -> None:
    config = parse_config(base_config(tmp_path), "x.toml")
    assert (config.http.tls_cert, config.http.tls_key) == (None, None)
    (p,) = config.providers
    assert (p.tls, p.tls_ca, p.tls_verify, p.tls_server_name) == (False, None, True, None)
    data = with_provider(tmp_path, tls=True, tls_ca=str(pki.ca), tls_server_name="localhost")
    data["http"] = pki.http()
    config = parse_config(data, "x.toml")
    assert config.http == HttpConfig(tls_cert=str(pki.cert), tls_key=str(pki.key))
    (p,) = config.providers
    assert (p.tls, p.tls_ca, p.tls_verify, p.tls_server_name) == (
        True, str(pki.ca), True, "localhost")


def test_contexts_need_tls_1_2_and_verify_unless_told_not_to(pki: Pki) -> None:
    server = server_context(str(pki.cert), str(pki.key))
    assert server.protocol is ssl.PROTOCOL_TLS_SERVER
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    for verified in (client_context(ca=str(pki.ca)), client_context()):
        assert verified.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert verified.verify_mode is ssl.CERT_REQUIRED and verified.check_hostname
    assert client_context(ca=str(pki.ca)).cert_store_stats()["x509_ca"] == 1
    lab = client_context(verify=False)
    assert lab.verify_mode is ssl.CERT_NONE and not lab.check_hostname


@pytest.mark.parametrize("given, missing", [("tls_cert", "tls_key"), ("tls_key", "tls_cert")])
def test_tls_cert_and_key_go_together(tmp_path: Path, pki: Pki, given: str,
                                      missing: str) -> None:
    data = with_http(tmp_path, **{given: pki.http()[given]})
    assert problems(data) == [
        f"x.toml: http.{missing}: required with {given}: HTTPS needs the certificate and its key"]


def test_missing_and_unreadable_tls_files_are_named(tmp_path: Path, pki: Pki) -> None:
    gone = tmp_path / "gone.pem"
    assert problems(with_http(tmp_path, tls_cert=str(gone), tls_key=str(pki.key))) == [
        f"x.toml: http.tls_cert: cannot read {str(gone)!r}: No such file or directory"]
    assert problems(with_http(tmp_path, tls_cert=str(pki.cert), tls_key=str(tmp_path))) == [
        f"x.toml: http.tls_key: cannot read {str(tmp_path)!r}: Is a directory"]
    assert problems(with_http(tmp_path, tls_cert=5, tls_key="")) == [
        "x.toml: http.tls_cert: must be a file path, got 5",
        "x.toml: http.tls_key: must be a file path, got ''",
    ]


def test_garbage_wrong_and_encrypted_pem_are_clear_errors(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("SECRET-KEY-MATERIAL\n")
    cert, key = str(pki.cert), str(pki.key)
    assert problems(with_http(tmp_path, tls_cert=str(garbage), tls_key=key)) == [
        f"x.toml: http.tls_cert: {str(garbage)!r} holds no PEM certificate"]
    assert problems(with_http(tmp_path, tls_cert=key, tls_key=key)) == [
        f"x.toml: http.tls_cert: {key!r} holds no PEM certificate"]
    assert problems(with_http(tmp_path, tls_cert=cert, tls_key=str(garbage))) == [
        f"x.toml: http.tls_key: {str(garbage)!r} holds no PEM private key"]
    assert problems(with_http(tmp_path, tls_cert=cert, tls_key=str(pki.other_key))) == [
        f"x.toml: http.tls_key: {str(pki.other_key)!r} is not the private key of the "
        f"certificate in {cert!r}"]
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    encrypted.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    assert problems(with_http(tmp_path, tls_cert=cert, tls_key=str(encrypted))) == [
        f"x.toml: http.tls_key: {str(encrypted)!r} is encrypted with a passphrase; an "
        "unencrypted key is needed"]


def test_provider_tls_keys_are_checked(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    gone = str(tmp_path / "gone.pem")
    assert problems(with_provider(tmp_path, tls=True, tls_ca=gone)) == [
        f"x.toml: providers[0].tls_ca: cannot read {gone!r}: No such file or directory"]
    assert problems(with_provider(tmp_path, tls=True, tls_ca=str(garbage))) == [
        f"x.toml: providers[0].tls_ca: {str(garbage)!r} holds no PEM certificate"]
    assert problems(with_provider(tmp_path, tls_ca=str(pki.ca), tls_verify=False,
                                  tls_server_name="x")) == [
        f"x.toml: providers[0].{key}: only takes effect with tls = true"
        for key in ("tls_ca", "tls_verify", "tls_server_name")]
    assert problems(with_provider(tmp_path, tls=True, tls_ca=str(pki.ca), tls_verify=False)) == [
        "x.toml: providers[0].tls_ca: has no effect with tls_verify = false (nothing is verified)"]
    assert problems(with_provider(tmp_path, tls="yes", tls_server_name="a b")) == [
        "x.toml: providers[0].tls: must be true or false, got 'yes'",
        "x.toml: providers[0].tls_server_name: must be a host name, got 'a b'",
    ]
    assert problems(with_provider(tmp_path, tls=True, tls_cafile=str(pki.ca))) == [
        "x.toml: providers[0].tls_cafile: unknown key; did you mean 'tls_ca'?"]


def test_bad_tls_file_in_a_config_file_is_reported_without_traceback(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "smsagg.toml"
    garbage = tmp_path / "garbage.key"
    garbage.write_text("SECRET-KEY-MATERIAL\n")
    path.write_text(
        f'[http]\ntls_cert = "{pki.cert}"\ntls_key = "{garbage}"\n'
        '[[accounts]]\nname = "shop"\napi_key = "k"\n'
        '[[providers]]\nname = "sim"\nhost = "127.0.0.1"\nport = 1\nsystem_id = "s"\n'
        'password = "p"\nbinds = 1\nwindow = 1\nmax_tps = 1\n'
        f'tls = true\ntls_ca = "{tmp_path / "nope.pem"}"\n'
        '[[routes]]\nprefixes = ["*"]\nproviders = ["sim"]\n', encoding="utf-8")
    tomllib.loads(path.read_text())  # the test's own file is valid TOML
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: http.tls_key: {str(garbage)!r} holds no PEM private key",
        f"{path}: providers[0].tls_ca: cannot read {str(tmp_path / 'nope.pem')!r}: "
        "No such file or directory",
    ]
    assert smsagg_main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "http.tls_key" in err and "providers[0].tls_ca" in err
    assert "Traceback" not in err and "SECRET-KEY-MATERIAL" not in err


# --------------------------------------------------------------------------- simulator


def test_simulator_tls_options_go_together(tmp_path: Path, pki: Pki,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        Smsc(tls_cert=str(pki.cert))
    assert sim_main(["smsc", "--port", "0", "--tls-cert", str(pki.cert)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("nothing\n")
    assert sim_main(["smsc", "--loop", "asyncio", "--port", "0", "--stats-interval", "0",
                     "--tls-cert", str(garbage), "--tls-key", str(pki.key)]) == 2
    err = capsys.readouterr().err
    assert f"{str(garbage)!r} holds no PEM certificate" in err and "Traceback" not in err
