"""Micro-benchmark of destination parsing on the accept path (numbers.parse_normalised, without
its cache: a load to random numbers misses it), against phonenumbers' own parse and
number_type, which it did before.

    PYTHONPATH=$PWD python -m tests.bench_numbers [--numbers N] [--rounds R]

Prints CPU microseconds per number (best of R rounds) for random mobile numbers of a few
countries (Kosovo: the simulator's default; Kazakhstan shares +7 with Russia; the US shares +1
with 24 other regions)."""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections.abc import Callable

import phonenumbers

from aggregator.numbers import parse_normalised

PREFIXES = {"XK +38344": ("+38344", 6), "KZ +7701": ("+7701", 7), "US +1415": ("+1415", 7),
            "DE +49151": ("+49151", 8)}


def _library(norm: str) -> object:
    """The calls parse_normalised made before: parse, region, number_type, E.164."""
    num = phonenumbers.parse(norm, None)
    phonenumbers.region_code_for_number(num)
    phonenumbers.number_type(num)
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def _best(numbers: list[str], one: Callable[[str], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for n in numbers:
            with contextlib.suppress(ValueError, phonenumbers.NumberParseException):
                one(n)  # some random numbers are invalid: their refusal costs too
        best = min(best, (time.process_time() - start) * 1e6 / len(numbers))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    ours = parse_normalised.__wrapped__
    print(f"{'numbers':<12} {'parse_normalised µs':>20} {'phonenumbers µs':>16}")
    for name, (prefix, digits) in PREFIXES.items():
        numbers = [f"{prefix}{rng.randrange(10 ** (digits - 1), 10 ** digits)}"
                   for _ in range(args.numbers)]
        print(f"{name:<12} {_best(numbers, ours, args.rounds):>20.1f} "
              f"{_best(numbers, _library, args.rounds):>16.1f}")


if __name__ == "__main__":
    main()
