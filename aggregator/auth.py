"""Who is calling: API keys and SMPP passwords checked against SHA-256 digests in constant time,
failed logins limited per source address, and a per-account request rate.

Secrets live in memory only as digests (see ``AccountConfig``); nothing here logs or labels a
key, a password or a digest.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from aggregator.config import AccountConfig
from aggregator.credentials import DIGEST_SIZE, digest
from aggregator.ratelimit import TokenBucket
from aggregator.smpp.status import CommandStatus

__all__ = [
    "Authenticator",
    "FailedLogins",
    "RateLimit",
    "digest",
    "retry_after",
]

_NO_MATCH: Final = bytes(DIGEST_SIZE)  # compared against when there is nothing to compare


def retry_after(seconds: float) -> int:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


class Authenticator:
    """API key and SMPP bind checks over the accounts' digests."""

    __slots__ = ("_by_system_id", "_keys")

    def __init__(self, accounts: Iterable[AccountConfig]) -> None:
        accounts = tuple(accounts)
        self._keys: tuple[tuple[bytes, str], ...] = tuple(
            (a.api_key_digest, a.name) for a in accounts if a.api_key_digest
        )
        self._by_system_id: dict[str, AccountConfig] = {
            a.system_id: a for a in accounts if a.system_id
        }

    def account_for_key(self, key: str) -> str | None:
        """The account whose API key this is, or None.

        Every account's digest is compared (no early exit), each with hmac.compare_digest, so
        the time taken depends on neither which account matched nor how much of a digest did.
        """
        presented = digest(key)
        found: str | None = None
        for known, name in self._keys:
            if hmac.compare_digest(presented, known) and found is None:
                found = name
        return found

    def check_bind(
        self, system_id: str, password: str
    ) -> tuple[AccountConfig | None, CommandStatus]:
        """(account, ESME_ROK) for good credentials, else (None, ESME_RINVSYSID/RINVPASWD)."""
        account = self._by_system_id.get(system_id)
        presented = digest(password)
        if account is None:
            # Same work as a known system_id, so timing does not tell which ids exist.
            hmac.compare_digest(presented, _NO_MATCH)
            return None, CommandStatus.ESME_RINVSYSID
        wanted = account.password_digest if account.password_digest is not None else _NO_MATCH
        if not hmac.compare_digest(presented, wanted) or account.password_digest is None:
            return None, CommandStatus.ESME_RINVPASWD
        return account, CommandStatus.ESME_ROK


@dataclass(slots=True)
class _Address:
    failures: deque[float]
    blocked_until: float = field(default=float("-inf"))


class FailedLogins:
    """Per source address: after ``limit`` failed logins within ``window`` seconds, every
    further attempt from that address is refused for ``cooldown`` seconds without looking at
    the credentials. A success changes nothing (it neither resets the count nor unblocks).

    At most ``max_addresses`` addresses are tracked; the least recently failed is dropped first.
    """

    __slots__ = ("_addresses", "_clock", "cooldown", "limit", "max_addresses", "window")

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        cooldown: float = 60.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or cooldown <= 0 or max_addresses < 1:
            raise ValueError("limit, window, cooldown and max_addresses must be positive")
        self.limit = limit
        self.window = window
        self.cooldown = cooldown
        self.max_addresses = max_addresses
        self._clock = clock
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def __len__(self) -> int:
        return len(self._addresses)

    def blocked_for(self, address: str) -> float:
        """Seconds this address must still wait; 0.0 when it may try."""
        entry = self._addresses.get(address)
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - self._clock())

    def failed(self, address: str) -> bool:
        """Record a failed login; True when this failure starts a cool-down."""
        now = self._clock()
        entry = self._addresses.get(address)
        if entry is None:
            entry = _Address(deque(maxlen=self.limit))
            self._addresses[address] = entry
            while len(self._addresses) > self.max_addresses:
                self._addresses.popitem(last=False)
        else:
            self._addresses.move_to_end(address)
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()
        entry.failures.append(now)
        if len(entry.failures) >= self.limit and entry.blocked_until <= now:
            entry.blocked_until = now + self.cooldown
            entry.failures.clear()
            return True
        return False


class RateLimit(TokenBucket):
    """An account's request rate (a batch of n messages costs n): a token bucket holding one
    second's worth, on the monotonic clock (no event loop needed to build one)."""

    def __init__(self, rate: float, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        super().__init__(rate, burst=burst if burst is not None else max(1.0, rate),
                         clock=clock)
