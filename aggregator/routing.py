"""The route table: destination E.164 prefix to an ordered list of providers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Route:
    prefixes: tuple[str, ...]
    providers: tuple[str, ...]


class RouteTable:
    """Longest-prefix match over E.164 numbers; "*" matches everything."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._by_prefix: dict[str, Route] = {}
        for route in routes:
            for prefix in route.prefixes:
                # The first route naming a prefix wins, as in the file's order.
                self._by_prefix.setdefault(prefix, route)
        self._lengths = sorted({len(p) for p in self._by_prefix if p != "*"}, reverse=True)
        self._default = self._by_prefix.get("*")

    def lookup(self, e164: str) -> Route | None:
        for n in self._lengths:
            route = self._by_prefix.get(e164[:n])
            if route is not None:
                return route
        return self._default

    def providers_for(self, e164: str) -> tuple[str, ...]:
        route = self.lookup(e164)
        return route.providers if route is not None else ()
