from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import (
    AccountConfig,
    CallbacksConfig,
    Config,
    ConfigError,
    HttpConfig,
    ListenAddress,
    LogConfig,
    MessagesConfig,
    ProviderConfig,
    RouteConfig,
    StoreConfig,
    default_config_text,
    load_config,
    load_default_config,
    parse_config,
    with_overrides,
)
from tests.config_helpers import MINIMAL, minimal

ROOT = Path(__file__).resolve().parents[2]


def problems_of(data: dict[str, Any], source: str = "smsagg.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    return info.value.problems


# --------------------------------------------------------------------------- happy paths


def test_default_config_loads() -> None:
    config = load_default_config()
    assert config.source == "<embedded default>"
    assert config.accounts == (AccountConfig(name="demo", api_key="demo-key"),)
    (sim,) = config.providers
    assert (sim.name, sim.host, sim.port, sim.system_id, sim.password) == (
        "sim",
        "127.0.0.1",
        2776,
        "smsagg",
        "pw",
    )
    assert (sim.binds, sim.window, sim.max_tps) == (2, 10, 1000.0)
    assert config.routes == (RouteConfig(prefixes=("*",), providers=("sim",)),)
    assert config.store.path == "smsagg.db"
    assert config.http.listen == ListenAddress("127.0.0.1", 8080)
    assert config.provider("sim") is sim


def test_repository_default_is_the_packaged_default() -> None:
    assert (ROOT / "config" / "default.toml").read_text(encoding="utf-8") == default_config_text()


def test_default_file_spells_out_the_dataclass_defaults() -> None:
    # The file documents every default; it must not drift from the code.
    config = load_default_config()
    assert config.http == HttpConfig()
    assert config.store == StoreConfig()
    assert config.messages == MessagesConfig()
    assert config.callbacks == CallbacksConfig()
    assert config.log == LogConfig()
    sim = config.providers[0]
    assert sim == ProviderConfig(
        name="sim",
        host="127.0.0.1",
        port=2776,
        system_id="smsagg",
        password="pw",
        binds=2,
        window=10,
        max_tps=1000,
    )


def test_example_config_loads() -> None:
    config = load_config(ROOT / "config" / "example.toml")
    assert [p.name for p in config.providers] == ["local", "hub"]
    assert len(config.routes) == 2
    assert len(config.accounts) == 2
    assert config.provider("hub").response_timeout == 15.0


def test_minimal_example_gets_defaults() -> None:
    config = parse_config(minimal(), "smsagg.toml")
    assert config.source == "smsagg.toml"
    assert config.http == HttpConfig(listen=ListenAddress("127.0.0.1", 8080),
                                     max_body_bytes=4_194_304)
    assert config.store == StoreConfig(path="smsagg.db", max_pending=200000, commit_batch=1000)
    assert config.messages == MessagesConfig(
        max_segments=10, default_validity=86400, max_attempts=20, retry_min=0.5, retry_max=60.0
    )
    assert config.callbacks == CallbacksConfig(
        timeout=5.0, max_attempts=10, retry_min=1.0, retry_max=300.0, concurrency=32
    )
    assert config.log == LogConfig(level="info", format="json", log_numbers=False)
    provider = config.provider("sim")
    assert provider.system_type == ""
    assert provider.receipt_id == "as_is"
    assert provider.max_tps == 200.0 and isinstance(provider.max_tps, float)
    assert (provider.response_timeout, provider.enquire_link_interval, provider.bind_timeout) == (
        10.0,
        30.0,
        10.0,
    )
    assert (provider.reconnect_min, provider.reconnect_max) == (0.5, 30.0)


def test_optional_sections_may_be_left_out() -> None:
    data = minimal()
    del data["http"], data["store"]
    config = parse_config(data, "x.toml")
    assert config.http == HttpConfig()
    assert config.store == StoreConfig()


def test_int_accepted_for_float() -> None:
    data = minimal()
    data["callbacks"] = {"timeout": 3, "retry_min": 1, "retry_max": 2}
    config = parse_config(data, "x.toml")
    assert config.callbacks.timeout == 3.0 and isinstance(config.callbacks.timeout, float)


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "smsagg.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    config = load_config(path)
    assert config.source == str(path)
    assert config.accounts[0].name == "shop"


def test_provider_lookup_unknown_name() -> None:
    with pytest.raises(KeyError):
        load_default_config().provider("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:0", ListenAddress("127.0.0.1", 0)),
        ("localhost:65535", ListenAddress("localhost", 65535)),
        ("[::1]:8080", ListenAddress("::1", 8080)),
    ],
)
def test_listen_address_round_trip(text: str, expected: ListenAddress) -> None:
    address = ListenAddress.parse(text)
    assert address == expected
    assert str(address) == text


