"""Credentials as SHA-256 digests or environment variables, constant-time checks, failed-login
limiting per source address, per-account HTTP rate limits, and secrets kept out of logs."""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from aggregator import auth, metrics
from aggregator.auth import Authenticator, FailedLogins, RateLimit, digest
from aggregator.config import AccountConfig, Config, ConfigError, parse_config
from aggregator.smpp.session import BindMode
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import BindError, open_client
from tests import helpers
from tests.helpers import API_KEY, ManualClock, Running, running

OK = {"to": "+38344123456", "from": "ACME", "text": "hello"}
SHOP_KEY = "shop-hashed-key-1"  # the plain key behind the configured digest
BANK_KEY = "bank-env-key-2"
SMPP_PASSWORD = "s3cr3t"


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# --------------------------------------------------------------------------- configuration

BASE: dict[str, Any] = {
    "store": {"path": "x.db"},
    "accounts": [{"name": "shop", "api_key": "shop-key"}],
    "providers": [{"name": "sim", "host": "h", "port": 1, "system_id": "s", "password": "pw",
                   "binds": 1, "window": 1, "max_tps": 1}],
    "routes": [{"prefixes": ["*"], "providers": ["sim"]}],
}


def with_account(environ: dict[str, str] | None = None, **account: Any) -> Config:
    data = copy.deepcopy(BASE)
    data["accounts"][0] = {"name": "shop", **account}
    return parse_config(data, "s.toml", environ=environ or {})


def problems(environ: dict[str, str] | None = None, **account: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        with_account(environ, **account)
    return info.value.problems


def test_each_form_of_api_key_gives_the_same_digest() -> None:
    plain = with_account(api_key=SHOP_KEY).accounts[0]
    hashed = with_account(api_key_sha256=sha(SHOP_KEY).upper()).accounts[0]
    env = with_account({"SHOP_KEY": SHOP_KEY}, api_key_env="SHOP_KEY").accounts[0]
    assert plain.api_key_digest == hashed.api_key_digest == env.api_key_digest == digest(SHOP_KEY)
    assert plain.api_key == SHOP_KEY  # given in the file: kept for existing callers
    assert hashed.api_key == env.api_key == ""  # otherwise only the digest is held


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        ({"api_key": "k", "api_key_sha256": sha("k")},
         "s.toml: accounts[0].api_key_sha256: conflicts with api_key: "
         "give exactly one of api_key, api_key_sha256, api_key_env"),
        ({"api_key_sha256": sha("k"), "api_key_env": "K"},
         "s.toml: accounts[0].api_key_env: conflicts with api_key_sha256: "
         "give exactly one of api_key, api_key_sha256, api_key_env"),
        ({},
         "s.toml: accounts[0].api_key: required key is missing"),
        ({"api_key_sha256": "xyz"},
         "s.toml: accounts[0].api_key_sha256: "
         "must be 64 hexadecimal digits (a SHA-256 digest), got 3 characters"),
        ({"api_key_sha256": "g" * 64},
         "s.toml: accounts[0].api_key_sha256: "
         "must be 64 hexadecimal digits (a SHA-256 digest), got 64 characters"),
        ({"api_key_sha256": 5},
         "s.toml: accounts[0].api_key_sha256: "
         "must be 64 hexadecimal digits (a SHA-256 digest), got an integer"),
        ({"api_key_env": ""},
         "s.toml: accounts[0].api_key_env: must be the name of an environment variable, got ''"),
        ({"api_key_env": "SMSAGG_NOT_SET"},
         "s.toml: accounts[0].api_key_env: environment variable 'SMSAGG_NOT_SET' is not set"),
        ({"api_key_env": "EMPTY"},
         "s.toml: accounts[0].api_key_env: environment variable 'EMPTY': is empty"),
        ({"api_key_env": "SPACED"},
         "s.toml: accounts[0].api_key_env: environment variable 'SPACED': "
         "must be non-empty and contain no whitespace"),
        ({"api_key": "k", "password_sha256": sha("p")},
         "s.toml: accounts[0].password_sha256: needs system_id: "
         "both are the SMPP bind credentials"),
        ({"api_key": "k", "system_id": "shop"},
         "s.toml: accounts[0].password: "
         "required with system_id (or password_sha256, password_env)"),
        ({"api_key": "k", "system_id": "shop", "password": "p", "password_env": "PW"},
         "s.toml: accounts[0].password_env: conflicts with password: "
         "give exactly one of password, password_sha256, password_env"),
        ({"api_key": "k", "system_id": "shop", "password_env": "LONG_PW"},
         "s.toml: accounts[0].password_env: environment variable 'LONG_PW': "
         "must be at most 8 characters (SMPP limit), got 16"),
        ({"api_key": "k", "max_http_tps": 0},
         "s.toml: accounts[0].max_http_tps: must be a number > 0, got 0"),
        ({"api_key": "k", "max_http_tps": "fast"},
         "s.toml: accounts[0].max_http_tps: must be a number > 0, got 'fast'"),
    ],
)
def test_credential_config_errors(account: dict[str, Any], expected: str) -> None:
    environ = {"EMPTY": "", "SPACED": "top secret", "LONG_PW": "sixteen-chars-pw",
               "K": "value-of-k"}
    found = problems(environ, **account)
    assert found == [expected]
    for value in environ.values():
        if value:
            assert value not in "\n".join(found)


