"""Torrent metainfo: .torrent files (v1, v2, hybrid), merkle trees, magnet links, safe paths.

Everything public lives in the submodules and is re-exported here::

    from swarmhub.metainfo import create_torrent, load_torrent, make_magnet
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swarmhub.metainfo.magnet import Magnet, make_magnet, parse_magnet
from swarmhub.metainfo.merkle import (
    MAX_HASH_REQUEST,
    ZERO_LEAF,
    block_hashes,
    check_hash_request,
    file_root,
    hashes_with_proof,
    next_pow2,
    piece_layer,
    piece_root,
    reduce_layer,
    root_from_layer,
    tree_layers,
    zero_root,
)
from swarmhub.metainfo.model import (
    BLOCK_SIZE,
    FileEntry,
    Metainfo,
    TorrentVersion,
    wire_info_hash,
)
from swarmhub.metainfo.parse import load_torrent, pad_entry, read_torrent, torrent_bytes
from swarmhub.metainfo.paths import MAX_COMPONENT_BYTES, safe_components

if TYPE_CHECKING:
    from swarmhub.metainfo.create import MAX_AUTO_PIECE_LENGTH, auto_piece_length, create_torrent

#: imported on first use: ``get`` and ``seed`` of a .torrent never create one, and the
#: module with its records cost ~1-2 % of ``get``'s instructions before its first peer
_FROM_CREATE = ("MAX_AUTO_PIECE_LENGTH", "auto_piece_length", "create_torrent")


def __getattr__(name: str) -> Any:
    if name in _FROM_CREATE:
        from swarmhub.metainfo import create

        return getattr(create, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BLOCK_SIZE",
    "MAX_AUTO_PIECE_LENGTH",
    "MAX_COMPONENT_BYTES",
    "MAX_HASH_REQUEST",
    "ZERO_LEAF",
    "FileEntry",
    "Magnet",
    "Metainfo",
    "TorrentVersion",
    "auto_piece_length",
    "block_hashes",
    "check_hash_request",
    "create_torrent",
    "file_root",
    "hashes_with_proof",
    "load_torrent",
    "make_magnet",
    "next_pow2",
    "pad_entry",
    "parse_magnet",
    "piece_layer",
    "piece_root",
    "read_torrent",
    "reduce_layer",
    "root_from_layer",
    "safe_components",
    "torrent_bytes",
    "tree_layers",
    "wire_info_hash",
    "zero_root",
]
