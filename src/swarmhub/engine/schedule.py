"""When to announce and whom to dial: the swarm core's timetables (sans-IO).

:class:`TrackerSchedule` — announce ``started`` at once, then every interval the tracker
asks for (at least 5 s, at most 30 min); a failed announce is retried with backoff from
5 s doubling to 5 min, so a tracker that starts after us is found within seconds, and a
download that has run out of peers asks again after 15 s instead of a whole interval.

:class:`Dialer` — a queue of candidate addresses (tracker answers, direct peers) dialled
while the torrent has room; direct peers are put back when their connection is gone,
no more often than every ``retry`` seconds. Addresses known to be seeds are not dialled
once we are a seed ourselves (a seed wants nothing from a seed).

Both take ``now`` from the caller; neither reads a clock.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["Dialer", "TrackerSchedule"]

Addr = tuple[str, int]

#: deque's methods themselves, called with the deque (Final: a C static when compiled; by
#: name each call looks the method up)
_APPEND: Final = collections.deque.append
_POPLEFT: Final = collections.deque.popleft

#: the most addresses a dialer keeps waiting to be dialled; the oldest go first (the
#: freshest tell most likely of a live peer)
MAX_CANDIDATES: Final = 1000
#: the most addresses a dialer remembers as seeds (the oldest forgotten first)
MAX_SEEDS: Final = 1000


class TrackerSchedule:
    """Announce timing for one torrent's tracker tiers."""

    MIN_INTERVAL = 5.0
    MAX_INTERVAL = 1800.0
    MAX_BACKOFF = 300.0
    STARVING_AFTER = 15.0

    def __init__(self, now: float) -> None:
        self.due = now
        self.event: str | None = "started"
        self.backoff = self.MIN_INTERVAL
        self.in_flight = False
        self.last = now
        #: a ``started`` announce went through (so ``stopped`` means something)
        self.announced = False
        #: why the last announce failed, for a stalled download's message
        self.last_error: str | None = None

    def poll(self, now: float, starving: bool) -> str | bool | None:
        """False when no announce is due; else the event to announce (a str or None)."""
        if self.in_flight:
            return False
        if starving and now - self.last >= self.STARVING_AFTER:
            self.due = min(self.due, now)
        if now < self.due:
            return False
        self.in_flight = True
        self.last = now
        return self.event

    def succeeded(self, now: float, interval: float) -> None:
        self.in_flight = False
        self.announced = True
        self.event = None
        self.backoff = self.MIN_INTERVAL
        self.last_error = None
        self.due = now + min(max(interval, self.MIN_INTERVAL), self.MAX_INTERVAL)

    def failed(self, now: float, why: str) -> None:
        self.in_flight = False
        self.last_error = why
        self.due = now + self.backoff
        self.backoff = min(self.backoff * 2, self.MAX_BACKOFF)


class Dialer:
    """Candidate addresses and the dials in progress.

    The candidates are bounded (``max_candidates``, :data:`MAX_CANDIDATES` unless told, the
    newest kept): a peer at its connection cap dials nobody, while trackers and PEX keep
    telling it addresses, so in a swarm of N peers every peer queued up to N of them
    (O(N^2): at N=10,000 in ``lab simulate`` most of the run's memory). libtorrent bounds
    its peer list the same way (``max_peerlist_size``, 3,000).

    Compiled with the swarm core (``lab simulate`` N=3,000 to 4 s: :meth:`add`, every
    address of every tracker answer and PEX message, was 6 % of the run interpreted).
    The addresses are handled as the objects given (locals and containers typed ``Any``):
    compiled, an address typed ``tuple[str, int]`` is unpacked where it is read and packed
    into a new tuple where it is stored (+250 MB at N=3,000: a tuple per address kept)."""

    def __init__(self, direct: Iterable[Addr], retry: float = 5.0,
                 max_candidates: int = MAX_CANDIDATES, max_seeds: int = MAX_SEEDS) -> None:
        self.direct = list(direct)
        self._direct = frozenset(self.direct)
        self.candidates: collections.deque[Addr] = collections.deque(self.direct)
        self._queued = set(self.direct)
        self.connecting: set[Addr] = set()
        self.retry = retry
        self.max_candidates = max_candidates
        self.max_seeds = max_seeds
        #: when each direct peer may be queued again (direct peers only: kept for every
        #: address dialled, it grew with each peer a long session ever dialled)
        self._retry_at: dict[Addr, float] = {}
        #: addresses that are us (never dialled)
        self.own: set[Addr] = set()
        #: listen addresses of peers known to hold every piece (a connection that showed
        #: it, a PEX flag), oldest first: not dialled while we are a seed too. Why: a
        #: finished peer kept dialling the source at each tracker answer or PEX message
        #: it heard, each connection closed after the handshakes ("both sides are
        #: seeds"; 393 at the source in one loopback run of 32); libtorrent's peer list
        #: skips known seeds once finished the same way (``is_connect_candidate``).
        self.seeds: dict[Addr, None] = {}

    def add(self, addrs: Iterable[Addr]) -> None:
        queued: set[Any] = self._queued
        candidates: collections.deque[Any] = self.candidates
        own: set[Any] = self.own
        limit = self.max_candidates
        n = len(candidates)
        given: Iterable[Any] = addrs
        for addr in given:
            if addr not in queued and addr not in own:
                if n >= limit:
                    queued.discard(_POPLEFT(candidates))
                else:
                    n += 1
                queued.add(addr)
                _APPEND(candidates, addr)

    def seed(self, addr: Addr) -> None:
        """``addr`` is a seed's listen address (bounded: the oldest is forgotten)."""
        seeds = self.seeds
        if addr not in seeds:
            if len(seeds) >= self.max_seeds:
                del seeds[next(iter(seeds))]
            seeds[addr] = None

    def requeue_direct(self, now: float, connected: set[Addr]) -> None:
        for addr in self.direct:
            if (addr not in connected and addr not in self._queued
                    and addr not in self.connecting and self._retry_at.get(addr, 0.0) <= now):
                self._queued.add(addr)
                self.candidates.append(addr)

    def next(self, now: float, connected: set[Addr], room: int,
             hold: frozenset[str] = frozenset(), complete: bool = False) -> list[Addr]:
        """Addresses to dial now, at most ``room``. An address at an IP in ``hold`` stays
        queued, undialled (a later call without it dials it); with ``complete`` (we are
        a seed) known seeds are dropped from the queue, undialled."""
        seeds = self.seeds if complete else None
        candidates: collections.deque[Any] = self.candidates
        queued: set[Any] = self._queued
        connecting: set[Any] = self.connecting
        own: set[Any] = self.own
        out: list[Any] = []
        held: list[Any] = []
        while candidates and len(out) < room:
            addr = _POPLEFT(candidates)
            if hold and addr[0] in hold:
                held.append(addr)
                continue
            queued.discard(addr)
            if addr in connected or addr in connecting or addr in own:
                continue
            if seeds and addr in seeds:
                continue
            if addr in self._direct:
                self._retry_at[addr] = now + self.retry
            connecting.add(addr)
            out.append(addr)
        candidates.extend(held)
        return out

    def done(self, addr: Addr) -> None:
        self.connecting.discard(addr)
