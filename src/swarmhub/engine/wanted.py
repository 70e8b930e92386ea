"""The pieces a torrent's user wants, and when: file priorities, a reader's boosts, and
waiting for pieces (the daemon's and ``--serve``'s API of :class:`Torrent`).

Apart from the driver (:mod:`swarmhub.engine.torrent`): it turns requests in file and
byte terms into the core's piece priorities (via the pure
:mod:`swarmhub.engine.selection`) and keeps the futures of readers waiting for pieces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from swarmhub.engine.selection import piece_priorities
from swarmhub.engine.services import DriverHost
from swarmhub.errors import SwarmhubError

__all__ = ["Wanted", "WantedHost"]


class WantedHost(DriverHost, Protocol):
    """What :class:`Wanted` needs from its torrent besides the :class:`DriverHost`."""

    def _reopen_if_unfinished(self, was_finished: bool) -> None:
        """Back to downloading when a finished torrent now wants more pieces."""
        ...


class Wanted:
    """File priorities, the piece priorities they give, and readers waiting for pieces."""

    def __init__(self, torrent: WantedHost, file_priorities: Sequence[int] | None,
                 sequential: bool) -> None:
        self.torrent = torrent
        meta = torrent.meta
        #: per data file (``meta.data_files`` order): 0 skip, 1 normal, up to 7 sooner
        self.file_priorities = list(file_priorities or [1] * len(meta.data_files))
        #: piece priorities from the files alone (what a reader's boost returns to)
        self._base_priorities = piece_priorities(meta, self.file_priorities)
        torrent.swarm.picker.set_priorities(self._base_priorities)
        torrent.swarm.set_sequential(sequential)
        self._piece_waiters: dict[int, list[asyncio.Future[None]]] = {}

    async def set_file_priorities(self, priorities: Sequence[int]) -> None:
        """One priority per data file (``meta.data_files`` order, as ``swarmhub info``
        numbers them): 0 skip, 1 normal, up to 7 sooner. A file chosen now that was left
        out before is created with the bytes already held for it; a finished download
        that wants more goes back to downloading."""
        t = self.torrent
        prios = list(priorities)
        pp = piece_priorities(t.meta, prios)  # validates the count
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            t.session.disk_pool, t.storage.set_selection, [p > 0 for p in prios])
        self.file_priorities = prios
        self._base_priorities = pp
        was = t.swarm.finished
        t.swarm.set_piece_priorities(pp, t.clock())
        t._reopen_if_unfinished(was)
        t._flush()

    def prioritize_range(self, offset: int, length: int, priority: int = 7) -> list[int]:
        """Raise the pieces holding piece-space bytes ``offset..offset+length`` to
        ``priority`` (a player's read or seek); returns the pieces still missing."""
        t = self.torrent
        pl = t.meta.piece_length
        first, last = offset // pl, (offset + max(length, 1) - 1) // pl
        missing = []
        was = t.swarm.finished
        for i in range(first, min(last, t.meta.num_pieces - 1) + 1):
            if t.swarm.have[i]:
                continue
            missing.append(i)
            if t.swarm.picker.priority(i) < priority:
                t.swarm.set_piece_priority(i, priority, t.clock())
        t._reopen_if_unfinished(was)
        t._flush()
        return missing

    def restore_priorities(self, indices: Iterable[int]) -> None:
        """Undo :meth:`prioritize_range` for these pieces (the reader went away or
        seeked elsewhere): back to what their files say."""
        t = self.torrent
        picker, base = t.swarm.picker, self._base_priorities
        was = t.swarm.finished
        for i in indices:
            if picker.priority(i) != base[i]:
                t.swarm.set_piece_priority(i, base[i], t.clock())
        t._reopen_if_unfinished(was)
        t._flush()

    async def wait_pieces(self, indices: Iterable[int]) -> None:
        """Return once every piece in ``indices`` is verified (raises
        :class:`SwarmhubError` if the torrent fails or stops first)."""
        t = self.torrent
        loop = asyncio.get_running_loop()
        futs = []
        for i in indices:
            if not t.swarm.have[i]:
                fut: asyncio.Future[None] = loop.create_future()
                self._piece_waiters.setdefault(i, []).append(fut)
                futs.append(fut)
        if futs:
            await asyncio.gather(*futs)

    def piece_done(self, index: int) -> None:
        for fut in self._piece_waiters.pop(index, ()):
            if not fut.done():
                fut.set_result(None)

    def fail_waiters(self, why: str) -> None:
        waiters, self._piece_waiters = self._piece_waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(SwarmhubError(why))
