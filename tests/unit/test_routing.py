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


def test_class_specific_route_beats_any_class_at_the_same_prefix() -> None:
    table = RouteTable([
        Route(("+383",), ("A",)),
        Route(("+383",), ("M",), message_class="marketing"),
        Route(("*",), ("Z",)),
    ])
    assert table.providers_for("+38344123456", "transactional") == ("A",)
    assert table.providers_for("+38344123456", "marketing") == ("M",)
    assert table.providers_for("+77011234567", "marketing") == ("Z",)


def test_longer_prefix_wins_over_class_at_a_shorter_one() -> None:
    table = RouteTable([
        Route(("+3834",), ("A",)),
        Route(("+383",), ("M",), message_class="marketing"),
    ])
    assert table.providers_for("+38344123456", "marketing") == ("A",)


def test_marketing_only_route_gives_no_route_for_transactional() -> None:
    table = RouteTable([Route(("+383",), ("M",), message_class="marketing")])
    assert table.providers_for("+38344123456", "transactional") == ()


def test_weighted_order_is_exact_and_keeps_fallbacks() -> None:
    route = Route(("*",), ("A", "B"), strategy="weighted", weights=(3, 1))
    orders = [route.order() for _ in range(1000)]
    firsts = [o[0] for o in orders]
    assert firsts.count("A") == 750 and firsts.count("B") == 250
    assert all(sorted(o) == ["A", "B"] for o in orders)  # the other one stays as fallback


def test_failover_order_is_the_configured_order() -> None:
    route = Route(("*",), ("A", "B", "C"))
    assert route.order() == ["A", "B", "C"]
    assert route.name == "*/any"
