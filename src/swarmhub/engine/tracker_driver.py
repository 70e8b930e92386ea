"""Driving a torrent's tracker announces: the core says when and with which event, this
part sends them through the session's tracker tiers and reports the answer back.

Apart from the driver (:mod:`swarmhub.engine.torrent`) because it is the torrent's only
use of the tracker client (:mod:`swarmhub.discovery.tracker`, imported late).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from swarmhub.aio import settle
from swarmhub.engine.services import DriverHost
from swarmhub.errors import SwarmhubError

if TYPE_CHECKING:
    from swarmhub.discovery.tracker import AnnounceResponse

__all__ = ["TrackerDriver", "TrackerHost"]

log = logging.getLogger(__name__)

#: Seconds a stopping torrent waits for the tracker's answer to ``stopped``: an exit must
#: not hang on a tracker that is gone or stuck (the peer then expires there by its TTL).
STOPPED_WAIT = 5.0


class TrackerHost(DriverHost, Protocol):
    """What announces need from their torrent besides the :class:`DriverHost`."""

    #: announce-list tiers (the metainfo's, or the caller's)
    tracker_tiers: list[list[str]]


class TrackerDriver:
    """Announces of one torrent (:meth:`announce`, spawned for each core action)."""

    def __init__(self, torrent: TrackerHost) -> None:
        self.torrent = torrent
        #: set at every answer (or failure) the core was told of; waiters clear it
        self.answered = asyncio.Event()
        #: announces the core asked for and not yet answered; ``stopped`` waits for them
        self._in_flight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        #: Set by a caller that stops the torrent as soon as it completes and whose tracker
        #: counts a known leecher's ``stopped`` with ``left=0`` as a completed download (a
        #: hub's: see swarmhub.hub.tracker; aria2 with --seed-time=0 says only that): the
        #: ``completed`` announce is then left to ``stopped``. Why: ``stopped`` waits for
        #: announces on their way (see :meth:`_last_word`), so a hub ``get`` ended with two
        #: tracker round trips in a row, each on a new connection, before it could exit.
        self.completed_at_stop = False

    async def stopped(self) -> None:
        """Tell the tracker we leave (at most :data:`STOPPED_WAIT`), if we ever announced."""
        tracker = self.torrent.swarm.tracker
        if tracker is not None and tracker.announced:
            await settle(self._last_word(), STOPPED_WAIT)

    async def _last_word(self) -> None:
        """``stopped`` after the announces still on their way: sent side by side, a tracker
        that handled a ``completed`` after the ``stopped`` kept a ghost seeder until its TTL."""
        await self._quiet.wait()
        await self.announce_once("stopped")

    async def announce_once(self, event: str | None) -> AnnounceResponse:
        """One announce with ``event``; raises :class:`SwarmhubError` when every tier fails."""
        from swarmhub.discovery.tracker import AnnounceRequest

        t = self.torrent
        tiers = t.session.tracker_tiers(t.meta.info_hash, t.tracker_tiers)
        left = t.meta.total_length - t.swarm.bytes_have()
        req = AnnounceRequest(
            info_hash=t.meta.info_hash, peer_id=t.session.peer_id,
            port=t.session.listen_port, uploaded=t.swarm.uploaded,
            downloaded=t.swarm.downloaded,
            left=max(0, left), event=event, numwant=50, compact=True, key=None,
            tracker_id=None, ip=None,
        )
        return await tiers.announce(req)

    async def announce(self, event: str | None) -> None:
        """One announce the core asked for; its answer (or failure) goes back to the core
        (``completed`` with :attr:`completed_at_stop` set: none, ``stopped`` says it)."""
        t = self.torrent
        if event == "completed" and self.completed_at_stop:
            return
        self._in_flight += 1
        self._quiet.clear()
        try:
            resp = await self.announce_once(event)
        except SwarmhubError as exc:  # TrackerError, or the session closing under us
            log.warning("%s: tracker: %s", t.meta.name, exc)
            t.swarm.tracker_failed(t.clock(), str(exc))
            self.answered.set()
            return
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._quiet.set()
        t.swarm.tracker_response(
            t.clock(), interval=max(resp.min_interval or 0, resp.interval),
            peers=resp.peers, seeds=resp.complete, leechers=resp.incomplete)
        self.answered.set()
        t._flush()
