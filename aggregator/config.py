"""Daemon configuration: TOML file -> validated, immutable Config.

Each optional [section] is one dataclass plus one ``_parse_*`` function that reads its keys
through a ``Reader`` (aggregator/tomlcheck.py, shared with the country and simulator profiles).
The reader is the schema: keys a parse function never asks for are reported as unknown, and
keys without a dataclass default are required. Adding a section means: dataclass, parse
function, a Config field and one ``top.section(...)`` line in ``parse_config``.

Every problem in a file is collected before raising, so one run of the daemon shows them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

from aggregator.credentials import digest
from aggregator.numbers import is_region
from aggregator.tls import TlsFileError, check_ca, server_context
from aggregator.tomlcheck import ABSENT as _ABSENT
from aggregator.tomlcheck import Reader, TomlFileError, decode_toml, read_toml
from aggregator.tomlcheck import kind as _kind
from aggregator.tomlcheck import show as _show

__all__ = [
    "AccountConfig",
    "CallbacksConfig",
    "Config",
    "ConfigError",
    "HttpConfig",
    "InstanceConfig",
    "ListenAddress",
    "LogConfig",
    "MessagesConfig",
    "ProviderConfig",
    "RouteConfig",
    "StoreConfig",
    "default_config_text",
    "load_config",
    "load_default_config",
    "parse_config",
    "with_overrides",
]

DEFAULT_SOURCE: Final = "<embedded default>"

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("json", "console")
RECEIPT_ID_MODES: Final = ("as_is", "hex_to_dec", "dec_to_hex")
MESSAGE_CLASSES: Final = ("transactional", "marketing")
KEEP_TEXT_MODES: Final = ("always", "until_final", "never")
ROUTE_STRATEGIES: Final = ("failover", "weighted")
MESSAGE_ID_FORMATS: Final = ("hex", "decimal")

# SMPP 3.4 C-octet string limits (without the NUL); aiosmpplib refuses longer values at bind
# time, which would otherwise surface as a reconnect loop instead of a config error.
_SMPP_MAX_SYSTEM_ID: Final = 15
_SMPP_MAX_PASSWORD: Final = 8
_SMPP_MAX_SYSTEM_TYPE: Final = 12

_PREFIX_RE: Final = re.compile(r"\+[0-9]{1,15}")  # E.164: at most 15 digits
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")  # ASCII only: str.isdigit() accepts "²"


# --------------------------------------------------------------------------- data types


@dataclass(slots=True, frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        # Brackets keep an IPv6 host unambiguous and round-trip through parse().
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse "host:port" ("[v6]:port" for IPv6); raises ValueError with a short reason."""
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
            if ":" in host:
                raise ValueError('must be "host:port" with an IPv6 host in brackets')
        if not sep or not host or not _PORT_RE.fullmatch(port):
            raise ValueError('must be "host:port"')
        if int(port) > 65535:
            raise ValueError("port must be between 0 and 65535")
        return cls(host, int(port))


@dataclass(slots=True, frozen=True, kw_only=True)
class HttpConfig:
    listen: ListenAddress = ListenAddress("127.0.0.1", 8080)
    max_body_bytes: int = 4_194_304  # 4 MiB: a 1,000-message batch of longest texts
    tls_cert: str | None = None  # PEM certificate chain; with tls_key: HTTPS only
    tls_key: str | None = None  # PEM private key (unencrypted) of tls_cert
    workers: int = 0  # ingress worker processes serving HTTP; 0: the daemon serves it itself
    header_timeout: float = 10.0  # seconds for a request's headers, from its first byte
    body_timeout: float = 30.0  # seconds for a request's body, from the end of its headers
    keepalive_timeout: float = 15.0  # seconds a connection may idle between requests
    max_connections: int = 1000  # open connections per serving process

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server side of HTTPS when tls_cert and tls_key are set; None: plain HTTP."""
        if self.tls_cert and self.tls_key:
            return server_context(self.tls_cert, self.tls_key)
        return None


# Keys read only to say that they do nothing any more (logged at start, shown by check-config).
STORE_WRITER_IGNORED = ("[store] writer is ignored: SQLite always writes from its writer "
                        "process; remove the key")


@dataclass(slots=True, frozen=True, kw_only=True)
class StoreConfig:
    path: str = "smsagg.db"
    max_pending: int = 200_000
    commit_batch: int = 1000
    commit_gather_ms: float = 5.0  # SQLite: how long a small group waits for company
    # Keys given that no longer do anything: one line each, for a warning.
    ignored: tuple[str, ...] = ()
    # The share of max_pending one account may fill unless it sets its own max_pending.
    account_pending_share: float = 0.5
    backend: str = "sqlite"  # or "postgres": several instances sharing one database
    # postgres: the DSN (or, resolved at load, the one dsn_env names); a secret: never shown.
    dsn: str = field(default="", repr=False)
    dsn_env: str = ""
    pool_size: int = 10  # postgres: connections per process
    lease_seconds: float = 10.0  # postgres: a claim not renewed for this long is taken over


STORE_BACKENDS = ("sqlite", "postgres")
_DSN_SCHEMES = ("postgresql://", "postgres://")


@dataclass(slots=True, frozen=True, kw_only=True)
class InstanceConfig:
    """This running instance, among several sharing one PostgreSQL store."""

    name: str = field(default_factory=socket.gethostname)  # unique per running instance


@dataclass(slots=True, frozen=True, kw_only=True)
class MessagesConfig:
    max_segments: int = 10
    default_validity: float = 86400.0
    max_attempts: int = 20
    retry_min: float = 0.5
    retry_max: float = 60.0
    # Seconds a submitted message waits for its receipt before it becomes final "unknown".
    receipt_timeout: float = 48 * 3600.0
    keep_text: str = "always"  # always | until_final | never (kept only until submitted)
    retention_days: int = 365  # final messages' metadata is purged this long after creation
    claim_gather_ms: float = 20.0  # the dispatcher's claims at paced rates: at most one per this


@dataclass(slots=True, frozen=True, kw_only=True)
class CallbacksConfig:
    timeout: float = 5.0
    max_attempts: int = 10
    retry_min: float = 1.0
    retry_max: float = 300.0
    concurrency: int = 32
    # The slots one destination (scheme, host and port) and one account keep when others'
    # callbacks wait: above it, a request unanswered for a second gives its slot up to them.
    per_host_concurrency: int = 8
    per_account_concurrency: int = 16
    # CIDR ranges callbacks may reach although loopback, private, link-local, ... (refused
    # by default: aggregator/notify/callback_guard.py).
    allowed_networks: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True, kw_only=True)
class LogConfig:
    level: str = "info"
    format: str = "json"
    log_numbers: bool = False


@dataclass(slots=True, frozen=True, kw_only=True)
class MetricsConfig:
    """/metrics on its own address too (it is always on the HTTP listener)."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 9108)


