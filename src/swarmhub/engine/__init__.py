"""The BitTorrent engine: pure decision cores plus the asyncio session that drives them.

Re-exported here are the sans-IO parts, which import nothing from asyncio land:
:class:`Swarm` (one torrent's swarm: events in, :mod:`actions <swarmhub.engine.actions>`
out), and the pieces it is made of — :class:`PiecePicker` (which blocks to request),
:func:`choose_unchoked` (who may download from us), :class:`SuperSeeder`, the rate
meters and limits. The session, torrents (the asyncio driver of a :class:`Swarm`) and
peer connections live in ``engine.session``, ``engine.torrent`` and ``engine.peer``.
"""

from swarmhub.engine.actions import (
    Action,
    Announce,
    Banned,
    Broadcast,
    Close,
    Completed,
    Connect,
    PieceFailed,
    Send,
    Serve,
    Verify,
)
from swarmhub.engine.choker import ChokeDecision, ChokerSettings, PeerStats, choose_unchoked
from swarmhub.engine.peerstate import PeerState, RateMeter
from swarmhub.engine.picker import Block, BlockResult, PiecePicker, pad_blocks_for
from swarmhub.engine.ratelimit import RateLimiter, TokenBucket, acquire_all
from swarmhub.engine.schedule import Dialer, TrackerSchedule
from swarmhub.engine.superseed import SuperSeeder
from swarmhub.engine.swarm import Swarm, ban_key

__all__ = [
    "Action",
    "Announce",
    "Banned",
    "Block",
    "BlockResult",
    "Broadcast",
    "ChokeDecision",
    "ChokerSettings",
    "Close",
    "Completed",
    "Connect",
    "Dialer",
    "PeerState",
    "PeerStats",
    "PieceFailed",
    "PiecePicker",
    "RateLimiter",
    "RateMeter",
    "Send",
    "Serve",
    "SuperSeeder",
    "Swarm",
    "TokenBucket",
    "TrackerSchedule",
    "Verify",
    "acquire_all",
    "ban_key",
    "choose_unchoked",
    "pad_blocks_for",
]