def test_missing_env_var_error_names_the_variable_never_a_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMSAGG_SHOP_KEY", raising=False)
    monkeypatch.setenv("SMSAGG_BANK_KEY", "has a space")
    data = copy.deepcopy(BASE)
    data["accounts"] = [{"name": "shop", "api_key_env": "SMSAGG_SHOP_KEY"},
                        {"name": "bank", "api_key_env": "SMSAGG_BANK_KEY"}]
    with pytest.raises(ConfigError) as info:
        parse_config(data, "s.toml")  # os.environ by default
    text = str(info.value)
    assert "s.toml: accounts[0].api_key_env: environment variable 'SMSAGG_SHOP_KEY' is not set" \
        in text
    assert "accounts[1].api_key_env: environment variable 'SMSAGG_BANK_KEY'" in text
    assert "has a space" not in text


def test_same_key_in_two_forms_is_reported_without_showing_it() -> None:
    data = copy.deepcopy(BASE)
    data["accounts"] = [{"name": "shop", "api_key": SHOP_KEY},
                        {"name": "bank", "api_key_sha256": sha(SHOP_KEY)}]
    with pytest.raises(ConfigError) as info:
        parse_config(data, "s.toml")
    assert info.value.problems == [
        "s.toml: accounts[1].api_key_sha256: same api_key as accounts[0]"]


def test_secrets_absent_from_repr() -> None:
    config = with_account({"K": BANK_KEY, "PW": SMPP_PASSWORD}, api_key_env="K",
                          system_id="shop", password_env="PW", max_http_tps=5)
    account = config.accounts[0]
    text = repr(config)
    for secret in (BANK_KEY, SMPP_PASSWORD, account.api_key_digest.hex(),
                   repr(account.api_key_digest), repr(account.password_digest)):
        assert secret not in text
    assert "digest" not in text and "password" not in text
    assert "max_http_tps=5.0" in text
    plain = with_account(api_key=SHOP_KEY, system_id="shop", password=SMPP_PASSWORD)
    assert SHOP_KEY not in repr(plain) and SMPP_PASSWORD not in repr(plain)


# --------------------------------------------------------------------------- auth units


def test_account_for_key_compares_against_every_account(monkeypatch: pytest.MonkeyPatch) -> None:
    accounts = [AccountConfig(name=f"a{i}", api_key=f"key-{i}") for i in range(5)]
    authn = Authenticator(accounts)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # what auth.py calls
    for key, expected in [("key-0", "a0"), ("key-4", "a4"), ("nope", None), ("", None)]:
        calls.clear()
        assert authn.account_for_key(key) == expected
        # No early exit: one constant-time comparison per account, of digests only.
        assert sorted(b for _, b in calls) == sorted(a.api_key_digest for a in accounts)
        assert all(a == digest(key) for a, _ in calls)