@dataclass(slots=True, frozen=True, kw_only=True)
class SmppConfig:
    """The SMPP server for upstream ESMEs; the section's absence disables it."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 2775)
    max_sessions: int = 100  # in total, over all accounts
    idle_timeout: float = 120.0  # seconds without any PDU before a session is closed
    window: int = 50  # deliver_sm (receipts) awaiting a response, per session
    reassembly_timeout: float = 60.0  # seconds to wait for every part of a long message
    max_pending_parts: int = 10_000  # parts held for reassembly, over all sessions
    receipt_attempts: int = 10  # deliver_sm receipt attempts before giving up
    bind_timeout: float = 10.0  # seconds a connection may stay unbound, whatever it sends
    max_unbound: int = 64  # connections not (yet) bound, over all addresses
    max_unbound_per_address: int = 16  # connections not (yet) bound, per source address
    max_pending_bytes: int = 64 * 2**20  # bytes of parts held for reassembly, in total
    max_pending_bytes_per_account: int = 16 * 2**20  # and per account


@dataclass(slots=True, frozen=True, kw_only=True)
class AccountConfig:
    """One upstream sender. Credentials are checked only through their SHA-256 digests
    (``aggregator.auth``); ``api_key`` / ``password`` hold the plain text only when the file
    gave it as such (not for the ``*_sha256`` and ``*_env`` forms), and the digests are derived
    from them when not given, so ``AccountConfig(name=..., api_key=...)`` still works."""

    name: str
    api_key: str = field(default="", repr=False)  # "" when given as api_key_sha256 / _env
    api_key_digest: bytes = field(default=b"", repr=False)
    system_id: str | None = None  # SMPP bind credentials; None: this account cannot bind
    password: str | None = field(default=None, repr=False)
    password_digest: bytes | None = field(default=None, repr=False)  # None: cannot bind
    max_binds: int = 4
    max_tps: float | None = None  # submits per second over SMPP; None: no account limit
    max_http_tps: float | None = None  # messages per second over HTTP; None: no account limit
    registered_senders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    mo_url: str | None = None  # replies from handsets (not opt-out/help) are POSTed here
    block_transactional_to_opted_out: bool = False
    # ISO 3166 alpha-2: destinations without a country code (HTTP "to" digits without + or 00,
    # SMPP TON 0/2) are national numbers of this country; None: they are refused.
    default_country: str | None = None
    # "hex": 32 hex characters (the default); "decimal": a number below 2**63, for gateways that
    # read message ids as numbers (the account's messages, over HTTP and SMPP).
    message_id_format: str = "hex"
    # The class of a message that does not name one (policy/classes.py decides): HTTP without
    # "class", SMPP without a mapped service_type.
    default_class: str = "transactional"
    smpp_class: str | None = None  # SMPP submits; None: default_class
    service_types: Mapping[str, str] = field(default_factory=dict)  # SMPP service_type -> class
    # region -> documented content categories (profile [content.documented_categories]) this
    # account has given the documents for, e.g. { KZ = ["financial"] }
    cleared_categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # An opt-out added through the API is confirmed by SMS (the profile's confirmation text)
    # from optout_sender, as one from a handset's STOP is.
    confirm_api_optouts: bool = False
    optout_sender: str | None = None
    # Messages of this account waiting to be sent; None: [store] account_pending_share of
    # [store] max_pending (account_max_pending()).
    max_pending: int | None = None

    def __post_init__(self) -> None:
        if not self.api_key_digest and self.api_key:
            object.__setattr__(self, "api_key_digest", digest(self.api_key))
        if self.password_digest is None and self.system_id is not None:
            object.__setattr__(self, "password_digest", digest(self.password or ""))


@dataclass(slots=True, frozen=True, kw_only=True)
class PolicyConfig:
    """Country rules: profiles from a directory of TOML files (default: the bundled ones)."""

    countries: str | None = None
    # Each automatic answer (help text, opt-out confirmation) goes to a number at most once per
    # this many seconds, per account and kind (issue 19 item 4).
    auto_reply_interval: float = 86400.0


@dataclass(slots=True, frozen=True, kw_only=True)
class ProviderConfig:
    # kw_only: required fields (binds, window, max_tps) follow defaulted ones in contract order.
    name: str
    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    system_type: str = ""
    binds: int
    window: int
    max_tps: float
    receipt_id: str = "as_is"
    response_timeout: float = 10.0
    enquire_link_interval: float = 30.0
    bind_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    breaker_failures: int = 5  # consecutive failures that open the circuit breaker
    breaker_cooldown: float = 10.0  # seconds open before a single probe (half-open)
    tls: bool = False  # bind over TLS
    tls_ca: str | None = None  # PEM CA file the SMSC's certificate must chain to; None: system
    tls_verify: bool = True  # False: no certificate or hostname check (lab use only)
    tls_server_name: str | None = None  # SNI and name to verify; None: host
    query_after: float = 600.0  # seconds without a receipt before query_sm; 0: never ask


@dataclass(slots=True, frozen=True, kw_only=True)
class RouteConfig:
    prefixes: tuple[str, ...]
    providers: tuple[str, ...]
    message_class: str | None = None  # TOML key "class": transactional | marketing | any
    strategy: str = "failover"  # failover | weighted
    weights: tuple[int, ...] = ()
    max_tps: float | None = None


@dataclass(slots=True, frozen=True, kw_only=True)
class Config:
    http: HttpConfig
    store: StoreConfig
    messages: MessagesConfig
    callbacks: CallbacksConfig
    log: LogConfig
    smpp: SmppConfig | None
    metrics: MetricsConfig | None
    policy: PolicyConfig
    accounts: tuple[AccountConfig, ...]
    providers: tuple[ProviderConfig, ...]
    routes: tuple[RouteConfig, ...]
    source: str
    instance: InstanceConfig = field(default_factory=InstanceConfig)

    def provider(self, name: str) -> ProviderConfig:
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise KeyError(name)


class ConfigError(Exception):
    """Every problem found in one configuration, each "FILE: key.path: problem"."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(self.problems)  # args stay (list,) so the error pickles intact

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --------------------------------------------------------------------------- tables

