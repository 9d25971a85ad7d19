"""Where callbacks may go, and how their URLs appear in logs.

A callback_url is a client's instruction to make smsagg send a request: by default it may only
reach globally routable addresses (no loopback, link-local, private, multicast, reserved or
unspecified ones, IPv4 or IPv6, IPv4-mapped included); `[callbacks] allowed_networks` opens
chosen ranges. Literal addresses are refused at submit; names are checked after resolution,
for every address they resolve to, by the resolver the sender connects with (so the address
checked is the address used)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not caught by `is_global` alone, or worth naming: shared address space (carrier NAT) and
# "this network".
_EXTRA_FORBIDDEN: tuple[IpNetwork, ...] = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("0.0.0.0/8"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class ForbiddenAddress(OSError):
    """A callback host is, or resolves to, an address the configuration does not allow."""


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def literal_address(host: str) -> IpAddress | None:
    """The address a URL host names literally ("127.0.0.1", "::1", "[::1]"), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class CallbackPolicy:
    def __init__(self, allowed_networks: Sequence[str] = ()) -> None:
        self.allowed = tuple(ipaddress.ip_network(n) for n in allowed_networks)

    def _is_allowed(self, addr: IpAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in self.allowed)

    def forbidden(self, addr: IpAddress) -> bool:
        """True for an address callbacks may not reach under this configuration."""
        inner = _embedded_v4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
        if self._is_allowed(addr) or (inner is not None and self._is_allowed(inner)):
            return False
        target = addr if inner is None else inner  # what a connection to it reaches
        return (not target.is_global or target.is_multicast or target.is_reserved
                or target.is_unspecified
                or any(target.version == n.version and target in n for n in _EXTRA_FORBIDDEN))

    def literal_forbidden(self, url: str) -> bool:
        """True when the URL's host is a literal address callbacks may not reach (names are
        checked when the callback is sent)."""
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return False
        if host is None:
            return False
        addr = literal_address(host)
        if addr is None:
            addr = _legacy_ipv4(host)
        return addr is not None and self.forbidden(addr)


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """"2130706433", "127.1", "0x7f.1": forms inet_aton reads as an IPv4 address."""
    if not host or not all(c.isalnum() or c == "." for c in host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses the name when any of its addresses is forbidden."""

    def __init__(self, policy: CallbackPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            addr = literal_address(result["host"])
            if addr is None or self._policy.forbidden(addr):
                raise ForbiddenAddress(f"{host} resolves to a forbidden address ({addr})")
        return results

    async def close(self) -> None:
        await self._inner.close()


def mask_url(url: str) -> str:
    """A URL for logs and errors: credentials and the query string (and fragment) hidden,
    "https://***@hooks.example.com/sms?***"."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = ("***@" if "@" in parts.netloc else "") + host + (f":{port}" if port else "")
    query = "?***" if parts.query else ""
    fragment = "#***" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def scrub(text: str, url: str) -> str:
    """An error text with the raw URL (and its secrets) replaced by its masked form."""
    masked = mask_url(url)
    text = text.replace(url, masked)
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    for secret in (parts.username, parts.password, parts.query, parts.fragment):
        if secret:
            text = text.replace(secret, "***")
    return text
