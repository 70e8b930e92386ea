"""Peers joining a torrent's swarm: dialling the addresses its core picks, and the checks
a peer passes once its handshake is done.

Apart from the driver (:mod:`swarmhub.engine.torrent`): the order of the checks is the
policy — the session's limits first, then its embedder's ``peer_filter`` (the hub's
private-torrent access rule), then the core's own rules (simultaneous dials among them).
"""

from __future__ import annotations

import logging
from typing import Protocol

from swarmhub.engine import mse_transport
from swarmhub.engine.services import DriverHost, PeerHost
from swarmhub.engine.status import TorrentState

__all__ = ["DialHost", "can_accept", "dial"]

log = logging.getLogger(__name__)


class DialHost(DriverHost, PeerHost, Protocol):
    """A torrent that dials: its connections report back to it as a :class:`PeerHost`."""


def can_accept(t: DriverHost, addr: tuple[str, int], peer_id: bytes,
           outgoing: bool = False) -> str | None:
    """Why a peer that finished its handshake may not join (None: it may): the
    session's limits, its embedder's ``peer_filter``, then the swarm's rules (bans,
    duplicates, the per-torrent cap — which may evict an idle peer to make room)."""
    if t._stopping or t.state is TorrentState.ERROR:
        return "torrent is not active"
    if t.session.peer_count >= t.settings.max_connections:
        return "too many connections in this session"
    admit = t.session.peer_filter
    if admit is not None:
        reason = admit(t.meta.info_hash, addr, peer_id, outgoing)
        if reason:
            return reason
    reason = t.swarm.can_accept(addr, peer_id, t.clock(), outgoing=outgoing,
                                local_id=t.session.peer_id)
    t._flush()
    return reason


async def dial(t: DialHost, addr: tuple[str, int]) -> None:
    """Connect to ``addr`` (a :class:`~swarmhub.engine.actions.Connect` of the core),
    which learns when the attempt is over, whatever its outcome."""
    try:
        await mse_transport.dial(t.session, t, addr, t.settings.handshake_timeout)
    except (OSError, TimeoutError) as exc:
        log.debug("%s: could not connect to %s: %s", t.meta.name, addr, exc)
    finally:
        t.swarm.connect_done(addr)