_T = TypeVar("_T")


def _array(
    top: Reader, name: str, cls: type[_T], parse: Callable[[Reader], _T]
) -> Iterator[tuple[_T, Reader]]:
    """Parse a required, non-empty [[name]] array of tables, yielding (item, its reader)."""
    raw, given = top.lookup(name)
    if not given:
        return  # lookup() reported it: [[name]] has no default
    if not isinstance(raw, list | tuple) or not all(isinstance(x, Mapping) for x in raw):
        top.problem(name, f"must be an array of tables ([[{name}]]), got {_show(raw)}")
        return
    if not raw:
        top.problem(name, f"at least one [[{name}]] entry is required")
        return
    for index, table in enumerate(raw):
        reader = Reader(table, f"{name}[{index}]", top.source, top.problems, cls)
        item = parse(reader)
        reader.finish()
        yield item, reader


def _ordered(r: Reader, low: str, high: str) -> tuple[float, float]:
    """Read a positive (min, max) pair; min > max is reported unless either is already bad."""
    low_value, high_value = r.number(low, gt=0), r.number(high, gt=0)
    if r.ok(low, high) and low_value > high_value:
        r.problem(low, f"must be <= {high} ({high_value:g}), got {low_value:g}")
    return low_value, high_value


# --------------------------------------------------------------------------- sections


def _listen(r: Reader) -> ListenAddress:
    listen, given = r.lookup("listen")
    if given:
        if isinstance(listen, str):
            try:
                listen = ListenAddress.parse(listen)
            except ValueError as exc:
                r.problem("listen", f"{exc}, got {_show(listen)}")
        else:
            r.problem("listen", f'must be a string "host:port", got {_show(listen)}')
    return listen if isinstance(listen, ListenAddress) else ListenAddress("", 0)


def _parse_policy(r: Reader) -> PolicyConfig:
    countries: str | None = None
    raw = r.optional("countries")
    if raw is not _ABSENT:
        if not isinstance(raw, str) or not raw:
            r.problem("countries", f"must be a directory path, got {_show(raw)}")
        else:
            countries = raw
    return PolicyConfig(countries=countries,
                        auto_reply_interval=r.number("auto_reply_interval", gt=0))


def _parse_metrics(r: Reader) -> MetricsConfig:
    return MetricsConfig(listen=_listen(r))


def _parse_smpp(r: Reader) -> SmppConfig:
    return SmppConfig(
        listen=_listen(r),
        max_sessions=r.integer("max_sessions", lo=1, hi=100_000),
        idle_timeout=r.number("idle_timeout", gt=0),
        window=r.integer("window", lo=1, hi=1000),
        reassembly_timeout=r.number("reassembly_timeout", gt=0),
        max_pending_parts=r.integer("max_pending_parts", lo=1),
        receipt_attempts=r.integer("receipt_attempts", lo=1, hi=1000),
        bind_timeout=r.number("bind_timeout", gt=0),
        max_unbound=r.integer("max_unbound", lo=1, hi=100_000),
        max_unbound_per_address=r.integer("max_unbound_per_address", lo=1, hi=100_000),
        max_pending_bytes=r.integer("max_pending_bytes", lo=65536),
        max_pending_bytes_per_account=r.integer("max_pending_bytes_per_account", lo=65536),
    )


