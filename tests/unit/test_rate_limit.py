"""gateway/auth.py's token buckets, on a clock the test moves: an image costs a token, a key's bucket refills
at `rate` per second up to `burst`, a request takes all its tokens or none, and a refusal says how long to
wait. Over HTTP (429 with Retry-After and RateLimit headers): test_app.py."""

from __future__ import annotations

import pytest

from gateway.auth import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_new_key_starts_with_a_full_bucket_and_empties_it(clock: Clock) -> None:
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("k") for _ in range(3)] == [(True, 2, 0.0), (True, 1, 0.0), (True, 0, 0.0)]
    allowed, remaining, wait = limiter.take("k")
    assert (allowed, remaining) == (False, 0)
    assert wait == pytest.approx(0.5)  # one token at 2 per second


def test_the_bucket_refills_at_the_rate_and_never_beyond_the_burst(clock: Clock) -> None:
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert limiter.take("k", 3)[0]
    clock.now += 1.0  # two tokens
    assert limiter.take("k", 3) == (False, 2, pytest.approx(0.5))
    assert limiter.take("k", 2) == (True, 0, 0.0)
    clock.now += 3600.0
    assert limiter.take("k", 0) == (True, 3, 0.0)  # full again, not 7200 tokens


def test_a_request_takes_all_its_tokens_or_none(clock: Clock) -> None:
    limiter = RateLimiter(rate=1.0, burst=4, clock=clock)
    assert limiter.take("k", 3)[0]
    assert limiter.take("k", 2) == (False, 1, pytest.approx(1.0))  # one short: a second's wait
    assert limiter.take("k", 1) == (True, 0, 0.0)  # the refusal took nothing


def test_keys_do_not_share_a_bucket(clock: Clock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.take("a")[0] and not limiter.take("a")[0]
    assert limiter.take("b")[0]


def test_time_standing_still_refills_nothing(clock: Clock) -> None:
    limiter = RateLimiter(rate=1000.0, burst=1, clock=clock)
    assert limiter.take("k")[0]
    assert not limiter.take("k")[0]
    clock.now += 0.002
    assert limiter.take("k")[0]
