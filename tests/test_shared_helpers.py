"""Helpers the daemon and the simulator share (one copy each): the token bucket's run-time
rate change, SMPP receipt PDUs and dates, and the simulator's view of received octets."""

from __future__ import annotations

from aggregator.ratelimit import TokenBucket


def test_set_rate_refills_at_the_old_rate_up_to_the_new_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, burst=10.0, clock=lambda: now[0])
    assert all(bucket.try_take() == 0.0 for _ in range(10))
    assert bucket.try_take() > 0  # empty
    now[0] = 0.5  # five tokens at the old rate of 10/s...
    bucket.set_rate(2.0, burst=2.0)
    assert (bucket.rate, bucket.max_rate, bucket.burst) == (2.0, 2.0, 2.0)
    assert bucket.try_take() == 0.0 and bucket.try_take() == 0.0
    assert bucket.try_take() == 0.5  # ...capped at the new burst of 2; one more in 1/2 s