def _parse_http(r: Reader) -> HttpConfig:
    listen = _listen(r)
    max_body_bytes = r.integer("max_body_bytes", lo=1)
    tls_cert, tls_key = _optional_path(r, "tls_cert"), _optional_path(r, "tls_key")
    if r.ok("tls_cert", "tls_key") and (tls_cert is None) != (tls_key is None):
        missing, given = ("tls_key", "tls_cert") if tls_key is None else ("tls_cert", "tls_key")
        r.problem(missing, f"required with {given}: HTTPS needs the certificate and its key")
    elif tls_cert is not None and tls_key is not None:
        try:  # loaded now, so that a bad file is a config error and not a failed start
            server_context(tls_cert, tls_key)
        except TlsFileError as exc:
            r.problem(f"tls_{exc.which}", str(exc))
    workers = r.integer("workers", lo=0, hi=64)
    return HttpConfig(listen=listen, max_body_bytes=max_body_bytes, tls_cert=tls_cert,
                      tls_key=tls_key, workers=workers,
                      header_timeout=r.number("header_timeout", gt=0),
                      body_timeout=r.number("body_timeout", gt=0),
                      keepalive_timeout=r.number("keepalive_timeout", gt=0),
                      max_connections=r.integer("max_connections", lo=1, hi=1_000_000))


def _optional_path(r: Reader, key: str) -> str | None:
    """An optional file path (relative: to the working directory); None when absent."""
    raw = r.optional(key)
    if raw is _ABSENT:
        return None
    if not isinstance(raw, str) or not raw or "\0" in raw:
        r.problem(key, f"must be a file path, got {_show(raw)}")
        return None
    return raw


def _parse_store(r: Reader, environ: Mapping[str, str]) -> StoreConfig:
    backend = r.string("backend", choices=STORE_BACKENDS)
    dsn, dsn_env = _store_dsn(r, environ)
    if backend == "postgres" and not dsn and r.ok("dsn", "dsn_env"):
        r.problem("backend", 'backend = "postgres" needs dsn or dsn_env')
    return StoreConfig(
        path=r.string("path", nonempty=True),
        max_pending=r.integer("max_pending", lo=1),
        commit_batch=r.integer("commit_batch", lo=1),
        commit_gather_ms=r.number("commit_gather_ms", ge=0, le=50),
        ignored=(STORE_WRITER_IGNORED,) if r.given("writer") else (),
        account_pending_share=r.number("account_pending_share", gt=0, le=1),
        backend=backend,
        dsn=dsn,
        dsn_env=dsn_env,
        pool_size=r.integer("pool_size", lo=1, hi=1000),
        lease_seconds=r.number("lease_seconds", ge=1),
    )


def account_max_pending(account: AccountConfig | None, store: StoreConfig) -> int:
    """How many of an account's messages may wait to be sent: its own max_pending, else its
    share of the global bound (at least 1)."""
    if account is not None and account.max_pending is not None:
        return account.max_pending
    return max(1, int(store.max_pending * store.account_pending_share))


def _store_dsn(r: Reader, environ: Mapping[str, str]) -> tuple[str, str]:
    """(DSN, the variable it came from) from dsn or dsn_env; never echoes the DSN itself."""
    raw, raw_env = r.optional("dsn"), r.optional("dsn_env")
    if raw is not _ABSENT and raw_env is not _ABSENT:
        r.problem("dsn_env", "conflicts with dsn: give one of dsn, dsn_env")
        return "", ""
    env = ""
    if raw_env is not _ABSENT:
        if not isinstance(raw_env, str) or not raw_env or "=" in raw_env or "\0" in raw_env:
            r.problem("dsn_env", f"must be the name of an environment variable, got "
                      f"{_show(raw_env)}")
            return "", ""
        env, raw = raw_env, environ.get(raw_env)
        if raw is None:
            r.problem("dsn_env", f"environment variable {env!r} is not set")
            return "", ""
    if raw is _ABSENT:
        return "", ""
    key, where = ("dsn_env", f"environment variable {env!r}: ") if env else ("dsn", "")
    if not isinstance(raw, str):
        r.problem(key, f"{where}must be a string, got {_kind(raw)}")
    elif not raw.startswith(_DSN_SCHEMES) or "\0" in raw or not raw.isprintable():
        r.problem(key, f"{where}must be a PostgreSQL URL (postgresql://user@host:port/db)")
    else:
        return raw, env
    return "", ""


def _parse_instance(r: Reader) -> InstanceConfig:
    raw = r.optional("name")
    if raw is _ABSENT:
        return InstanceConfig()
    if (not isinstance(raw, str) or not raw or len(raw) > 64 or not raw.isprintable()
            or raw != raw.strip()):
        r.problem("name", f"must be 1 to 64 printable characters, got {_show(raw)}")
        return InstanceConfig()
    return InstanceConfig(name=raw)


def _retries(r: Reader) -> dict[str, Any]:
    """max_attempts, retry_min and retry_max: the same retry keys of [messages] and [callbacks]."""
    max_attempts = r.integer("max_attempts", lo=1)
    retry_min, retry_max = _ordered(r, "retry_min", "retry_max")
    return {"max_attempts": max_attempts, "retry_min": retry_min, "retry_max": retry_max}


