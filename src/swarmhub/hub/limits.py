"""Per-address limits of the hub: announce rate and failed-login backoff (sans-IO cores).

Why per address: the hub's clients are anonymous (announces, downloads) or hold secrets
that can be guessed (tokens), so the only handle on an abusive client is where it comes
from. Both policies take ``now`` as an argument (no clock of their own) and keep at most
``max_entries`` addresses, dropping the least recently seen one first, so a flood of
source addresses costs bounded memory: a dropped address only gets a fresh allowance.

IPv6 clients are keyed by their /64 network (one subscriber usually has a whole /64);
IPv4 clients by their address.

:class:`Limits` is what the hub's request handlers see (``app[LIMITS_KEY]``): the two
policies plus :meth:`Limits.source`, the client's address (``X-Forwarded-For`` only
when the hub is configured to trust a proxy in front of it).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiohttp import web

__all__ = [
    "LIMITS_KEY",
    "AnnounceRate",
    "Limits",
    "LoginThrottle",
    "address_key",
]

#: Addresses remembered by each policy before the least recently seen is forgotten.
MAX_ENTRIES = 65536


def address_key(ip: str) -> str:
    """The key limits are counted under: the address itself, or its /64 for IPv6."""
    if ":" not in ip:  # IPv4 (the tracker hands canonical text): the common, fast case
        return ip
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


_V = TypeVar("_V")


class _Lru(Generic[_V]):
    """An OrderedDict capped at ``max_entries``: touching an entry makes it the newest."""

    __slots__ = ("_d", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._d: OrderedDict[str, _V] = OrderedDict()

    def get(self, key: str) -> _V | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def put(self, key: str, value: _V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)

    def pop(self, key: str) -> None:
        self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)


class AnnounceRate:
    """A token bucket per address: ``rate`` announces per second, bursts of ``burst``.

    A real client announces each torrent once per interval (minutes), so the default
    allowance only bites a client that floods; ``rate`` 0 turns the limit off.
    """

    def __init__(
        self, rate: float, burst: float | None = None, *, max_entries: int = MAX_ENTRIES
    ) -> None:
        if rate < 0:
            raise ValueError("the announce rate must be >= 0 (0 = no limit)")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else 5.0 * rate)
        self._buckets: _Lru[list[float]] = _Lru(max_entries)

    def take(self, ip: str, now: float) -> float:
        """Spend one announce of ``ip``: 0.0 when allowed, else seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        key = address_key(ip)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets.put(key, [self.burst - 1.0, now])
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    next_slot: float


class LoginThrottle:
    """Backoff for addresses that present wrong tokens.

    The first ``free_failures`` failures cost nothing (typos). After that every attempt
    with a token from that address is given a slot ``delay`` seconds after the previous
    one, ``delay`` doubling per failure from ``base_delay`` up to ``max_delay``; an attempt
    whose slot is more than ``max_wait`` away is refused at once (HTTP 429), so parallel
    guessing from one address is serialised and the queue of waiting requests stays
    short. The handler waits with ``asyncio.sleep``: other clients are not slowed. An
    address is forgiven ``forget_after`` seconds after its last failure.
    """

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        max_wait: float = 30.0,
        forget_after: float = 600.0,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_wait = max_wait
        self.forget_after = forget_after
        self._state: _Lru[_Failures] = _Lru(max_entries)

    def _delay(self, count: int) -> float:
        excess = count - self.free_failures
        if excess <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2.0 ** min(excess - 1, 32))

    def wait(self, ip: str, now: float) -> float | None:
        """Seconds this attempt must wait before its token is checked; None: refuse it."""
        key = address_key(ip)
        st = self._state.get(key)
        if st is None:
            return 0.0
        if now - st.last > self.forget_after:
            self._state.pop(key)
            return 0.0
        delay = self._delay(st.count)
        if delay <= 0:
            return 0.0
        slot = max(now, st.next_slot)
        if slot - now > self.max_wait:
            return None
        st.next_slot = slot + delay
        return slot - now

    def failed(self, ip: str, now: float) -> int:
        """Record a wrong token from ``ip``; returns its recent failure count."""
        key = address_key(ip)
        st = self._state.get(key)
        if st is None or now - st.last > self.forget_after:
            st = _Failures(0, now, now)
            self._state.put(key, st)
        st.count += 1
        st.last = now
        st.next_slot = max(st.next_slot, now + self._delay(st.count))
        return st.count

    def backlog(self, ip: str, now: float) -> float:
        """Seconds until the next free slot of ``ip`` (0.0 when it need not wait)."""
        st = self._state.get(address_key(ip))
        return 0.0 if st is None else max(0.0, st.next_slot - now)

    def retry_after(self, ip: str, now: float) -> int:
        """Whole seconds until ``ip`` may try again (the 429's Retry-After)."""
        return max(1, math.ceil(self.backlog(ip, now) - self.max_wait))

    def __len__(self) -> int:
        return len(self._state)


@dataclass(slots=True)
class Limits:
    """The hub's per-address policies and how it tells a client's address."""

    #: Believe ``X-Forwarded-For`` (and the tracker's ``ip=``): only behind a proxy
    #: that sets it, or any client can claim any address.
    trust_proxy: bool = False
    announces: AnnounceRate = field(default_factory=lambda: AnnounceRate(0))
    logins: LoginThrottle = field(default_factory=LoginThrottle)

    def source(self, request: web.BaseRequest) -> str:
        """The client's address: the peer's, or the proxy's last ``X-Forwarded-For`` hop."""
        if self.trust_proxy:
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rpartition(",")[2].strip()
            if last:
                return last
        return request.remote or ""


LIMITS_KEY = web.AppKey("limits", Limits)
