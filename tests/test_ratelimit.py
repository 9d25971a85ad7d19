"""TokenBucket with an injected clock: burst, wait time, AIMD on throttling."""

from __future__ import annotations

import itertools

import pytest

from aggregator.outbound.ratelimit import TokenBucket


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def take_all(bucket: TokenBucket) -> int:
    """Take tokens until the bucket says wait; how many were there."""
    n = 0
    while bucket.try_take() == 0.0:
        n += 1
        assert n < 10_000
    return n


def test_burst_then_wait_time(clock: FakeClock) -> None:
    bucket = TokenBucket(8.0, burst=4.0, clock=clock)

    assert [bucket.try_take() for _ in range(4)] == [0.0] * 4
    assert bucket.try_take() == pytest.approx(1 / 8)

    clock.advance(1 / 16)  # half a token
    assert bucket.try_take() == pytest.approx(1 / 16)

    clock.advance(1 / 16)
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(1 / 8)


def test_refill_is_capped_at_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(8.0, burst=4.0, clock=clock)
    take_all(bucket)

    clock.advance(3600)

    assert take_all(bucket) == 4


@pytest.mark.parametrize(("rate", "burst"), [(100.0, 10), (5.0, 1), (1000.0, 100)])
def test_default_burst_is_a_tenth_of_a_second(
    clock: FakeClock, rate: float, burst: int
) -> None:
    bucket = TokenBucket(rate, clock=clock)

    assert take_all(bucket) == burst


def test_slow_down_halves_the_rate_down_to_one(clock: FakeClock) -> None:
    bucket = TokenBucket(10.0, clock=clock)
    rates = []
    for _ in range(5):
        bucket.slow_down()
        rates.append(bucket.rate)

    assert rates == [5.0, 2.5, 1.25, 1.0, 1.0]
    assert bucket.max_rate == 10.0


def test_slow_down_empties_the_bucket(clock: FakeClock) -> None:
    bucket = TokenBucket(16.0, burst=4.0, clock=clock)

    bucket.slow_down()

    assert bucket.rate == 8.0
    assert bucket.try_take() == pytest.approx(1 / 8)
    clock.advance(1 / 8)
    assert bucket.try_take() == 0.0


def test_recover_climbs_back_to_max_rate_and_not_beyond(clock: FakeClock) -> None:
    bucket = TokenBucket(7.5, clock=clock)
    bucket.slow_down()
    bucket.slow_down()
    assert bucket.rate == 1.875

    rates = [bucket.rate]
    for _ in range(200):  # +1% of max_rate per success
        bucket.recover()
        rates.append(bucket.rate)

    assert all(b > a for a, b in itertools.pairwise(rates) if a < 7.5)
    assert rates[-1] == 7.5
    assert max(rates) == 7.5


def test_recover_at_max_rate_changes_nothing(clock: FakeClock) -> None:
    bucket = TokenBucket(1000.0, clock=clock)

    bucket.recover()

    assert bucket.rate == 1000.0


def test_recover_steps_for_a_high_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(1000.0, clock=clock)
    bucket.slow_down()
    assert bucket.rate == 500.0

    steps = 0
    while bucket.rate < 1000.0:
        before = bucket.rate
        bucket.recover()
        assert bucket.rate > before
        steps += 1
        assert steps < 1000

    assert bucket.rate == 1000.0
    assert steps > 1  # creeps back, not in one jump


def test_slow_down_never_raises_the_rate_above_max(clock: FakeClock) -> None:
    bucket = TokenBucket(0.5, clock=clock)

    bucket.slow_down()

    assert bucket.rate <= bucket.max_rate
