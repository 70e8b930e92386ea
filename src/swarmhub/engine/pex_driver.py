"""Driving BEP 11 peer exchange for one torrent: what peers tell us, what we tell them.

Apart from the driver (:mod:`swarmhub.engine.torrent`) and from the per-peer books
(:class:`~swarmhub.engine.pex.PexPeer`, pure): this part walks the torrent's peer
connections, sends ``ut_pex`` messages and hands received addresses to the core, which
schedules the dials as it does a tracker's.
"""

from __future__ import annotations

import logging
from typing import cast

from swarmhub.engine.peer import Peer
from swarmhub.engine.pex import PexPeer, listen_addrs
from swarmhub.engine.services import DriverHost
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import PexMessage, encode_pex

__all__ = ["PexDriver"]

log = logging.getLogger(__name__)


class PexDriver:
    """The ut_pex exchange of one torrent's peers (called by its driver)."""

    def __init__(self, torrent: DriverHost) -> None:
        self.torrent = torrent

    def own_addrs(self) -> set[tuple[str, int]]:
        """Addresses that are us (never dialled, never taken from PEX)."""
        t = self.torrent
        own = set(t.swarm.dialer.own)
        host, port = t.session.listen_addr
        if port and host in ("", "0.0.0.0", "::"):
            own |= {("127.0.0.1", port), ("::1", port)}
        return own

    def received(self, peer: Peer, msg: PexMessage) -> None:
        """A peer's ut_pex message: its new peers go to the core like a tracker's."""
        t = self.torrent
        now = t.clock()
        if peer.pex is None:
            peer.pex = PexPeer(now)
        seeds: list[tuple[str, int]] = []
        addrs = peer.pex.received(now, msg, own=self.own_addrs(), seeds=seeds)
        if addrs:
            log.debug("%s: %d peers from PEX of %s", t.meta.name, len(addrs), peer)
            t.swarm.add_peers(addrs, now, seeds)
            t._flush()

    def tick(self, now: float) -> None:
        """Send each ut_pex peer the changes in our peer list, about once a minute."""
        states = self.torrent.swarm.peers
        current = listen_addrs(states.values())
        for handle, ps in list(states.items()):
            peer = cast("Peer", handle)
            their_id = peer.ext_ids.get("ut_pex")
            if not their_id:
                continue
            if peer.pex is None:
                peer.pex = PexPeer(now)
            them = () if ps.listen_addr is None else (ps.listen_addr,)
            msg = peer.pex.poll(now, current, exclude=them)
            if msg is not None:
                peer.send(m.Extended(their_id, encode_pex(msg)))
