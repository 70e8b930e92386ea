"""RateMeter: the sliding-window rate, and one array only while the window holds samples."""

from __future__ import annotations

import random

from swarmhub.engine.peerstate import RateMeter


def test_a_meter_that_never_sees_data_holds_no_arrays() -> None:
    meter = RateMeter()
    assert meter.rate(10.0) == 0.0
    assert meter._buckets is None


def test_the_rate_is_the_bytes_in_the_window() -> None:
    meter = RateMeter(window=5.0)
    meter.add(1000, 0.0)
    assert meter.rate(0.5) == 1000.0  # one bucket: per second, not per bucket
    meter.add(1000, 0.05)  # the same 0.1 s bucket
    meter.add(2000, 2.0)
    assert meter.rate(2.0) == 4000 / 2.0
    assert meter.rate(6.0) == 2000.0  # the first bucket left the window
    assert meter.total == 4000


def test_an_emptied_window_frees_the_arrays_and_the_meter_starts_over() -> None:
    meter = RateMeter(window=5.0)
    meter.add(500, 1.0)
    meter.add(500, 2.0)
    assert meter.rate(20.0) == 0.0
    assert meter._buckets is None
    meter.add(300, 21.0)
    assert meter.rate(21.5) == 300.0
    assert meter.total == 1300


class _TwoLists:
    """The meter as specified: (start, bytes) buckets of 0.1 s in plain lists, the
    buckets older than the window dropped, the rate over max(1 s, span) up to the window."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.starts: list[float] = []
        self.counts: list[int] = []

    def add(self, n: int, now: float) -> None:
        if self.starts and now - self.starts[-1] < 0.1:
            self.counts[-1] += n
        else:
            self.starts.append(now)
            self.counts.append(n)

    def rate(self, now: float) -> float:
        while self.starts and now - self.starts[0] > self.window:
            del self.starts[0], self.counts[0]
        if not self.starts:
            return 0.0
        span = max(1.0, now - self.starts[0]) if len(self.starts) > 1 else 1.0
        return sum(self.counts) / min(span, self.window)


def test_the_rate_equals_the_plain_list_meter_on_a_random_stream() -> None:
    rng = random.Random(7)
    meter, ref = RateMeter(window=5.0), _TwoLists(5.0)
    now = 0.0
    for _ in range(5000):
        now += rng.choice((0.001, 0.03, 0.1, 0.35, 2.0, 7.0))
        if rng.random() < 0.7:
            n = rng.choice((16384, 16384 * 4, 1, 1 << 40))
            meter.add(n, now)
            ref.add(n, now)
        else:
            assert meter.rate(now) == ref.rate(now)


def test_a_busy_meter_holds_one_array_of_interleaved_buckets() -> None:
    meter = RateMeter(window=5.0)
    for i in range(10):
        meter.add(100 + i, i * 0.2)
    assert meter.rate(1.9) == sum(100 + i for i in range(10)) / 1.9
    buckets = meter._buckets
    assert buckets is not None and len(buckets) == 2 * 10  # start, bytes per bucket
    assert buckets[1] == 100.0 and buckets[0] == 0.0
