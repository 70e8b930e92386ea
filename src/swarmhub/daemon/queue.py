"""Which torrents run: a pure decision over snapshots, so queueing is testable alone."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Slot", "to_start"]


@dataclass(frozen=True, slots=True)
class Slot:
    """What the queue needs to know of one torrent."""

    id: str
    #: Ready to run: metadata known, not paused, no error.
    runnable: bool
    running: bool
    #: Every piece verified (seeds never wait in the queue).
    complete: bool


def to_start(slots: list[Slot], max_active: int) -> list[str]:
    """Ids to start now, in queue order: every runnable seed, and downloads while fewer
    than ``max_active`` (0 = no cap) are running."""
    active = sum(1 for s in slots if s.running and not s.complete)
    out: list[str] = []
    for s in slots:
        if s.running or not s.runnable:
            continue
        if s.complete:
            out.append(s.id)
        elif not max_active or active < max_active:
            out.append(s.id)
            active += 1
    return out