def test_check_bind_statuses() -> None:
    accounts = [AccountConfig(name="shop", api_key="k", system_id="shop",
                              password_digest=digest(SMPP_PASSWORD)),
                AccountConfig(name="web", api_key="w")]
    authn = Authenticator(accounts)
    account, status = authn.check_bind("shop", SMPP_PASSWORD)
    assert account is not None and (account.name, status) == ("shop", CommandStatus.ESME_ROK)
    assert authn.check_bind("shop", "wrong") == (None, CommandStatus.ESME_RINVPASWD)
    assert authn.check_bind("web", "") == (None, CommandStatus.ESME_RINVSYSID)
    assert authn.check_bind("nobody", SMPP_PASSWORD) == (None, CommandStatus.ESME_RINVSYSID)


def test_failed_logins_block_after_limit_within_window_then_cool_down() -> None:
    clock = ManualClock()
    limiter = FailedLogins(limit=3, window=10, cooldown=30, clock=clock)
    assert not limiter.failed("1.2.3.4")
    clock.now += 11  # the first failure has left the window
    assert not limiter.failed("1.2.3.4")
    assert not limiter.failed("1.2.3.4")
    assert limiter.blocked_for("1.2.3.4") == 0.0
    assert limiter.failed("1.2.3.4")  # third within 10 s: blocked
    assert limiter.blocked_for("1.2.3.4") == 30.0
    assert limiter.blocked_for("5.6.7.8") == 0.0  # other addresses are unaffected
    clock.now += 29.5
    assert limiter.blocked_for("1.2.3.4") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.blocked_for("1.2.3.4") == 0.0
    assert not limiter.failed("1.2.3.4")  # the count starts again after a cool-down


def test_failed_logins_memory_is_bounded_oldest_first() -> None:
    clock = ManualClock()
    limiter = FailedLogins(limit=1, window=60, cooldown=60, max_addresses=100, clock=clock)
    for i in range(250):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    assert limiter.blocked_for("10.0.0.0") == 0.0  # evicted
    assert limiter.blocked_for("10.0.0.249") == 60.0


