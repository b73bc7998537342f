import math
import random

import pytest

from agentmill.domain.backoff import backoff_delay


def test_the_delay_grows_by_the_multiplier_from_the_base() -> None:
    assert [backoff_delay(n, base=0.5) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff_delay(n, base=1.0, multiplier=3.0) for n in (1, 2, 3)] == [1.0, 3.0, 9.0]


def test_the_cap_bounds_it() -> None:
    assert [backoff_delay(n, base=0.1, cap=0.5) for n in (1, 3, 4, 10)] == [0.1, 0.4, 0.5, 0.5]


def test_a_loop_failing_for_ever_does_not_overflow() -> None:
    assert backoff_delay(100_000, base=0.1, cap=5.0) == 5.0
    assert backoff_delay(5_000, base=0.1, multiplier=2, cap=5.0) == 5.0  # int power, huge
    assert backoff_delay(100_000, base=0.1) == math.inf  # no cap: the caller's concern


def test_jitter_stays_between_half_and_all_of_the_backoff() -> None:
    rng = random.Random(18)
    delays = [backoff_delay(3, base=1.0, jitter=True, rng=rng) for _ in range(500)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 400  # they really are spread, not all the same
    assert min(delays) < 2.2
    assert max(delays) > 3.8


def test_jitter_applies_after_the_cap() -> None:
    rng = random.Random(7)
    assert all(
        2.5 <= backoff_delay(50, base=1.0, cap=5.0, jitter=True, rng=rng) <= 5.0 for _ in range(100)
    )


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt counts from 1, got 0"):
        backoff_delay(0, base=1.0)
