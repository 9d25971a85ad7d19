"""The route table: destination (longest E.164 prefix) and message class to providers, with the
order to try them in (failover) or the share each gets (weighted)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.config import RouteConfig


@dataclass(slots=True, eq=False)
class Route:
    prefixes: tuple[str, ...]
    providers: tuple[str, ...]
    message_class: str | None = None  # None: any class
    strategy: str = "failover"
    weights: tuple[int, ...] = ()
    max_tps: float | None = None
    # Smooth weighted round robin state (nginx): exact shares, no randomness.
    _current: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def from_config(cls, r: RouteConfig) -> Route:
        return cls(r.prefixes, r.providers, r.message_class, r.strategy, r.weights, r.max_tps)

    @property
    def key(self) -> tuple[object, ...]:
        """What the configuration says about this route (not its rotation state)."""
        return (self.prefixes, self.providers, self.message_class, self.strategy, self.weights,
                self.max_tps)

    @property
    def name(self) -> str:
        """A bounded label for metrics: the first prefix and the class."""
        return f"{self.prefixes[0]}/{self.message_class or 'any'}"

    def order(self) -> list[str]:
        """Providers in the order to try them for the next message."""
        if self.strategy != "weighted" or not self.weights:
            return list(self.providers)
        if not self._current:
            self._current = [0] * len(self.providers)
        total = sum(self.weights)
        for i, w in enumerate(self.weights):
            self._current[i] += w
        best = max(range(len(self.providers)), key=lambda i: self._current[i])
        self._current[best] -= total
        # The chosen one first; the others as fallbacks, heavier first, zero weights last.
        rest = sorted((i for i in range(len(self.providers)) if i != best),
                      key=lambda i: -self.weights[i])
        return [self.providers[best]] + [self.providers[i] for i in rest]


class RouteTable:
    """Longest prefix wins; at one prefix a route for the message's class beats a route for
    any class; "*" matches every number."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._build(routes)

    def replace(self, routes: Iterable[Route]) -> None:
        """Take a reloaded set of routes in place (everyone holding this table sees them). A
        route the same as a current one stays that object: its weighted rotation carries on."""
        current = {r.key: r for r in self.routes}
        self._build([current.get(r.key, r) for r in routes])

    def _build(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        self._by_key: dict[tuple[str, str | None], Route] = {}
        for route in self.routes:
            for prefix in route.prefixes:
                # The first route naming a prefix and class wins, as in the file's order.
                self._by_key.setdefault((prefix, route.message_class), route)
        self._lengths = sorted({len(p) for p, _ in self._by_key if p != "*"}, reverse=True)

    def _at(self, prefix: str, message_class: str) -> Route | None:
        return self._by_key.get((prefix, message_class)) or self._by_key.get((prefix, None))

    def lookup(self, e164: str, message_class: str = "transactional") -> Route | None:
        for n in self._lengths:
            route = self._at(e164[:n], message_class)
            if route is not None:
                return route
        return self._at("*", message_class)

    def providers_for(self, e164: str, message_class: str = "transactional") -> tuple[str, ...]:
        route = self.lookup(e164, message_class)
        return route.providers if route is not None else ()
