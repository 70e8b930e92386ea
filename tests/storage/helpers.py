"""Build Metainfo objects for storage tests without the metainfo parser.

v1 piece hashes come from hashlib over the piece space; v2 roots and piece layers from
``swarmhub.metainfo.merkle``. Layouts follow BEP 47 (explicit pads) and BEP 52 (files
aligned to pieces, pads implied).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmhub.bencode import bencode
from swarmhub.metainfo import merkle
from swarmhub.metainfo.model import FileEntry, Metainfo, TorrentVersion

PIECE = 32 * 1024  # two 16 KiB blocks: small, but exercises v2 piece layers


@dataclass
class Torrent:
    meta: Metainfo
    #: The whole piece space (pads as zeros).
    space: bytes
    #: Data of each data file, in ``meta.data_files`` order.
    contents: list[bytes]

    def write_files(self, save_path: Path) -> None:
        """Put the data on disk directly (as another client would have left it)."""
        for entry, data in zip(self.meta.data_files, self.contents, strict=True):
            path = file_path(self.meta, save_path, entry)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def file_path(meta: Metainfo, save_path: Path, entry: FileEntry) -> Path:
    if meta.single_file:
        return save_path / meta.name
    return save_path.joinpath(meta.name, *entry.path)


def make_torrent(
    files: Sequence[tuple[str, bytes | int]],
    *,
    version: TorrentVersion = TorrentVersion.V1,
    piece_length: int = PIECE,
    pads: bool = True,
    name: str = "t",
    single_file: bool = False,
    seed: int = 0,
) -> Torrent:
    """A torrent over ``files`` (path "a/b.bin" -> data or a size for random data).

    ``pads``: v1 gets explicit BEP 47 pad entries after each unaligned file (hybrid always
    does); v2-only gets explicit pad entries when True, bare gaps when False.
    """
    rng = random.Random(seed)
    datas = [d if isinstance(d, bytes) else rng.randbytes(d) for _, d in files]
    entries: list[FileEntry] = []
    pos = 0
    aligned = version is not TorrentVersion.V1 or pads
    for i, ((path, _), data) in enumerate(zip(files, datas, strict=True)):
        root = None
        if version is not TorrentVersion.V1 and data:
            if len(data) <= piece_length:
                root = merkle.file_root(data)
            else:
                layer = merkle.piece_layer(merkle.block_hashes(data), piece_length)
                root = merkle.root_from_layer(layer, piece_length, len(data))
        parts = (name,) if single_file else tuple(path.split("/"))
        entries.append(FileEntry(parts, len(data), pos, pieces_root=root))
        pos += len(data)
        last = i == len(files) - 1
        gap = -pos % piece_length
        if aligned and gap and data and not last:
            explicit = version is not TorrentVersion.V2 or pads
            if explicit:
                entries.append(FileEntry((".pad", str(gap)), gap, pos, pad=True, attr="p"))
            pos += gap
    total = pos
    space = bytearray(total)
    for entry, data in zip((e for e in entries if not e.pad), datas, strict=True):
        space[entry.offset : entry.end] = data
    layers: dict[bytes, bytes] = {}
    if version is not TorrentVersion.V1:
        for entry, data in zip((e for e in entries if not e.pad), datas, strict=True):
            if entry.pieces_root is not None and len(data) > piece_length:
                layer = merkle.piece_layer(merkle.block_hashes(data), piece_length)
                layers[entry.pieces_root] = b"".join(layer)
    pieces_v1 = None
    if version is not TorrentVersion.V2:
        pieces_v1 = b"".join(
            hashlib.sha1(space[i : i + piece_length]).digest()
            for i in range(0, total, piece_length)
        )
    info_bytes = bencode(
        {b"name": name.encode(), b"piece length": piece_length, b"nonce": os.urandom(8)}
    )
    meta = Metainfo(
        name=name,
        piece_length=piece_length,
        files=tuple(entries),
        total_length=total,
        info_bytes=info_bytes,
        info_hash_v1=hashlib.sha1(info_bytes).digest() if pieces_v1 is not None else None,
        info_hash_v2=(
            hashlib.sha256(info_bytes).digest() if version is not TorrentVersion.V1 else None
        ),
        pieces_v1=pieces_v1,
        piece_layers=layers,
        single_file=single_file,
    )
    return Torrent(meta, bytes(space), datas)