def _parse_messages(r: Reader) -> MessagesConfig:
    # Keyword arguments are evaluated in order: problems come out in the order of the keys.
    return MessagesConfig(
        max_segments=r.integer("max_segments", lo=1, hi=255),  # SAR/UDH counts are one octet
        default_validity=r.number("default_validity", gt=0),
        **_retries(r),
        receipt_timeout=r.number("receipt_timeout", gt=0),
        keep_text=r.string("keep_text", choices=KEEP_TEXT_MODES),
        retention_days=r.integer("retention_days", lo=1, hi=36500),
        claim_gather_ms=r.number("claim_gather_ms", ge=0, le=1000),
    )


def _parse_callbacks(r: Reader) -> CallbacksConfig:
    return CallbacksConfig(
        timeout=r.number("timeout", gt=0),
        **_retries(r),
        concurrency=r.integer("concurrency", lo=1),
        per_host_concurrency=r.integer("per_host_concurrency", lo=1),
        per_account_concurrency=r.integer("per_account_concurrency", lo=1),
        allowed_networks=_networks(r, "allowed_networks"),
    )


def _networks(r: Reader, key: str) -> tuple[str, ...]:
    """An array of CIDR ranges ("10.1.0.0/16", "::1/128"; a bare address is one host), kept
    in their normalised form; an empty array is allowed."""
    value, given = r.lookup(key)
    if not given:
        return tuple(value) if isinstance(value, tuple) else ()
    if not isinstance(value, list | tuple):
        r.problem(key, f"must be an array of CIDR ranges, got {_show(value)}")
        return ()
    networks: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            r.problem(key, f"must be a string, got {_show(item)}", at=r.item(key, i))
            continue
        try:
            networks.append(str(ipaddress.ip_network(item)))
        except ValueError as exc:
            r.problem(key, f'must be a CIDR range such as "10.0.0.0/8": {exc}',
                      at=r.item(key, i))
    return tuple(networks)


def _parse_log(r: Reader) -> LogConfig:
    return LogConfig(
        level=r.string("level", choices=LOG_LEVELS),
        format=r.string("format", choices=LOG_FORMATS),
        log_numbers=r.boolean("log_numbers"),
    )


_SHA256_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]{64}")


def _secret(
    r: Reader,
    key: str,
    environ: Mapping[str, str],
    check: Callable[[str], str | None],
) -> tuple[str | None, bytes | None]:
    """A secret given as exactly one of KEY, KEY_sha256 (64 hex digits) or KEY_env (the name of
    an environment variable, read now): (plain text if given as KEY, SHA-256 digest), or
    (None, None) when absent or bad. ``check`` returns a problem with a value, or None.
    Values are never echoed; an environment variable is named, not shown."""
    forms = (key, f"{key}_sha256", f"{key}_env")
    given = [k for k in forms if r.optional(k) is not _ABSENT]
    if not given:
        return None, None
    if len(given) > 1:
        r.problem(given[1], f"conflicts with {given[0]}: give exactly one of {', '.join(forms)}")
        return None, None
    form = given[0]
    if form == key:
        value = r.string(key, secret=True)
        problem = check(value) if r.ok(key) else None
        if problem:
            r.problem(key, problem)
        return (value, digest(value)) if r.ok(key) else (None, None)
    raw = r.optional(form)
    if form.endswith("_sha256"):
        if not isinstance(raw, str) or not _SHA256_HEX_RE.fullmatch(raw):
            got = f"{len(raw)} characters" if isinstance(raw, str) else _kind(raw)
            r.problem(form, f"must be 64 hexadecimal digits (a SHA-256 digest), got {got}")
            return None, None
        return None, bytes.fromhex(raw)
    if not isinstance(raw, str) or not raw or "=" in raw or "\0" in raw:
        r.problem(form, f"must be the name of an environment variable, got {_show(raw)}")
        return None, None
    from_env = environ.get(raw)
    if from_env is None:
        r.problem(form, f"environment variable {raw!r} is not set")
        return None, None
    problem = "is empty" if not from_env else check(from_env)
    if problem:
        r.problem(form, f"environment variable {raw!r}: {problem}")
        return None, None
    return None, digest(from_env)


def _api_key_problem(value: str) -> str | None:
    # Sent as "Authorization: Bearer <key>": whitespace could never match.
    if not value or any(c.isspace() for c in value):
        return "must be non-empty and contain no whitespace"
    return None


def _smpp_password_problem(value: str) -> str | None:
    if not value.isascii():
        return "must contain only ASCII characters (SMPP C-octet string)"
    if len(value) > _SMPP_MAX_PASSWORD:
        return f"must be at most {_SMPP_MAX_PASSWORD} characters (SMPP limit), got {len(value)}"
    return None


def _optional_rate(r: Reader, key: str) -> float | None:
    return r.number(key, gt=0) if r.given(key) else None


