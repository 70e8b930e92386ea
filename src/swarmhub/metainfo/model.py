"""The in-memory form of a torrent, shared by storage, wire and engine.

One *piece space* covers v1, v2 and hybrid torrents alike: files are laid end to end at
``FileEntry.offset``; BEP 47 pad files (explicit in v1/hybrid torrents, implied by the
piece alignment of BEP 52 in v2-only torrents) fill the gaps with zeros that are never
written to disk. Piece ``i`` covers ``[i * piece_length, min((i+1) * piece_length,
total_length))`` of that space, which is exactly what the peer wire protocol indexes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from swarmhub._records import value_methods

__all__ = ["BLOCK_SIZE", "FileEntry", "Metainfo", "TorrentVersion", "wire_info_hash"]

#: The unit of requests on the wire and of v2 merkle leaves (BEP 3, BEP 52).
BLOCK_SIZE = 16 * 1024


def wire_info_hash(v1: bytes | None, v2: bytes | None) -> bytes:
    """The 20-byte hash for handshakes and announces: v1, else v2 truncated (BEP 52)."""
    if v1 is not None:
        return v1
    if v2 is None:
        raise ValueError("a torrent needs a v1 or a v2 info hash")
    return v2[:20]


class TorrentVersion(Enum):
    """Which info dict a torrent carries: v1 (BEP 3), v2 (BEP 52) or both (hybrid)."""

    V1 = "v1"
    V2 = "v2"
    HYBRID = "hybrid"


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class FileEntry:
    """One file (or pad) of a torrent, placed in the piece space.

    ``path`` holds the components below the torrent's root folder; a single-file torrent
    has ``path == (name,)``. Components are already validated as safe (no ``..``, no
    absolute paths, no NUL, no reserved names).
    """

    path: tuple[str, ...]
    length: int
    offset: int
    pad: bool = False
    #: v2 merkle root (32 bytes) of a non-empty file; None for v1-only, pads, empty files.
    pieces_root: bytes | None = None
    #: BEP 47 attribute letters ("x" executable, "h" hidden, "p" pad).
    attr: str = ""

    @property
    def end(self) -> int:
        return self.offset + self.length


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Metainfo:
    """A parsed (or freshly created) torrent; build it with :mod:`swarmhub.metainfo`."""

    name: str
    piece_length: int
    #: Data files and pads, in piece-space order.
    files: tuple[FileEntry, ...]
    #: End of the piece space (the sum of all lengths, pads included).
    total_length: int
    #: The exact bencoded info dict; the info hashes are taken over these bytes.
    info_bytes: bytes
    #: SHA-1 of ``info_bytes`` when the torrent has v1 data, else None.
    info_hash_v1: bytes | None
    #: SHA-256 of ``info_bytes`` when the torrent has v2 data, else None.
    info_hash_v2: bytes | None
    #: Concatenated 20-byte SHA-1 piece hashes (v1/hybrid), else None.
    pieces_v1: bytes | None
    #: v2 ``piece layers``: pieces root -> concatenated 32-byte piece hashes, for files
    #: larger than one piece (smaller files are verified by their root alone).
    piece_layers: Mapping[bytes, bytes] = field(default_factory=dict)
    #: Tracker tiers (BEP 12); ``announce`` alone becomes one tier.
    trackers: tuple[tuple[str, ...], ...] = ()
    #: BEP 19 web seeds.
    url_list: tuple[str, ...] = ()
    #: BEP 27: peers only from the tracker; no DHT, PEX or LSD.
    private: bool = False
    #: v1 single-file form (``length`` in the info dict, no ``files`` list).
    single_file: bool = False
    comment: str = ""
    created_by: str = ""
    creation_date: int | None = None

    @property
    def version(self) -> TorrentVersion:
        if self.info_hash_v1 is not None and self.info_hash_v2 is not None:
            return TorrentVersion.HYBRID
        return TorrentVersion.V2 if self.info_hash_v2 is not None else TorrentVersion.V1

    @property
    def info_hash(self) -> bytes:
        """The 20-byte hash used in handshakes and tracker announces (BEP 52 truncates v2)."""
        return wire_info_hash(self.info_hash_v1, self.info_hash_v2)

    @property
    def num_pieces(self) -> int:
        return -(-self.total_length // self.piece_length) if self.total_length else 0

    def piece_size(self, index: int) -> int:
        """Length of piece ``index`` in the piece space (the last one may be short)."""
        if not 0 <= index < self.num_pieces:
            raise IndexError(f"piece {index} out of range 0..{self.num_pieces - 1}")
        start = index * self.piece_length
        return min(self.piece_length, self.total_length - start)

    @property
    def data_files(self) -> tuple[FileEntry, ...]:
        """The files that exist on disk (pads excluded)."""
        return tuple(f for f in self.files if not f.pad)

    @property
    def data_length(self) -> int:
        """Bytes of real file data (what a user downloads), pads excluded."""
        return sum(f.length for f in self.files if not f.pad)
