"""The BitTorrent engine: pure decision cores plus the asyncio session that drives them.

Re-exported here are the sans-IO parts, which import nothing from asyncio land:
:class:`PiecePicker` (which blocks to request), :func:`choose_unchoked` (who may
download from us) and the rate limits. The session, torrents and peer connections live
in ``engine.session``, ``engine.torrent`` and ``engine.peer``.
"""

from swarmhub.engine.choker import ChokeDecision, ChokerSettings, PeerStats, choose_unchoked
from swarmhub.engine.picker import Block, BlockResult, PiecePicker, pad_blocks_for
from swarmhub.engine.ratelimit import RateLimiter, TokenBucket, acquire_all

__all__ = [
    "Block",
    "BlockResult",
    "ChokeDecision",
    "ChokerSettings",
    "PeerStats",
    "PiecePicker",
    "RateLimiter",
    "TokenBucket",
    "acquire_all",
    "choose_unchoked",
    "pad_blocks_for",
]