def test_with_overrides() -> None:
    config = load_default_config()
    changed = with_overrides(
        config, store={"path": "/tmp/x.db"}, http={"listen": ListenAddress("127.0.0.1", 0)}
    )
    assert changed.store == dataclasses.replace(config.store, path="/tmp/x.db")
    assert str(changed.http.listen) == "127.0.0.1:0"
    assert changed.http.max_body_bytes == config.http.max_body_bytes
    assert config.store.path == "smsagg.db"  # original untouched
    whole = with_overrides(config, log=LogConfig(level="debug"))
    assert whole.log.level == "debug"
    with pytest.raises(TypeError):
        with_overrides(config, nonsense=1)


def test_config_is_immutable() -> None:
    config = load_default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.store = StoreConfig()  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


def test_unknown_sections_and_keys_suggest_names() -> None:
    data = minimal()
    data["htp"] = {"listen": "127.0.0.1:1"}
    data["store"]["max_pendng"] = 5
    data["providers"][0]["windw"] = 5
    data["providers"][0]["zzzz"] = 5
    assert problems_of(data) == [
        "smsagg.toml: store.max_pendng: unknown key; did you mean 'max_pending'?",
        "smsagg.toml: providers[0].windw: unknown key; did you mean 'window'?",
        "smsagg.toml: providers[0].zzzz: unknown key",
        "smsagg.toml: htp: unknown section; did you mean 'http'?",
    ]


def test_wrong_types() -> None:
    data = minimal()
    data["providers"][0]["binds"] = True  # bool is not an int
    data["providers"][0]["port"] = "2776"
    data["providers"][0]["max_tps"] = "fast"
    data["log"] = {"log_numbers": "yes"}
    data["store"]["path"] = 5
    data["messages"] = {"max_attempts": 2.5}
    data["callbacks"] = []
    problems = problems_of(data)
    assert problems == [
        "smsagg.toml: store.path: must be a string, got 5",
        "smsagg.toml: messages.max_attempts: must be an integer >= 1, got 2.5",
        "smsagg.toml: callbacks: must be a table ([callbacks]), got an array",
        "smsagg.toml: log.log_numbers: must be true or false, got 'yes'",
        "smsagg.toml: providers[0].port: must be an integer between 0 and 65535, got '2776'",
        "smsagg.toml: providers[0].binds: must be an integer between 1 and 64, got true",
        "smsagg.toml: providers[0].max_tps: must be a number > 0, got 'fast'",
    ]


def test_ranges() -> None:
    data = minimal()
    data["http"]["max_body_bytes"] = 0
    data["messages"] = {"max_segments": 256, "retry_min": 10, "retry_max": 5}
    data["callbacks"] = {"timeout": 0, "concurrency": 0, "retry_min": -1}
    provider = data["providers"][0]
    provider.update(
        port=70000,
        binds=65,
        window=0,
        max_tps=0,
        response_timeout=-1.0,
        reconnect_min=60.0,
        reconnect_max=1.0,
    )
    assert problems_of(data) == [
        "smsagg.toml: http.max_body_bytes: must be an integer >= 1, got 0",
        "smsagg.toml: messages.max_segments: must be an integer <= 255, got 256",
        "smsagg.toml: messages.retry_min: must be <= retry_max (5), got 10",
        "smsagg.toml: callbacks.timeout: must be a number > 0, got 0",
        "smsagg.toml: callbacks.retry_min: must be a number > 0, got -1",
        "smsagg.toml: callbacks.concurrency: must be an integer >= 1, got 0",
        "smsagg.toml: providers[0].port: must be an integer <= 65535, got 70000",
        "smsagg.toml: providers[0].binds: must be an integer <= 64, got 65",
        "smsagg.toml: providers[0].window: must be an integer >= 1, got 0",
        "smsagg.toml: providers[0].max_tps: must be a number > 0, got 0",
        "smsagg.toml: providers[0].response_timeout: must be a number > 0, got -1.0",
        "smsagg.toml: providers[0].reconnect_min: must be <= reconnect_max (1), got 60",
    ]


