"""What the asyncio pieces of the engine need from each other, as small Protocols.

The session owns shared resources (listening sockets, thread pools, HTTP client, global
limits); a torrent drives one swarm; a peer connection moves bytes. Each depends on the
*shape* of the one above it, written here, not on its module — so ``engine.torrent``,
``engine.peer`` and ``engine.session`` import in one direction only (session -> torrent
-> peer -> services), and tests can hand in fakes. The torrent's own I/O parts (uploads,
web seeds, piece I/O, chosen pieces) see their driver as a :class:`DriverHost`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from swarmhub.metainfo.model import Metainfo
from swarmhub.settings import Settings
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import ExtensionHandshake, PexMessage

if TYPE_CHECKING:
    from swarmhub.discovery.httpget import HttpClient
    from swarmhub.discovery.tracker import TrackerTiers
    from swarmhub.engine.picker import Block
    from swarmhub.engine.status import TorrentState
    from swarmhub.engine.swarm import Swarm
    from swarmhub.storage.files import TorrentStorage

__all__ = ["DriverHost", "ListenerServices", "PeerHost", "PeerServices", "TorrentServices"]


class PeerHost(Protocol):
    """What a peer connection needs from its torrent."""

    meta: Metainfo
    settings: Settings
    swarm: Swarm  # (read: the extension handshake's upload_only)
    @property
    def pex_enabled(self) -> bool:
        """BEP 11 on for this torrent (not private, the ``pex`` setting on)."""
        ...

    def can_accept(self, addr: tuple[str, int], peer_id: bytes,
                   outgoing: bool = False) -> str | None: ...
    def on_peer_connected(self, peer: Any) -> None: ...
    def on_peer_disconnected(self, peer: Any, reason: str) -> None: ...
    def on_message(self, peer: Hashable, msg: m.Message) -> None: ...
    def on_block(self, peer: Hashable, msg: m.Piece) -> None: ...
    def on_haves(self, peer: Hashable, indices: list[int]) -> None:
        """A run of Have messages (their indices checked by the wire core)."""
        ...
    def on_requests(self, peer: Hashable, reqs: list[m.Request]) -> None:
        """A run of Request messages (checked by the wire core); each may be answered
        with at most one RejectRequest (17 bytes, corked)."""
        ...
    def on_blocks(self, peer: Hashable, view: memoryview, blocks: list[Block],
                  starts: list[int]) -> None:
        """Blocks whose data is ``view[starts[k]:starts[k] + blocks[k].length]``."""
        ...
    def on_ext_handshake(self, peer: Hashable, hs: ExtensionHandshake) -> None:
        """The peer's BEP 10 handshake (``reqq``, its listen port ``p``) for the core."""
        ...
    def hashes_for(self, req: m.HashRequest) -> bytes | None: ...
    def on_pex(self, peer: Any, msg: PexMessage) -> None: ...


class PeerServices(Protocol):
    """What a peer connection needs from the session."""

    settings: Settings
    peer_id: bytes
    reserved: bytes
    listen_port: int
    pending: set[Any]

    def torrent_for_hash(self, info_hash: bytes) -> PeerHost | None: ...
    def handshake_for(self, torrent: PeerHost,
                      theirs: m.Handshake | None = None) -> m.Handshake: ...


class ListenerServices(PeerServices, Protocol):
    """What accepting an incoming connection needs from the session: its torrents (an
    encrypted handshake names its torrent only by a hash of the info-hash)."""

    @property
    def torrents(self) -> Mapping[bytes, PeerHost]: ...


class TorrentServices(PeerServices, Protocol):
    """What a torrent needs from the session."""

    state_dir: Path
    disk_pool: ThreadPoolExecutor
    hash_pool: ThreadPoolExecutor
    hash_threads: int
    listen_addr: tuple[str, int]
    peer_count: int
    #: ``(info_hash, addr, peer_id, outgoing) -> refusal or None`` (None: admit all)
    peer_filter: Callable[[bytes, tuple[str, int], bytes, bool], str | None] | None

    async def http(self) -> HttpClient: ...
    def tracker_tiers(self, info_hash: bytes, tiers: list[list[str]]) -> TrackerTiers: ...
    def charge_download(self, n: int, now: float) -> float: ...
    async def charge_upload(self, n: int) -> None: ...


class DriverHost(Protocol):
    """What a torrent's I/O parts need from its asyncio driver (:class:`Torrent`): the
    core to feed, the files, the clock, and the driver's two ways of answering back."""

    meta: Metainfo
    #: replaced (not mutated) when limits change: read it each time, never keep it
    settings: Settings
    session: TorrentServices
    swarm: Swarm
    storage: TorrentStorage
    state: TorrentState
    clock: Callable[[], float]
    #: set once :meth:`Torrent.stop` began: loops end, no peer may join
    _stopping: bool

    def _flush(self) -> None:
        """Carry out the core's queued actions (after feeding it an event)."""
        ...

    def _fail(self, message: str) -> None:
        """Stop the torrent with an error (a storage failure)."""
        ...