def _parse_account(r: Reader, environ: Mapping[str, str]) -> AccountConfig:
    name = r.string("name", nonempty=True)
    api_key, api_key_digest = _secret(r, "api_key", environ, _api_key_problem)
    if api_key_digest is None and r.ok("api_key", "api_key_sha256", "api_key_env"):
        r.problem("api_key", "required key is missing")
    system_id: str | None = None
    password: str | None = None
    password_digest: bytes | None = None
    if r.optional("system_id") is not _ABSENT:
        system_id = r.string("system_id", nonempty=True, smpp_max=_SMPP_MAX_SYSTEM_ID)
        password, password_digest = _secret(r, "password", environ, _smpp_password_problem)
        if password_digest is None and r.ok("password", "password_sha256", "password_env"):
            r.problem("password", "required with system_id (or password_sha256, password_env)")
    else:
        for key in ("password", "password_sha256", "password_env"):
            if r.optional(key) is not _ABSENT:
                r.problem(key, "needs system_id: both are the SMPP bind credentials")
    max_binds = r.integer("max_binds", lo=1, hi=1000)
    max_tps = _optional_rate(r, "max_tps")
    max_http_tps = _optional_rate(r, "max_http_tps")
    registered = _parse_region_lists(r, "registered_senders", '{ KZ = ["ACME"] }', "sender IDs")
    mo_url: str | None = None
    raw_url = r.optional("mo_url")
    if raw_url is not _ABSENT:
        if not isinstance(raw_url, str) or not raw_url.startswith(("http://", "https://")):
            r.problem("mo_url", f"must be an http or https URL, got {_show(raw_url)}")
        else:
            mo_url = raw_url
    block = r.boolean("block_transactional_to_opted_out")
    default_country: str | None = None
    raw_country = r.optional("default_country")
    if raw_country is not _ABSENT:
        if isinstance(raw_country, str) and is_region(raw_country.upper()):
            default_country = raw_country.upper()
        else:
            r.problem("default_country", "must be an ISO 3166 alpha-2 country code with a "
                      f"numbering plan (like 'XK' or 'KZ'), got {_show(raw_country)}")
    default_class, smpp_class, service_types = _parse_account_classes(r)
    cleared = _parse_region_lists(r, "cleared_categories", '{ KZ = ["financial"] }', "names")
    confirm_api_optouts = r.boolean("confirm_api_optouts")
    optout_sender: str | None = None
    if r.optional("optout_sender") is not _ABSENT:
        optout_sender = r.string("optout_sender", nonempty=True)
    elif confirm_api_optouts:
        r.problem("optout_sender", "required with confirm_api_optouts: the confirmation's sender")
    max_pending = r.integer("max_pending", lo=1) if r.optional("max_pending") is not _ABSENT \
        else None
    return AccountConfig(name=name, api_key=api_key or "", api_key_digest=api_key_digest or b"",
                         system_id=system_id, password=password,
                         password_digest=password_digest if system_id is not None else None,
                         max_binds=max_binds, max_tps=max_tps, max_http_tps=max_http_tps,
                         registered_senders=registered, mo_url=mo_url,
                         block_transactional_to_opted_out=block,
                         default_country=default_country,
                         message_id_format=r.string("message_id_format",
                                                    choices=MESSAGE_ID_FORMATS),
                         default_class=default_class, smpp_class=smpp_class,
                         service_types=service_types, cleared_categories=cleared,
                         confirm_api_optouts=confirm_api_optouts, optout_sender=optout_sender,
                         max_pending=max_pending)


def _parse_region_lists(
    r: Reader, key: str, example: str, what: str
) -> dict[str, tuple[str, ...]]:
    """A table of region code -> array of non-empty strings (``what`` they are)."""
    out: dict[str, tuple[str, ...]] = {}
    raw = r.optional(key)
    if raw is _ABSENT:
        return out
    if not isinstance(raw, Mapping):
        r.problem(key, f"must be a table like {example}, got {_show(raw)}")
        return out
    for region, names in raw.items():
        if not (isinstance(region, str) and len(region) == 2 and region.isupper()):
            r.problem(key, f"keys are ISO region codes like 'KZ', got {_show(region)}")
        elif not isinstance(names, list) or not all(isinstance(x, str) and x for x in names):
            r.problem(key, f"{region} must be an array of {what}, got {_show(names)}")
        else:
            out[region] = tuple(names)
    return out


def _parse_account_classes(r: Reader) -> tuple[str, str | None, dict[str, str]]:
    """default_class, smpp_class and the service_types table of one account."""
    default_class = r.string("default_class", choices=MESSAGE_CLASSES)
    smpp_class: str | None = None
    if r.optional("smpp_class") is not _ABSENT:
        smpp_class = r.string("smpp_class", choices=MESSAGE_CLASSES)
    service_types: dict[str, str] = {}
    raw = r.optional("service_types")
    if raw is _ABSENT:
        return default_class, smpp_class, service_types
    if not isinstance(raw, Mapping):
        r.problem("service_types", f'must be a table like {{ MKT = "marketing" }}, got '
                  f"{_show(raw)}")
        return default_class, smpp_class, service_types
    for name, cls in raw.items():
        if not (isinstance(name, str) and 1 <= len(name) <= 5 and name.isascii()
                and name.isprintable()):
            r.problem("service_types", f"keys are SMPP service_type values (1-5 printable ASCII "
                      f"characters), got {_show(name)}")
        elif cls not in MESSAGE_CLASSES:
            r.problem("service_types", f"{name} must be 'transactional' or 'marketing', got "
                      f"{_show(cls)}")
        else:
            service_types[name] = cls
    return default_class, smpp_class, service_types