def test_window_message_from_the_contract() -> None:
    data = minimal()
    data["providers"].append(dict(data["providers"][0], name="other", window=0))
    assert problems_of(data) == [
        "smsagg.toml: providers[1].window: must be an integer >= 1, got 0",
    ]


def test_non_finite_numbers_rejected() -> None:
    data = minimal()
    data["providers"][0]["max_tps"] = float("inf")
    data["providers"][0]["bind_timeout"] = float("nan")
    assert problems_of(data) == [
        "smsagg.toml: providers[0].max_tps: must be a finite number, got inf",
        "smsagg.toml: providers[0].bind_timeout: must be a finite number, got nan",
    ]


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("localhost", "must be \"host:port\", got 'localhost'"),
        (":8080", "must be \"host:port\", got ':8080'"),
        ("host:http", "must be \"host:port\", got 'host:http'"),
        ("host:70000", "port must be between 0 and 65535, got 'host:70000'"),
        ("::1:80", "must be \"host:port\" with an IPv6 host in brackets, got '::1:80'"),
        (8080, 'must be a string "host:port", got 8080'),
    ],
)
def test_bad_listen(listen: object, problem: str) -> None:
    data = minimal()
    data["http"]["listen"] = listen
    assert problems_of(data) == [f"smsagg.toml: http.listen: {problem}"]


def test_enums() -> None:
    data = minimal()
    data["log"] = {"level": "verbose", "format": "xml"}
    data["providers"][0]["receipt_id"] = "hex"
    assert problems_of(data) == [
        "smsagg.toml: log.level: must be one of 'debug', 'info', 'warning', 'error', got 'verbose'",
        "smsagg.toml: log.format: must be one of 'json', 'console', got 'xml'",
        "smsagg.toml: providers[0].receipt_id: must be one of 'as_is', 'hex_to_dec', "
        "'dec_to_hex', got 'hex'",
    ]


def test_duplicates() -> None:
    data = minimal()
    data["accounts"] += [
        {"name": "shop", "api_key": "other-key"},
        {"name": "bakery", "api_key": "shop-key"},
    ]
    data["providers"].append(dict(data["providers"][0]))
    problems = problems_of(data)
    assert problems == [
        "smsagg.toml: accounts[1].name: duplicate account name 'shop', also in accounts[0]",
        "smsagg.toml: accounts[2].api_key: same api_key as accounts[0]",
        "smsagg.toml: providers[1].name: duplicate provider name 'sim', also in providers[0]",
    ]
    assert not any("shop-key" in p for p in problems)


def test_routes() -> None:
    data = minimal()
    data["routes"] = [
        {"prefixes": ["+383", "383", "+", "+1234567890123456", "*"], "providers": ["sim", "simm"]},
        {"prefixes": ["+383", "+44", "+44"], "providers": ["sim", "sim"]},
        {"prefixes": [], "providers": []},
        {"prefixes": "*", "providers": ["sim", 7]},
    ]
    assert problems_of(data) == [
        "smsagg.toml: routes[0].prefixes[1]: "
        'must be "*" or "+" followed by 1-15 digits, got \'383\'',
        'smsagg.toml: routes[0].prefixes[2]: must be "*" or "+" followed by 1-15 digits, got \'+\'',
        "smsagg.toml: routes[0].prefixes[3]: "
        'must be "*" or "+" followed by 1-15 digits, got \'+1234567890123456\'',
        "smsagg.toml: routes[2].prefixes: must not be empty",
        "smsagg.toml: routes[2].providers: must not be empty",
        "smsagg.toml: routes[3].prefixes: must be an array of strings, got '*'",
        "smsagg.toml: routes[3].providers[1]: must be a string, got 7",
        "smsagg.toml: routes[0].providers[1]: no [[providers]] entry named 'simm'; "
        "did you mean 'sim'?",
        "smsagg.toml: routes[1].prefixes[0]: prefix '+383' is already routed by routes[0]",
        "smsagg.toml: routes[1].prefixes[2]: prefix '+44' listed twice",
        "smsagg.toml: routes[1].providers[1]: provider 'sim' listed twice",
    ]


