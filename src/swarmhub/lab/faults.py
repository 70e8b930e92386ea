"""Faults a lab run can inject, when they strike, and what the swarm held when one struck.

Why: "P2P is more reliable" is a claim about failures, so the lab kills things on purpose
and reports what happened. A fault strikes on the swarm's *state*, never on elapsed time,
so it hits the same point of a run however fast or loaded the machine is:

- ``kill-hub@full-copy``: SIGKILL every process of host 0 (hub, or tracker + seeder) once
  the receivers *together* hold every piece (the union of the bitfields they report).
  The swarm can then always finish without the hub: the fault tests the swarm, not luck.
- ``kill-hub@50%``: the same once the receivers hold 50 % of the bytes they need (verified
  bytes summed over the receivers still alive, over their number times the file size).
  Client-server downloads stall; a swarm can only finish when every piece had left host 0
  before it died (:func:`swarm_pieces` tells).
- ``kill-peers=25%@30%`` (or ``@full-copy``): SIGKILL that fraction of the receivers (at
  least one, chosen with a fixed seed so a run is reproducible); the others must finish.

:class:`SwarmProgress` keeps what the receivers last reported and :func:`should_fire`
decides; both are pure (no clock, no I/O), so the trigger logic is unit-tested.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swarmhub.metainfo.model import Metainfo

__all__ = ["Fault", "SwarmProgress", "Trigger", "parse_fault", "should_fire", "swarm_pieces"]

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_WHEN = rf"(?:{_NUM}%|(full-copy))"
_HUB = re.compile(rf"kill-hub@{_WHEN}")
_PEERS = re.compile(rf"kill-peers={_NUM}%@{_WHEN}")
_FORMS = "kill-hub@full-copy, kill-hub@50% or kill-peers=25%@30%"


class Trigger(enum.Enum):
    """What a fault waits for."""

    #: A fraction of the bytes the live receivers need has been delivered to them.
    BYTES = "bytes"
    #: The receivers together hold every piece at least once.
    FULL_COPY = "full-copy"


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: ``kind`` is ``kill-hub`` or ``kill-peers``; ``at`` is the fraction of bytes
    delivered that triggers it (``Trigger.BYTES``); ``fraction`` the receivers to kill."""

    kind: str
    at: float = 0.0
    fraction: float = 0.0
    trigger: Trigger = Trigger.BYTES

    def __str__(self) -> str:
        when = "full-copy" if self.trigger is Trigger.FULL_COPY else f"{self.at * 100:g}%"
        if self.kind == "kill-hub":
            return f"kill-hub@{when}"
        return f"kill-peers={self.fraction * 100:g}%@{when}"

    def victims(self, hosts: Sequence[int], seed: int = 4) -> list[int]:
        """The receivers ``kill-peers`` kills: ``round(fraction * N)``, at least one, never
        all of them (someone must be left to finish)."""
        if self.kind != "kill-peers" or len(hosts) < 2:
            return []
        k = min(len(hosts) - 1, max(1, round(self.fraction * len(hosts))))
        return sorted(random.Random(seed).sample(sorted(hosts), k))


def parse_fault(text: str) -> Fault:
    """``"kill-hub@full-copy"``, ``"kill-hub@50%"`` or ``"kill-peers=25%@30%"`` ->
    :class:`Fault` (ValueError naming the accepted forms if not)."""
    spec = text.strip().lower()
    if m := _HUB.fullmatch(spec):
        kind, fraction, pct, full = "kill-hub", 0.0, m.group(1), m.group(2)
    elif m := _PEERS.fullmatch(spec):
        kind, fraction, pct, full = "kill-peers", float(m.group(1)), m.group(2), m.group(3)
        if not 0 < fraction < 100:
            raise ValueError(f"{text!r}: the fraction of peers must be in (0, 100) %")
    else:
        raise ValueError(f"cannot read fault {text!r}: use {_FORMS}")
    if full:
        return Fault(kind, 0.0, fraction / 100, Trigger.FULL_COPY)
    at = float(pct)
    if not 0 <= at < 100:
        raise ValueError(f"{text!r}: the trigger must be bytes delivered in [0, 100) %")
    return Fault(kind, at / 100, fraction / 100)


