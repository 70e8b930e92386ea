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

__all__ = ["Dialer", "TrackerSchedule"]

Addr = tuple[str, int]


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

    The candidates are bounded (:attr:`MAX_CANDIDATES`, the newest kept): a peer at its
    connection cap dials nobody, while trackers and PEX keep telling it addresses, so in
    a swarm of N peers every peer queued up to N of them (O(N^2): at N=10,000 in ``lab
    simulate`` most of the run's memory). libtorrent bounds its peer list the same way
    (``max_peerlist_size``, 3,000)."""

    #: the most addresses waiting to be dialled; the oldest go first (the freshest tell
    #: most likely of a live peer)
    MAX_CANDIDATES = 1000
    #: the most addresses remembered as seeds (the oldest forgotten first)
    MAX_SEEDS = 1000

    def __init__(self, direct: Iterable[Addr], retry: float = 5.0) -> None:
        self.direct = list(direct)
        self._direct = frozenset(self.direct)
        self.candidates: collections.deque[Addr] = collections.deque(self.direct)
        self._queued = set(self.direct)
        self.connecting: set[Addr] = set()
        self.retry = retry
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
        queued, candidates = self._queued, self.candidates
        for addr in addrs:
            if addr not in queued and addr not in self.own:
                if len(candidates) >= self.MAX_CANDIDATES:
                    queued.discard(candidates.popleft())
                queued.add(addr)
                candidates.append(addr)

    def seed(self, addr: Addr) -> None:
        """``addr`` is a seed's listen address (bounded: the oldest is forgotten)."""
        seeds = self.seeds
        if addr not in seeds:
            if len(seeds) >= self.MAX_SEEDS:
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
        out: list[Addr] = []
        held: list[Addr] = []
        while self.candidates and len(out) < room:
            addr = self.candidates.popleft()
            if hold and addr[0] in hold:
                held.append(addr)
                continue
            self._queued.discard(addr)
            if addr in connected or addr in self.connecting or addr in self.own:
                continue
            if seeds and addr in seeds:
                continue
            if addr in self._direct:
                self._retry_at[addr] = now + self.retry
            self.connecting.add(addr)
            out.append(addr)
        self.candidates.extend(held)
        return out

    def done(self, addr: Addr) -> None:
        self.connecting.discard(addr)