def test_rate_limit_counts_every_message_and_says_when_to_retry() -> None:
    clock = ManualClock()
    bucket = RateLimit(2.0, clock=clock)
    assert bucket.try_take(2) == 0.0
    assert bucket.try_take() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.try_take() == 0.0
    clock.now += 1.0  # full again (burst 2)
    assert bucket.try_take(5) == 0.0  # a batch above the burst passes on a full bucket...
    assert bucket.try_take() == pytest.approx(2.0)  # ...and is paid for afterwards
    assert auth.retry_after(0.01) == 1 and auth.retry_after(2.0) == 2
    assert auth.retry_after(2.1) == 3


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def hashed_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make running() configure shop by api_key_sha256 and bank by api_key_env."""
    monkeypatch.setenv("SMSAGG_TEST_BANK_KEY", BANK_KEY)
    real: Callable[[dict[str, Any], str], Config] = parse_config

    def parse(data: dict[str, Any], source: str) -> Config:
        for account in data["accounts"]:
            if account["name"] == "shop":
                del account["api_key"]
                account["api_key_sha256"] = sha(SHOP_KEY)
            elif account["name"] == "bank":
                del account["api_key"]
                account["api_key_env"] = "SMSAGG_TEST_BANK_KEY"
        return real(data, source)

    monkeypatch.setattr("tests.helpers.parse_config", parse)
    yield


async def post(r: Running, key: str, path: str = "/v1/messages",
               body: Any = None) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with r.http.post(f"{r.base}{path}", json=OK if body is None else body,
                           headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json(), resp.headers


def counter(name: str, interface: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"interface": interface}) or 0.0


@pytest.mark.usefixtures("hashed_keys")
async def test_keys_from_sha256_and_env_authenticate_over_http(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        shop = r.app.config.accounts[0]
        assert shop.api_key == "" and shop.api_key_digest == digest(SHOP_KEY)
        for key in (SHOP_KEY, BANK_KEY):
            status, body, _ = await post(r, key)
            assert status == 202, body
        status, body, _ = await post(r, sha(SHOP_KEY))  # the digest itself is not the key
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body, _ = await post(r, "SMSAGG_TEST_BANK_KEY")
        assert status == 401


async def test_smpp_password_sha256_binds_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    shop = {"system_id": "shop", "password_sha256": sha(SMPP_PASSWORD)}
    async with running(tmp_path, smpp={}, shop=shop) as r:
        assert r.app.smpp is not None
        conn = await open_client("127.0.0.1", r.app.smpp.port, mode=BindMode.TRANSCEIVER,
                                 system_id="shop", password=SMPP_PASSWORD)
        assert conn.session.mode is BindMode.TRANSCEIVER
        with pytest.raises(BindError) as err:
            await open_client("127.0.0.1", r.app.smpp.port, mode=BindMode.TRANSCEIVER,
                              system_id="shop", password=sha(SMPP_PASSWORD)[:8])
        assert err.value.status == 0x0E


async def test_failed_logins_over_http_are_limited_per_address(tmp_path: Path) -> None:
    before = counter("smsagg_auth_failures_total", "http")
    with structlog.testing.capture_logs() as logs:
        async with running(tmp_path) as r:
            for i in range(10):
                status, body, _ = await post(r, f"guess-{i}")
                assert (status, body["error"]["code"]) == (401, "unauthorized")
            for key in (API_KEY, "bank-key", "guess-10"):  # even the right key: not checked
                status, body, headers = await post(r, key)
                assert (status, body["error"]["code"]) == (429, "too_many_failed_logins")
                assert 1 <= int(headers["Retry-After"]) <= 60
            async with r.http.get(f"{r.base}/v1/messages/{'0' * 32}",
                                  headers=helpers.AUTH) as resp:
                assert resp.status == 429 and "Retry-After" in resp.headers
            async with r.http.get(f"{r.base}/metrics") as resp:
                exposition = await resp.text()
    assert counter("smsagg_auth_failures_total", "http") - before == 14
    assert 'smsagg_auth_failures_total{interface="http"}' in exposition
    assert API_KEY not in exposition and "guess-" not in exposition
    assert any(e["event"] == "http_logins_blocked" for e in logs)
    assert_no_secrets(logs, API_KEY, "bank-key", "guess-")


async def test_failed_binds_over_smpp_are_limited_per_address(tmp_path: Path) -> None:
    before = counter("smsagg_auth_failures_total", "smpp")
    with structlog.testing.capture_logs() as logs:
        async with running(tmp_path, smpp={},
                           shop={"system_id": "shop", "password": SMPP_PASSWORD}) as r:
            assert r.app.smpp is not None
            port = r.app.smpp.port
            for i in range(10):
                system_id, password = ("shop", f"bad{i}") if i % 2 else (f"who{i}", "x")
                with pytest.raises(BindError) as err:
                    await open_client("127.0.0.1", port, mode=BindMode.TRANSMITTER,
                                      system_id=system_id, password=password)
                assert err.value.status == (0x0E if i % 2 else 0x0F)
            with pytest.raises(BindError) as err:
                await open_client("127.0.0.1", port, mode=BindMode.TRANSMITTER,
                                  system_id="shop", password=SMPP_PASSWORD)
            assert err.value.status == 0x0D  # ESME_RBINDFAIL, credentials not even checked
            status, _, _ = await post(r, API_KEY)  # HTTP keeps its own count
            assert status == 202
    assert counter("smsagg_auth_failures_total", "smpp") - before == 11
    assert any(e["event"] == "smpp_logins_blocked" for e in logs)
    assert_no_secrets(logs, SMPP_PASSWORD, "bad1", "bad3", API_KEY)


def assert_no_secrets(logs: Sequence[Mapping[str, Any]], *secrets: str) -> None:
    assert logs
    text = repr(logs)
    for secret in secrets:
        assert secret not in text


async def test_max_http_tps_answers_429_with_retry_after(tmp_path: Path) -> None:
    before = counter("smsagg_rate_limited_total", "http")
    async with running(tmp_path, shop={"max_http_tps": 1}) as r:
        status, body, _ = await post(r, API_KEY)
        assert status == 202, body
        status, body, headers = await post(r, API_KEY)
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert body["error"]["message"]
        assert headers["Retry-After"] == "1"
        batch = {"messages": [OK, OK]}
        status, body, headers = await post(r, API_KEY, "/v1/messages/batch", batch)
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert int(headers["Retry-After"]) >= 1
        status, body, _ = await post(r, "bank-key")  # other accounts have their own limit
        assert status == 202, body
        status, body, _ = await post(r, "bank-key", "/v1/messages/batch", batch)
        assert status == 200 and [x["status"] for x in body["results"]] == [202, 202]
    assert counter("smsagg_rate_limited_total", "http") - before == 2
