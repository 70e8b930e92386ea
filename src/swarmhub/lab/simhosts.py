"""Who the simulated hosts are: rate classes, churn schedules, and the tracker they share.

Why a module of its own: these are pure (rng passed in) and small, and the CLI parses
the same ``--up 20mbit:70%,5mbit:30%`` syntax the simulation consumes.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from swarmhub.lab.bounds import parse_rate

__all__ = ["HostSpec", "SimTracker", "assign", "churn_schedule", "parse_classes"]

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One host's access link: rates in bit/s, one-way latency in seconds."""

    up_bps: float
    down_bps: float
    latency: float


def parse_classes(text: str) -> list[tuple[float, float]]:
    """``"20mbit:70%,5mbit:30%"`` -> ``[(20e6, 0.7), (5e6, 0.3)]``; ``"20mbit"`` -> one
    class of 100%. Shares without a ``%`` split what is left equally; they must sum to 100%."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"no rate in {text!r}")
    rates: list[float] = []
    shares: list[float | None] = []
    for part in parts:
        match = re.fullmatch(r"([^:]+?)(?::\s*([0-9.]+)\s*%)?", part)
        if match is None:
            raise ValueError(f"cannot read {part!r} as RATE or RATE:SHARE%")
        rates.append(float(parse_rate(match.group(1))))
        shares.append(float(match.group(2)) / 100 if match.group(2) else None)
    given = sum(s for s in shares if s is not None)
    free = [i for i, s in enumerate(shares) if s is None]
    if given > 1.0 + 1e-9 or (not free and abs(given - 1.0) > 1e-6):
        raise ValueError(f"shares in {text!r} must add up to 100%")
    rest = (1.0 - given) / len(free) if free else 0.0
    return [(r, s if s is not None else rest) for r, s in zip(rates, shares, strict=True)]


def assign(classes: list[tuple[float, float]], n: int, rng: random.Random) -> list[float]:
    """A rate per host: ``round(share x n)`` hosts per class (largest remainders settle
    the rounding), in a shuffled order so classes mix across host numbers."""
    exact = [share * n for _, share in classes]
    counts = [int(x) for x in exact]
    order = sorted(range(len(classes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    out = [classes[i][0] for i, c in enumerate(counts) for _ in range(c)]
    rng.shuffle(out)
    return out


def churn_schedule(n: int, join_rate: float, leave_rate: float,
                   rng: random.Random) -> tuple[list[float], list[float | None]]:
    """Join times (a Poisson process of ``join_rate`` per s; all at 0 when 0) and
    lifetimes (exponential with mean ``1/leave_rate`` s; None: stays to the end)."""
    joins: list[float] = []
    t = 0.0
    for _ in range(n):
        joins.append(t)
        if join_rate > 0:
            t += rng.expovariate(join_rate)
    lives: list[float | None] = [
        rng.expovariate(leave_rate) if leave_rate > 0 else None for _ in range(n)
    ]
    return joins, lives


class SimTracker:
    """The lab's tracker in miniature: peers expire ``2 x interval`` after their last
    announce; an announce gets up to ``numwant`` random live peers (a seeder only
    leechers), like :class:`swarmhub.hub.tracker.TrackerState`."""

    def __init__(self, *, interval: float, min_interval: float, rng: random.Random,
                 max_numwant: int = 200) -> None:
        self.interval = interval
        self.min_interval = min_interval
        self.ttl = 2.0 * interval
        self.max_numwant = max_numwant
        self.rng = rng
        self._addrs: list[Addr] = []
        self._pos: dict[Addr, int] = {}
        #: last announce per entry, oldest first (an announce moves its entry to the end)
        self._seen: dict[Addr, float] = {}
        #: announces came in time order, so ``_seen``'s first entry is the oldest
        self._ordered = True
        self._seeder: dict[Addr, bool] = {}
        #: the entries that are not seeders (what a seeder's announce hands out)
        self._leechers: set[Addr] = set()
        #: seeders in ``_seeder``, kept as it changes (a sum per announce is O(N^2) a run)
        self._nseeds = 0
        self._permanent: set[Addr] = set()

    @property
    def seeders(self) -> int:
        """Seeders listed (expired entries count until they are picked over, as with the
        lab's tracker between purges)."""
        return self._nseeds

    @property
    def leechers(self) -> int:
        """Leechers listed (counted like :attr:`seeders`)."""
        return len(self._seeder) - self.seeders

    def register(self, addr: Addr, seeder: bool, now: float, *, permanent: bool = False) -> None:
        if addr not in self._pos:
            self._pos[addr] = len(self._addrs)
            self._addrs.append(addr)
        seen = self._seen
        if seen and now < seen[next(reversed(seen))]:
            self._ordered = False
        seen.pop(addr, None)
        seen[addr] = now
        self._nseeds += seeder - self._seeder.get(addr, False)
        self._seeder[addr] = seeder
        if seeder:
            self._leechers.discard(addr)
        else:
            self._leechers.add(addr)
        if permanent:
            self._permanent.add(addr)

    def remove(self, addr: Addr) -> None:
        pos = self._pos.pop(addr, None)
        if pos is None:
            return
        last = self._addrs.pop()
        if last != addr:
            self._addrs[pos] = last
            self._pos[last] = pos
        self._seen.pop(addr, None)
        self._nseeds -= self._seeder.pop(addr, False)
        self._leechers.discard(addr)

    def _live(self, addr: Addr, now: float) -> bool:
        if now - self._seen[addr] <= self.ttl or addr in self._permanent:
            return True
        self.remove(addr)  # the purge, done lazily
        return False

    def _expired(self, now: float) -> list[Addr] | None:
        """The entries a look at every entry would purge by ``now`` (those whose ttl
        passed, permanent ones aside), oldest first; None when announces came out of
        time order (then only that look finds them). In order, they are a prefix of
        ``_seen`` (permanent entries skipped): the first one within the ttl ends it."""
        if not self._ordered:
            return None
        out: list[Addr] = []
        permanent, ttl = self._permanent, self.ttl
        for addr, seen in self._seen.items():
            if addr in permanent:
                continue
            if now - seen <= ttl:
                break
            out.append(addr)
        return out

    def pick(self, asker: Addr, seeder: bool, numwant: int, now: float) -> list[Addr]:
        """Up to ``numwant`` random live peers other than ``asker``."""
        want = min(numwant, self.max_numwant)
        addrs = self._addrs
        picks = self.rng.sample(range(len(addrs)), min(len(addrs), 2 * want + 8))
        out: list[Addr] = []
        cands = [addrs[i] for i in picks]
        for addr in cands:
            if len(out) >= want:
                break
            if addr != asker and addr in self._pos and self._live(addr, now) \
                    and not (seeder and self._seeder[addr]):
                out.append(addr)
        if len(out) < want and len(cands) < len(self._addrs):  # short: the rest of the list
            taken = set(out)
            dead = self._expired(now)
            if dead is None:  # out of order: look at every entry (it purges as it goes)
                rest = [a for a in list(self._addrs) if a not in taken and a != asker
                        and a in self._pos and self._live(a, now)
                        and not (seeder and self._seeder[a])]
            else:
                # That look without a call per entry (O(N) per announce, O(N^2) a run;
                # the ttl of 2 intervals is below the client's 5 s announce interval, so
                # most such looks purge): the entries it would keep, in list order, then
                # its purge, in the same order (the order moves entries: see remove).
                pos = self._pos
                gone = set(dead)
                gone.update(taken)
                gone.add(asker)
                if not seeder:
                    rest = [a for a in self._addrs if a not in gone]
                elif 4 * len(self._leechers) > len(self._addrs):  # many: a pass, no sort
                    leechers = self._leechers
                    rest = [a for a in self._addrs if a in leechers and a not in gone]
                else:  # a seeder late in a run (most entries seeders): the leechers
                    rest = [a for a in sorted(self._leechers, key=pos.__getitem__)
                            if a not in gone]
                for a in sorted(dead, key=pos.__getitem__):
                    if a != asker:  # (the look passed the asker by: not purged)
                        self.remove(a)
            self.rng.shuffle(rest)
            out += rest[: want - len(out)]
        return out
