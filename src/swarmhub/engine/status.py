"""What a torrent reports about itself: its state, a status snapshot, and read-only views
of its swarm core.

Apart from the driver (:mod:`swarmhub.engine.torrent`) because progress displays, the
daemon, the hub's metrics and the library API read these without needing the asyncio
machinery. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from swarmhub._records import value_methods
from swarmhub.engine.peerstate import RateMeter
from swarmhub.engine.picker import PiecePicker
from swarmhub.engine.swarm import Swarm
from swarmhub.metainfo.model import Metainfo

__all__ = ["TorrentState", "TorrentStatus", "TorrentViews", "snapshot"]


class TorrentState(Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    #: every chosen piece verified, some files left out (we upload what we have)
    FINISHED = "finished"
    ERROR = "error"
    STOPPED = "stopped"


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class TorrentStatus:
    """A snapshot for progress displays and tests."""

    state: TorrentState
    progress: float
    pieces_have: int
    num_pieces: int
    bytes_have: int
    total_bytes: int
    download_rate: float
    upload_rate: float
    downloaded: int
    uploaded: int
    peers: int
    error: str | None
    banned: int
    hash_failures: int
    #: Bytes that came from BEP 19 web seeds (the hub) rather than from peers.
    webseed_bytes: int = 0
    #: Why a download is not moving (every peer banned, none unchoked us…), else None.
    stalled: str | None = None
    #: Bytes of the pieces we want (all of them unless files were left out), and of
    #: those, how many we have: what a progress bar for a selective download shows.
    wanted_bytes: int = 0
    wanted_have: int = 0


def snapshot(s: Swarm, state: TorrentState, error: str | None, total: int,
             now: float) -> TorrentStatus:
    """The status of a torrent whose swarm core is ``s`` (``total``: its length)."""
    n = s.num_pieces
    have_bytes = s.bytes_have()
    if 0 not in s.picker.priorities():
        # every piece wanted (a whole download): no walk over the pieces (a lab peer
        # reports its status every second; the walk was ~3 % of its CPU at 1,024 pieces)
        wanted_bytes, wanted_have = s.total_length, have_bytes
    else:
        prio, size = s.picker.priority, s.piece_size
        wanted = [i for i in range(n) if prio(i)]
        wanted_bytes = sum(map(size, wanted))
        wanted_have = sum(size(i) for i in wanted if s.have[i])
    return TorrentStatus(
        wanted_bytes=wanted_bytes, wanted_have=wanted_have,
        state=state, pieces_have=s.num_have,
        progress=wanted_have / wanted_bytes if wanted_bytes else 1.0,
        num_pieces=n, bytes_have=have_bytes, total_bytes=total,
        download_rate=s.down.rate(now), upload_rate=s.up.rate(now),
        downloaded=s.downloaded, uploaded=s.uploaded, peers=len(s.peers),
        error=error, banned=len(s.banned), hash_failures=s.hash_failures,
        webseed_bytes=s.webseed_bytes,
        stalled=s.stall_reason() if state is TorrentState.DOWNLOADING else None,
    )


class TorrentViews:
    """What :class:`~swarmhub.engine.torrent.Torrent` shows of its core (the old API's
    attributes, :meth:`status`), for callers that only read."""

    swarm: Swarm
    meta: Metainfo
    state: TorrentState
    error: str | None
    clock: Callable[[], float]

    peers = property(lambda self: self.swarm.peers.keys())
    have = property(lambda self: self.swarm.have)
    num_have = property(lambda self: self.swarm.num_have)
    banned = property(lambda self: self.swarm.banned)
    hash_failures = property(lambda self: self.swarm.hash_failures)
    downloaded = property(lambda self: self.swarm.downloaded)
    uploaded = property(lambda self: self.swarm.uploaded)
    webseed_bytes = property(lambda self: self.swarm.webseed_bytes)

    @property
    def down(self) -> RateMeter:
        return self.swarm.down

    @property
    def up(self) -> RateMeter:
        return self.swarm.up

    @property
    def picker(self) -> PiecePicker:
        return self.swarm.picker

    def status(self) -> TorrentStatus:
        return snapshot(self.swarm, self.state, self.error, self.meta.total_length, self.clock())

    def webseed_rate(self) -> float:
        """Recent web-seed bytes/s (kept apart so peers' share can be told from the hub's)."""
        return self.swarm.webseed_meter.rate(self.clock())
