"""Downloads on their way into a swarm: ``get``s that read a file's info and have not
announced yet (sans-IO, clock injected).

Why: a lone hybrid ``get`` may start its web seed before its tracker announce is
answered (one round trip less) only if nobody else is about to join. In the netns lab 16
peers start at once: each read "no leechers" from the file info before any of them had
announced, and all went to HTTP (hybrid N=16 1.67x the bound, the hub sending 1.52 F).
Counting the gets between their file info and their announce lets only the first of such
a crowd start early. Entries end at the announce (same peer id) or after ``ttl`` seconds
(a get that died, or one whose announce went to another hub worker); at most ``cap`` per
file are kept: past that the file counts as crowded anyway.
"""

from __future__ import annotations

__all__ = ["PENDING_TTL", "PendingGets"]

#: seconds a get counts as pending without announcing (its announce is answered in ms)
PENDING_TTL = 5.0
#: pending gets kept per file (more only means "not alone", which one already says)
_CAP = 64


class PendingGets:
    """Per file: peer id -> when its pending entry ends."""

    def __init__(self, ttl: float = PENDING_TTL, cap: int = _CAP) -> None:
        self.ttl = ttl
        self.cap = cap
        self._files: dict[str, dict[bytes, float]] = {}

    def arrive(self, file_id: str, peer_id: bytes, now: float) -> int:
        """A get with ``peer_id`` read the file's info: how many *other* gets are pending
        for it (see :meth:`others`); this one now counts for the next."""
        others = self.others(file_id, peer_id, now)
        gets = self._files.setdefault(file_id, {})
        if peer_id in gets or len(gets) < self.cap:
            gets[peer_id] = now + self.ttl
        return others

    def others(self, file_id: str, peer_id: bytes, now: float) -> int:
        """How many gets other than ``peer_id`` are pending for the file (expired entries
        dropped first). The tracker adds them to an announce's leechers: the first of a
        crowd to announce would otherwise read "only you" and fetch over HTTP at once."""
        gets = self._files.get(file_id)
        if gets is None:
            return 0
        for pid in [p for p, end in gets.items() if end <= now]:
            del gets[pid]
        if not gets:
            del self._files[file_id]
            return 0
        return len(gets) - (peer_id in gets)

    def announced(self, file_id: str, peer_id: bytes) -> None:
        """The get announced: the tracker counts it from now on."""
        gets = self._files.get(file_id)
        if gets is not None and gets.pop(peer_id, None) is not None and not gets:
            del self._files[file_id]