def _parse_provider(r: Reader) -> ProviderConfig:
    # Read in contract order so problems come out in the order a reader of the file expects.
    name = r.string("name", nonempty=True)
    host = r.string("host", nonempty=True)
    port = r.integer("port", lo=0, hi=65535)
    system_id = r.string("system_id", smpp_max=_SMPP_MAX_SYSTEM_ID)
    password = r.string("password", smpp_max=_SMPP_MAX_PASSWORD, secret=True)
    system_type = r.string("system_type", smpp_max=_SMPP_MAX_SYSTEM_TYPE)
    binds = r.integer("binds", lo=1, hi=64)
    window = r.integer("window", lo=1, hi=1000)
    max_tps = r.number("max_tps", gt=0)
    receipt_id = r.string("receipt_id", choices=RECEIPT_ID_MODES)
    response_timeout = r.number("response_timeout", gt=0)
    enquire_link_interval = r.number("enquire_link_interval", gt=0)
    bind_timeout = r.number("bind_timeout", gt=0)
    reconnect_min, reconnect_max = _ordered(r, "reconnect_min", "reconnect_max")
    breaker_failures = r.integer("breaker_failures", lo=1, hi=10_000)
    breaker_cooldown = r.number("breaker_cooldown", gt=0)
    tls = r.boolean("tls")
    tls_ca = _optional_path(r, "tls_ca")
    tls_verify = r.boolean("tls_verify")
    tls_server_name: str | None = None
    raw_name = r.optional("tls_server_name")
    if raw_name is not _ABSENT:
        if not isinstance(raw_name, str) or not raw_name or not raw_name.isprintable() or any(
                c.isspace() for c in raw_name):
            r.problem("tls_server_name", f"must be a host name, got {_show(raw_name)}")
        else:
            tls_server_name = raw_name
    if not tls:
        for key in ("tls_ca", "tls_verify", "tls_server_name"):
            if r.optional(key) is not _ABSENT and r.ok("tls", key):
                r.problem(key, "only takes effect with tls = true")
    elif tls_ca is not None and r.ok("tls_verify") and not tls_verify:
        r.problem("tls_ca", "has no effect with tls_verify = false (nothing is verified)")
    elif tls_ca is not None:
        try:
            check_ca(tls_ca)
        except TlsFileError as exc:
            r.problem("tls_ca", str(exc))
    return ProviderConfig(
        name=name,
        host=host,
        port=port,
        system_id=system_id,
        password=password,
        system_type=system_type,
        binds=binds,
        window=window,
        max_tps=max_tps,
        receipt_id=receipt_id,
        response_timeout=response_timeout,
        enquire_link_interval=enquire_link_interval,
        bind_timeout=bind_timeout,
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        breaker_failures=breaker_failures,
        breaker_cooldown=breaker_cooldown,
        tls=tls,
        tls_ca=tls_ca,
        tls_verify=tls_verify,
        tls_server_name=tls_server_name,
        query_after=r.number("query_after", ge=0),
    )


def _valid_prefix(prefix: str) -> bool:
    return prefix == "*" or _PREFIX_RE.fullmatch(prefix) is not None


def _parse_route(r: Reader) -> RouteConfig:
    prefixes = r.string_list("prefixes", nonempty=True)
    for i, prefix in enumerate(prefixes):
        if not _valid_prefix(prefix):
            r.problem(
                "prefixes",
                f'must be "*" or "+" followed by 1-15 digits, got {_show(prefix)}',
                at=r.item("prefixes", i),
            )
    providers = r.string_list("providers", nonempty=True)
    message_class: str | None = None
    raw_class = r.optional("class")
    if raw_class is not _ABSENT:
        if raw_class not in MESSAGE_CLASSES:
            options = ", ".join(repr(c) for c in MESSAGE_CLASSES)
            r.problem("class", f"must be one of {options}, got {_show(raw_class)}")
        else:
            message_class = str(raw_class)
    strategy = r.string("strategy", choices=ROUTE_STRATEGIES)
    weights: tuple[int, ...] = ()
    raw_weights = r.optional("weights")
    if raw_weights is not _ABSENT:
        if not isinstance(raw_weights, list) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in raw_weights
        ):
            r.problem("weights", f"must be an array of integers >= 0, got {_show(raw_weights)}")
        elif len(raw_weights) != len(providers):
            r.problem("weights", f"needs one weight per provider ({len(providers)}), "
                                 f"got {len(raw_weights)}")
        elif not any(raw_weights):
            r.problem("weights", "at least one weight must be above 0")
        else:
            weights = tuple(raw_weights)
    if strategy == "weighted" and not weights and r.ok("weights", "strategy"):
        r.problem("weights", 'strategy "weighted" needs weights, one per provider')
    return RouteConfig(prefixes=prefixes, providers=providers, message_class=message_class,
                       strategy=strategy, weights=weights, max_tps=_optional_rate(r, "max_tps"))


# --------------------------------------------------------------------------- cross checks


def _check_unique(
    items: Sequence[tuple[Any, Reader]], key: str, what: str, *, secret: bool = False
) -> None:
    first: dict[str, str] = {}  # value -> where it was first defined
    for item, r in items:
        value = getattr(item, key)
        if not r.ok(key) or not value:
            continue
        if value in first:
            shown = f"same {what} as" if secret else f"duplicate {what} {value!r}, also in"
            r.problem(key, f"{shown} {first[value]}")
        else:
            first[value] = r.path


def _check_unique_keys(accounts: Sequence[tuple[AccountConfig, Reader]]) -> None:
    """Two accounts with one API key (in whichever form given): reported, never shown."""
    first: dict[bytes, str] = {}  # digest -> the account that has it
    for account, r in accounts:
        if not account.api_key_digest:
            continue  # missing or already reported
        key = next((k for k in ("api_key", "api_key_sha256", "api_key_env")
                    if r.optional(k) is not _ABSENT), "api_key")
        if account.api_key_digest in first:
            r.problem(key, f"same api_key as {first[account.api_key_digest]}")
        else:
            first[account.api_key_digest] = r.path


