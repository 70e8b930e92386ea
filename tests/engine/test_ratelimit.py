"""TokenBucket and RateLimiter on hand-stepped clocks: no test here reads the wall clock."""

from __future__ import annotations

import asyncio

import pytest

from swarmhub.engine.ratelimit import RateLimiter, TokenBucket, acquire_all
from swarmhub.errors import SwarmhubError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_unlimited_never_waits() -> None:
    bucket = TokenBucket(0)
    assert all(bucket.consume(1 << 30, float(t)) == 0.0 for t in range(5))
    assert bucket.available(0.0) == float("inf")


def test_burst_then_steady_rate() -> None:
    bucket = TokenBucket(1000.0, burst=500.0)
    assert bucket.consume(500, 0.0) == 0.0  # the burst goes at once
    assert bucket.consume(100, 0.0) == pytest.approx(0.1)
    assert bucket.consume(100, 0.0) == pytest.approx(0.2)  # queued behind the first
    # after the debt is paid, tokens refill at the rate
    assert bucket.consume(100, 0.3) == 0.0
    assert bucket.available(0.3) == pytest.approx(0.0, abs=1e-6)
    assert bucket.available(10.0) == pytest.approx(500.0)  # refill stops at the burst


def test_long_run_average_matches_rate() -> None:
    bucket = TokenBucket(10_000.0)
    now = 0.0
    sent = 0
    while now < 100.0:  # a sender that obeys every wait
        now += bucket.consume(16384, now)
        sent += 16384
    assert sent / now == pytest.approx(10_000.0, rel=0.02)


def test_default_burst_and_clock_stepping_back() -> None:
    bucket = TokenBucket(1_000_000.0)
    assert bucket.burst == pytest.approx(100_000.0)
    assert TokenBucket(1000.0).burst == 16384  # at least one block
    bucket.consume(100_000, 5.0)
    assert bucket.consume(1000, 4.0) == pytest.approx(0.001)  # no refill from the past


def test_set_rate_clamps_tokens_and_validates() -> None:
    bucket = TokenBucket(1_000_000.0)
    bucket.set_rate(1000.0, burst=2000.0)
    assert bucket.consume(2000, 0.0) == 0.0
    assert bucket.consume(1000, 0.0) == pytest.approx(1.0)
    with pytest.raises(SwarmhubError):
        TokenBucket(-1.0)


async def test_limiter_with_fake_clock_sleeps_the_debt(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    clock = FakeClock()
    limiter = RateLimiter(1000.0, burst=1000.0, clock=clock)
    await limiter.acquire(1000)
    await limiter.acquire(500)
    assert slept == [pytest.approx(0.5)]
    torrent = RateLimiter(100.0, burst=100.0, clock=clock)
    clock.now = 10.0
    await acquire_all([limiter, None, torrent, RateLimiter(0)], 300)
    assert slept[-1] == pytest.approx(2.0)  # the slower limiter decides
    limiter.set_rate(0)
    assert limiter.unlimited
    n = len(slept)
    await limiter.acquire(10**9)
    assert len(slept) == n


async def test_one_megabyte_at_one_megabyte_per_second_takes_one_clock_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Virtual time: every sleep advances the injected clock by exactly the delay asked for,
    so the pace is checked as bytes granted per clock second, whatever the machine's load."""
    clock = FakeClock()

    async def fake_sleep(delay: float) -> None:
        clock.now += delay

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    rate, block = 1_000_000.0, 16384
    limiter = RateLimiter(rate, burst=block, clock=clock)
    granted: list[tuple[float, int]] = [(0.0, 0)]  # (clock when the bytes may go, total)
    for _ in range(1_000_000 // block + 1):
        await limiter.acquire(block)
        granted.append((clock.now, granted[-1][1] + block))
    total = granted[-1][1]
    print(f"\n{total} bytes at 1 MB/s took {clock.now:.6f} clock seconds")
    # the burst goes at once, the rest at exactly the rate
    assert clock.now == pytest.approx((total - block) / rate)
    # and in no stretch of the clock did more go than the rate plus one burst
    for i, (t0, b0) in enumerate(granted):
        for t1, b1 in granted[i + 1 :]:
            assert b1 - b0 <= (t1 - t0) * rate + block + 1e-6


async def test_unlimited_acquire_reads_no_clock_and_never_sleeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unlimited is one attribute test: no clock read, no sleep, however many bytes."""
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return 0.0

    async def no_sleep(delay: float) -> None:
        raise AssertionError(f"an unlimited limiter slept {delay} s")

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    limiter = RateLimiter(0, clock=clock)
    for _ in range(100_000):
        await limiter.acquire(16384)
    await acquire_all([limiter, None], 1 << 30)
    assert limiter.charge(1 << 30) == 0.0
    assert reads == 0
