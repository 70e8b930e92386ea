"""Faults a lab run can inject, and what the swarm held when one struck.

Why: "P2P is more reliable" is a claim about failures, so the lab kills things on purpose
and reports what happened. Two faults, both triggered by the receivers' *mean progress*
(so they strike at the same point of a run whatever its speed):

- ``kill-hub@50%``: SIGKILL every process of host 0 (hub, or tracker + seeder) once the
  receivers are half done. Client-server downloads stall; a swarm can only finish when
  every piece had left host 0 before it died (:func:`swarm_pieces` tells).
- ``kill-peers=25%@30%``: SIGKILL that fraction of the receivers (at least one, chosen
  with a fixed seed so a run is reproducible) at 30 %; the others must still finish.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmhub.metainfo.model import Metainfo

__all__ = ["Fault", "parse_fault", "swarm_pieces"]

_HUB = re.compile(r"kill-hub@([0-9]+(?:\.[0-9]+)?)%")
_PEERS = re.compile(r"kill-peers=([0-9]+(?:\.[0-9]+)?)%@([0-9]+(?:\.[0-9]+)?)%")


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: ``kind`` is ``kill-hub`` or ``kill-peers``; ``at`` and ``fraction`` are
    fractions of 1 (mean receiver progress that triggers it; receivers to kill)."""

    kind: str
    at: float
    fraction: float = 0.0

    def __str__(self) -> str:
        if self.kind == "kill-hub":
            return f"kill-hub@{self.at * 100:g}%"
        return f"kill-peers={self.fraction * 100:g}%@{self.at * 100:g}%"

    def victims(self, hosts: Sequence[int], seed: int = 4) -> list[int]:
        """The receivers ``kill-peers`` kills: ``round(fraction * N)``, at least one, never
        all of them (someone must be left to finish)."""
        if self.kind != "kill-peers" or len(hosts) < 2:
            return []
        k = min(len(hosts) - 1, max(1, round(self.fraction * len(hosts))))
        return sorted(random.Random(seed).sample(sorted(hosts), k))


def parse_fault(text: str) -> Fault:
    """``"kill-hub@50%"`` or ``"kill-peers=25%@30%"`` -> :class:`Fault` (ValueError if not)."""
    spec = text.strip().lower()
    if m := _HUB.fullmatch(spec):
        at, fraction = float(m.group(1)), 0.0
        kind = "kill-hub"
    elif m := _PEERS.fullmatch(spec):
        fraction, at = float(m.group(1)), float(m.group(2))
        kind = "kill-peers"
        if not 0 < fraction < 100:
            raise ValueError(f"{text!r}: the fraction of peers must be in (0, 100) %")
    else:
        raise ValueError(f"cannot read fault {text!r}: use kill-hub@50% or kill-peers=25%@30%")
    if not 0 <= at < 100:
        raise ValueError(f"{text!r}: the trigger must be a progress in [0, 100) %")
    return Fault(kind, at / 100, fraction / 100)


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
