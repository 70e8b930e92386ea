"""Who sent bad data: strikes, bans and block evidence of one torrent (sans-IO).

A piece that fails its hash check names its senders (ban keys) but not which block was
bad. The rules, each one a bug found with a hostile peer:

* one sender: it lied, ban it;
* several senders: strike each; at ``threshold`` strikes the sender with the most
  strikes is banned — a tie (an honest peer that shared every failure with the liar)
  waits for more evidence;
* the failed blocks' SHA-1 digests are kept: when the piece later passes, the senders
  whose blocks differ from the good ones are the liars;
* a failure with a banned sender's blocks in it strikes nobody, and a ban forgives the
  other senders the strikes of every failure the banned one took part in.

The swarm core carries the bans out (closing connections, dropping the banned sender's
blocks from unfinished pieces); this class only keeps the books. No I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping

__all__ = ["Integrity"]


class Integrity:
    """Strikes and bans; see the module docstring for the rules."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.banned: set[Hashable] = set()
        self.strikes: Counter[Hashable] = Counter()
        #: failed piece -> block offset -> (sender, digest of what it sent)
        self._evidence: dict[int, dict[int, tuple[Hashable, bytes]]] = {}
        #: senders of each multi-sender failure still held against them
        self._failures: list[frozenset[Hashable]] = []

    def wants_digests(self, index: int) -> bool:
        """Piece ``index`` failed before: its next copy's block digests tell who lied."""
        return index in self._evidence

    def failed(self, index: int, sources: Mapping[int, Hashable],
               digests: Mapping[int, bytes] | None) -> tuple[Hashable, str] | None:
        """Piece ``index`` failed; ``sources`` maps block offsets to senders. Returns the
        sender to ban and why, or None."""
        keys = frozenset(sources.values())
        if digests is not None:
            self._evidence[index] = {b: (k, digests.get(b, b"")) for b, k in sources.items()}
        if not keys or keys & self.banned:
            return None  # a banned sender's blocks were in it: blame nobody else
        if len(keys) == 1:
            return next(iter(keys)), f"piece {index} failed its hash check"
        for key in keys:
            self.strikes[key] += 1
        self._failures.append(keys)
        worst = max(keys, key=self.strikes.__getitem__)
        top = self.strikes[worst]
        if top >= self.threshold and sum(1 for k in keys if self.strikes[k] == top) == 1:
            return worst, f"{top} pieces it sent failed their hash check"
        return None

    def passed(self, index: int, digests: Mapping[int, bytes] | None) -> set[Hashable]:
        """Piece ``index`` passed: the senders of its earlier, failed blocks that differ."""
        evidence = self._evidence.pop(index, None)
        if evidence is None or digests is None:
            return set()
        return {key for b, (key, d) in evidence.items() if digests.get(b) != d}

    def ban(self, key: Hashable) -> bool:
        """Ban ``key`` and forgive the others their strikes from failures it shared;
        False if it was banned already."""
        if key in self.banned:
            return False
        self.banned.add(key)
        kept = []
        for keys in self._failures:
            if key in keys:
                for other in keys - {key}:
                    self.strikes[other] = max(0, self.strikes[other] - 1)
            else:
                kept.append(keys)
        self._failures = kept
        return True
