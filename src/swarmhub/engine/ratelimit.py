"""Rate limits: a sans-IO token bucket and a thin asyncio wrapper.

:class:`TokenBucket` is pure arithmetic on a clock value the caller passes in, so tests
step time by hand. It runs on *debt*: :meth:`TokenBucket.consume` always takes the bytes
and answers how long to wait before sending them. Later callers see the debt and wait
behind them, which queues senders fairly without any list of waiters.

:class:`RateLimiter` sleeps for that answer on the event loop. A rate of 0 means
unlimited and costs one attribute test on the hot path. :func:`acquire_all` charges a
global and a per-torrent limiter at once and waits for the slower of the two (waiting
for each in turn would let the first refill while waiting for the second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from swarmhub.errors import SwarmhubError

__all__ = ["RateLimiter", "TokenBucket", "acquire_all"]

#: the smallest default burst: one request-sized block can always go at once
_MIN_BURST = 16 * 1024


class TokenBucket:
    """Bytes-per-second budget with a burst allowance (sans-IO)."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = 0.0
        self._burst = 0.0
        self._tokens = 0.0
        self._stamp: float | None = None
        self.set_rate(rate, burst)
        self._tokens = self._burst

    @property
    def rate(self) -> float:
        """Bytes per second; 0 means unlimited."""
        return self._rate

    @property
    def burst(self) -> float:
        """Bytes that may go at once after an idle spell."""
        return self._burst

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate; the default burst is a tenth of a second's worth (>= 16 KiB)."""
        if rate < 0 or (burst is not None and burst <= 0):
            raise SwarmhubError(f"a rate limit must be >= 0 bytes/s (0 = unlimited), got {rate}")
        self._rate = float(rate)
        self._burst = float(burst) if burst is not None else max(rate / 10, _MIN_BURST)
        self._tokens = min(self._tokens, self._burst)

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
            return
        elapsed = now - self._stamp
        if elapsed > 0:  # a clock that steps back changes nothing
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now

    def consume(self, n: int, now: float) -> float:
        """Take ``n`` bytes at time ``now``; seconds to wait before they may go."""
        if self._rate <= 0:
            return 0.0
        self._refill(now)
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def available(self, now: float) -> float:
        """Bytes that could go right now without waiting (negative while in debt)."""
        if self._rate <= 0:
            return float("inf")
        self._refill(now)
        return self._tokens


class RateLimiter:
    """An asyncio rate limit: ``await limiter.acquire(n)`` before sending ``n`` bytes.

    A new rate applies to later acquisitions; a coroutine already sleeping finishes its
    wait (at most the time its own bytes needed at the old rate).
    """

    __slots__ = ("_bucket", "_clock")

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bucket = TokenBucket(rate, burst)
        self._clock = clock

    @property
    def rate(self) -> float:
        return self._bucket.rate

    @property
    def unlimited(self) -> bool:
        return self._bucket.rate <= 0

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        self._bucket.set_rate(rate, burst)

    def charge(self, n: int) -> float:
        """Take ``n`` bytes now without waiting; the seconds the caller owes."""
        if self._bucket.rate <= 0:
            return 0.0
        return self._bucket.consume(n, self._clock())

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more bytes fit in the rate."""
        if self._bucket.rate <= 0:
            return
        delay = self._bucket.consume(n, self._clock())
        if delay > 0:
            await asyncio.sleep(delay)

    @staticmethod
    async def acquire_all(limiters: Iterable[RateLimiter | None], n: int) -> None:
        """Same as the module-level :func:`acquire_all`."""
        await acquire_all(limiters, n)


async def acquire_all(limiters: Iterable[RateLimiter | None], n: int) -> None:
    """Charge ``n`` bytes to every limiter (None and unlimited ones are skipped) and wait
    for the slowest."""
    delay = 0.0
    for limiter in limiters:
        if limiter is not None and limiter._bucket.rate > 0:
            delay = max(delay, limiter._bucket.consume(n, limiter._clock()))
    if delay > 0:
        await asyncio.sleep(delay)