@dataclass
class SwarmProgress:
    """What each receiver last reported: verified bytes and, when its client says, which
    pieces (a wire bitfield). Pure bookkeeping for :func:`should_fire`.

    ``size`` is the file's length and ``num_pieces`` the torrent's piece count (None when
    the mode has no torrent, e.g. client-server over HTTP).
    """

    size: int
    num_pieces: int | None = None
    have_bytes: dict[int, int] = field(default_factory=dict)
    bitfields: dict[int, int] = field(default_factory=dict)
    complete: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)
    #: Receivers that have joined the swarm: sent a bitfield (so they hold the metadata)
    #: or got bytes. One that has not cannot finish without host 0 (a hybrid client
    #: still fetching the torrent from the hub), so no full copy is declared before.
    joined: set[int] = field(default_factory=set)

    def add_host(self, host: int) -> None:
        self.have_bytes.setdefault(host, 0)

    def report(
        self,
        host: int,
        *,
        have_bytes: int | None = None,
        bitfield: bytes | None = None,
        complete: bool = False,
    ) -> None:
        """Take one status line's state (fields the client did not send stay as they were;
        a host only ever gains pieces, so a late, older line cannot undo a newer one)."""
        if have_bytes is not None:
            self.have_bytes[host] = max(self.have_bytes.get(host, 0), min(have_bytes, self.size))
        if bitfield is not None and self.num_pieces:
            self.bitfields[host] = self.bitfields.get(host, 0) | _bits(bitfield, self.num_pieces)
        if complete:
            self.complete.add(host)
            self.have_bytes[host] = self.size
        if bitfield is not None or complete or self.have_bytes.get(host, 0) > 0:
            self.joined.add(host)

    def remove(self, host: int) -> None:
        """A receiver killed on purpose: it no longer counts, nor do the pieces it held."""
        self.gone.add(host)

    @property
    def live(self) -> list[int]:
        return sorted(h for h in self.have_bytes if h not in self.gone)

    def delivered(self) -> float:
        """Fraction of the bytes the live receivers need that they hold (0..1)."""
        live = self.live
        if not live or self.size <= 0:
            return 1.0
        return sum(self.have_bytes[h] for h in live) / (len(live) * self.size)

    def pieces_held(self) -> int | None:
        """Pieces at least one live receiver holds (None without a piece count)."""
        n = self.num_pieces
        if not n:
            return None
        live = self.live
        if any(h in self.complete for h in live):
            return n
        union = 0
        for h in live:
            union |= self.bitfields.get(h, 0)
        return union.bit_count()

    def can_finish(self) -> bool:
        """True while the live receivers together hold every piece. After the hub is killed,
        a pause in progress is then a slow machine (late joiners importing and looking up
        the DHT at load 30), not a swarm that cannot finish: the run's deadline ends it, and
        a stall is called only when pieces are missing."""
        n = self.num_pieces
        return n is not None and self.pieces_held() == n

    def full_copy(self) -> bool:
        """True once the live receivers together hold every piece (without a bitfield, a
        receiver that holds the whole file is the only proof), and every one of them has
        joined: a receiver still starting on a loaded machine needs host 0 to join."""
        if any(h not in self.joined for h in self.live):
            return False
        if any(h in self.complete or self.have_bytes[h] >= self.size for h in self.live):
            return True
        return self.num_pieces is not None and self.pieces_held() == self.num_pieces


def _bits(bitfield: bytes, num_pieces: int) -> int:
    """A wire bitfield as an int, one bit per piece, spare trailing bits dropped (a union
    and a count need no particular bit order)."""
    nbytes = (num_pieces + 7) >> 3
    value = int.from_bytes(bitfield[:nbytes].ljust(nbytes, b"\0"), "big")
    return value >> (nbytes * 8 - num_pieces)


def should_fire(fault: Fault, progress: SwarmProgress) -> bool:
    """Whether ``fault`` strikes now, given what the receivers reported."""
    if fault.trigger is Trigger.FULL_COPY:
        return progress.full_copy()
    return progress.delivered() >= fault.at


def swarm_pieces(meta: Metainfo, folders: Sequence[Path]) -> tuple[int, int]:
    """(pieces that at least one of ``folders`` holds verified, pieces in the torrent).

    Reads and hashes what the receivers have written so far (verified pieces only ever
    reach the disk, so a piece that hashes right is a piece that peer can share).
    """
    from swarmhub.storage.files import TorrentStorage
    from swarmhub.storage.verify import recheck

    n = meta.num_pieces
    held = bytearray(n)
    for folder in folders:
        todo = [i for i in range(n) if not held[i]]
        if not todo:
            break
        storage = TorrentStorage(meta, folder)
        storage.open(create=False)
        try:
            got = recheck(meta, storage, threads=2, only=todo)
        finally:
            storage.close()
        for i in todo:
            if got[i]:
                held[i] = 1
    return sum(held), n