def _check_routes(
    routes: Sequence[tuple[RouteConfig, Reader]],
    providers: Sequence[tuple[ProviderConfig, Reader]],
) -> None:
    # A provider with a broken name would make every reference to it look unknown: skip then.
    names_known = bool(providers) and all(r.ok("name") for _, r in providers)
    names = {p.name for p, _ in providers}
    routed: dict[tuple[str, str | None], str] = {}  # (prefix, class) -> route that claims it
    for route, r in routes:
        for i, prefix in enumerate(route.prefixes):
            if not _valid_prefix(prefix):
                continue  # already reported by _parse_route()
            # Two routes for one prefix and class leave the choice to list order: refuse that.
            key = (prefix, route.message_class)
            if key in routed:
                owner = routed[key]
                message = (
                    f"prefix {prefix!r} listed twice"
                    if owner == r.path
                    else f"prefix {prefix!r} is already routed by {owner}"
                )
                r.problem("prefixes", message, at=r.item("prefixes", i))
            else:
                routed[key] = r.path
        if not r.ok("providers"):
            continue
        seen: set[str] = set()
        for i, name in enumerate(route.providers):
            if name in seen:
                r.problem("providers", f"provider {name!r} listed twice", at=r.item("providers", i))
            elif names_known and name not in names:
                hint = difflib.get_close_matches(name, sorted(names), n=1)
                message = f"no [[providers]] entry named {name!r}"
                if hint:
                    message += f"; did you mean {hint[0]!r}?"
                r.problem("providers", message, at=r.item("providers", i))
            seen.add(name)


# --------------------------------------------------------------------------- entry points


def parse_config(
    data: Mapping[str, Any], source: str, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a decoded TOML document; raises ConfigError listing every problem.

    ``environ`` (default: os.environ) is where ``*_env`` account secrets are read from. TLS
    files ([http] tls_cert / tls_key, [[providers]] tls_ca) are loaded here to check them."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    problems: list[str] = []
    top = Reader(data, "", source, problems, noun="section")
    http = top.section("http", HttpConfig, _parse_http)
    store = top.section("store", StoreConfig, lambda r: _parse_store(r, env))
    instance = top.section("instance", InstanceConfig, _parse_instance)
    messages = top.section("messages", MessagesConfig, _parse_messages)
    callbacks = top.section("callbacks", CallbacksConfig, _parse_callbacks)
    log = top.section("log", LogConfig, _parse_log)
    smpp = top.section("smpp", SmppConfig, _parse_smpp) if "smpp" in data else None
    metrics = (
        top.section("metrics", MetricsConfig, _parse_metrics) if "metrics" in data else None
    )
    policy = top.section("policy", PolicyConfig, _parse_policy)
    accounts = list(_array(top, "accounts", AccountConfig, lambda r: _parse_account(r, env)))
    providers = list(_array(top, "providers", ProviderConfig, _parse_provider))
    routes = list(_array(top, "routes", RouteConfig, _parse_route))
    top.finish()

    _check_unique(accounts, "name", "account name")
    _check_unique_keys(accounts)
    _check_unique(accounts, "system_id", "system_id")
    _check_unique(providers, "name", "provider name")
    _check_routes(routes, providers)

    if problems:
        raise ConfigError(problems)
    return Config(
        http=http,
        store=store,
        messages=messages,
        callbacks=callbacks,
        log=log,
        smpp=smpp,
        metrics=metrics,
        policy=policy,
        accounts=tuple(a for a, _ in accounts),
        providers=tuple(p for p, _ in providers),
        routes=tuple(r for r, _ in routes),
        source=source,
        instance=instance,
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; every failure is a ConfigError naming the file."""
    try:
        data = read_toml(path)
    except TomlFileError as exc:
        raise ConfigError([str(exc)]) from None
    return parse_config(data, str(path))


def default_config_text() -> str:
    """The packaged aggregator/default.toml."""
    return resources.files("aggregator").joinpath("default.toml").read_text(encoding="utf-8")


def load_default_config() -> Config:
    try:
        data = decode_toml(default_config_text(), DEFAULT_SOURCE)
    except TomlFileError as exc:  # pragma: no cover - the packaged file is tested
        raise ConfigError([str(exc)]) from None
    return parse_config(data, DEFAULT_SOURCE)


def load_config_or_default(path: str | None) -> Config:
    """The file at ``path``, or the embedded default configuration for None."""
    return load_config(path) if path else load_default_config()


def with_overrides(config: Config, **changes: Any) -> Config:
    """dataclasses.replace for Config; a Mapping for a section field updates just those keys.

    ``with_overrides(cfg, store={"path": tmp}, http={"listen": ListenAddress("127.0.0.1", 0)})``
    Not re-validated: meant for tests and programmatic tweaks of an already valid Config.
    """
    resolved: dict[str, Any] = {}
    for name, value in changes.items():
        current = getattr(config, name, None)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            if isinstance(current, type):  # pragma: no cover - fields hold instances
                raise TypeError(name)
            value = dataclasses.replace(current, **value)
        resolved[name] = value
    return dataclasses.replace(config, **resolved)
