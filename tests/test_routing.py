"""RouteTable: longest E.164 prefix wins, "*" is the fallback, the first route for a prefix wins."""

from __future__ import annotations

import pytest

from aggregator.routing import Route, RouteTable

DEFAULT = Route(("*",), ("global",))
BALKANS = Route(("+38",), ("balkan-a", "balkan-b"))
KOSOVO = Route(("+383",), ("ipko", "vala"))


@pytest.mark.parametrize(
    "routes",
    [
        [DEFAULT, BALKANS, KOSOVO],
        [KOSOVO, BALKANS, DEFAULT],  # the file's order does not matter across lengths
    ],
)
@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+38344123456", KOSOVO),  # "+383" beats "+38" and "*"
        ("+381641234567", BALKANS),  # "+38" beats "*"
        ("+447911123456", DEFAULT),  # only "*" matches
    ],
)
def test_longest_prefix_wins(routes: list[Route], number: str, expected: Route) -> None:
    table = RouteTable(routes)

    assert table.lookup(number) is expected
    assert table.providers_for(number) == expected.providers


def test_providers_keep_their_order() -> None:
    table = RouteTable([KOSOVO])

    assert table.providers_for("+38344123456") == ("ipko", "vala")


def test_route_with_several_prefixes() -> None:
    uk_ie = Route(("+44", "+353"), ("islands",))
    table = RouteTable([uk_ie, DEFAULT])

    assert table.lookup("+447911123456") is uk_ie
    assert table.lookup("+353861234567") is uk_ie
    assert table.lookup("+33612345678") is DEFAULT


def test_no_default_route_means_no_providers() -> None:
    table = RouteTable([KOSOVO, BALKANS])

    assert table.lookup("+447911123456") is None
    assert table.providers_for("+447911123456") == ()
    assert table.providers_for("+38344123456") == ("ipko", "vala")


def test_empty_table_routes_nothing() -> None:
    assert RouteTable([]).providers_for("+38344123456") == ()


def test_first_route_wins_for_a_duplicate_prefix() -> None:
    first = Route(("+44",), ("first",))
    second = Route(("+44", "+33"), ("second",))
    other_default = Route(("*",), ("later-default",))
    table = RouteTable([first, DEFAULT, second, other_default])

    assert table.providers_for("+447911123456") == ("first",)
    assert table.providers_for("+33612345678") == ("second",)  # its other prefix still counts
    assert table.providers_for("+15551234567") == ("global",)  # the first "*" too