@pytest.mark.parametrize("section", ["accounts", "providers", "routes"])
def test_required_arrays(section: str) -> None:
    data = minimal()
    del data[section]
    problems = problems_of(data)
    assert f"smsagg.toml: {section}: required key is missing" in problems
    data[section] = []
    assert f"smsagg.toml: {section}: at least one [[{section}]] entry is required" in (
        problems_of(data)
    )
    data[section] = {"name": "x"}
    assert f"smsagg.toml: {section}: must be an array of tables ([[{section}]]), got a table" in (
        problems_of(data)
    )


def test_required_keys() -> None:
    data = minimal()
    del data["providers"][0]["window"]
    del data["providers"][0]["password"]
    del data["accounts"][0]["api_key"]
    assert problems_of(data) == [
        "smsagg.toml: accounts[0].api_key: required key is missing",
        "smsagg.toml: providers[0].password: required key is missing",
        "smsagg.toml: providers[0].window: required key is missing",
    ]


def test_empty_strings_and_smpp_limits() -> None:
    data = minimal()
    data["store"]["path"] = ""
    data["accounts"][0]["name"] = ""
    data["accounts"][0]["api_key"] = "has space"
    data["providers"][0].update(
        host="", system_id="a-very-long-system-id", password="longpassword", system_type="é"
    )
    problems = problems_of(data)
    assert problems == [
        "smsagg.toml: store.path: must not be empty",
        "smsagg.toml: accounts[0].name: must not be empty",
        "smsagg.toml: accounts[0].api_key: must be non-empty and contain no whitespace",
        "smsagg.toml: providers[0].host: must not be empty",
        "smsagg.toml: providers[0].system_id: must be at most 15 characters (SMPP limit), got 21",
        "smsagg.toml: providers[0].password: must be at most 8 characters (SMPP limit), got 12",
        "smsagg.toml: providers[0].system_type: "
        "must contain only ASCII characters (SMPP C-octet string)",
    ]


def test_many_problems_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        MINIMAL.replace("window = 10", "window = 0")
        .replace('listen = "127.0.0.1:8080"', 'listen = "nowhere"')
        .replace('providers = ["sim"]', 'providers = ["nope"]')
        + '\n[log]\nlevel = "loud"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    source = str(path)
    assert info.value.problems == [
        f"{source}: http.listen: must be \"host:port\", got 'nowhere'",
        f"{source}: log.level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
        f"{source}: providers[0].window: must be an integer >= 1, got 0",
        f"{source}: routes[0].providers[0]: no [[providers]] entry named 'nope'",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[http]\nlisten = "127.0.0.1:8080"\nmax_body_bytes = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: line 3, column 18: invalid TOML: ")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == [f"{missing}: cannot read file: No such file or directory"]

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(latin1)
    assert info.value.problems == [f"{latin1}: byte 5: file is not valid UTF-8"]


def test_secrets_absent_from_repr_and_errors() -> None:
    config = parse_config(minimal(), "smsagg.toml")
    text = repr(config)
    assert "shop-key" not in text
    assert "'pw'" not in text and "password" not in text
    assert "shop" in text and "sim" in text  # the rest is still there

    data = minimal()
    data["accounts"].append({"name": "copy", "api_key": "shop-key"})
    data["accounts"][0]["api_key"] = ["shop-key"]  # wrong type: the value must not be echoed
    data["providers"][0]["password"] = "supersecretpw"
    message = "\n".join(problems_of(data, "s.toml"))
    assert "shop-key" not in message and "supersecretpw" not in message
    assert "s.toml: accounts[0].api_key: must be a string, got an array" in message
    assert "s.toml: providers[0].password: must be at most 8 characters" in message

    data = minimal()
    data["providers"][0]["password"] = 12345678
    message = "\n".join(problems_of(data, "s.toml"))
    assert "12345678" not in message
    assert "s.toml: providers[0].password: must be a string, got an integer" in message


def test_config_error_pickles() -> None:
    error = ConfigError(["a: b: c", "d: e: f"])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == "a: b: c\nd: e: f"


def test_config_type_is_exported() -> None:
    assert isinstance(load_default_config(), Config)
