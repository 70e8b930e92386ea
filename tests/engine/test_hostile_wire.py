"""Scripted hostile peers against a real seeder (in-process, on loopback): invalid BEP 52
hash requests get a HashReject, and non-canonical bencode in extension messages is
accepted rather than fatal (issue #8 section 5)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hostile import HostilePeer

from swarmhub.engine.session import Session
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import (
    MetadataData,
    MetadataRequest,
    decode_metadata_message,
    encode_metadata_message,
)

PIECES = 64  # 16 KiB pieces: the piece layer is the leaf layer (base 0), 64 wide


@pytest.fixture
async def seeder(tmp_path: Path) -> AsyncIterator[tuple[Metainfo, int]]:
    data = tmp_path / "payload.bin"
    data.write_bytes(random.Random(5).randbytes(PIECES * 16384 - 1000))
    meta = create_torrent(data, version=TorrentVersion.HYBRID, piece_length=16384)
    async with Session(state_dir=tmp_path / "state") as session:
        port = await session.listen("127.0.0.1", 0)
        await session.add(meta, tmp_path, seed_mode=True)
        yield meta, port


@pytest.mark.parametrize(
    ("base", "index", "length", "proofs", "why"),
    [(0, 0, 128, 0, "over-long: more hashes than the layer has"),
     (0, 0, 1 << 20, 0, "far over the 8192 limit"),
     (0, 32, 64, 0, "runs past the end of the layer"),
     (0, 1, 2, 0, "index not a multiple of length"),
     (0, 0, 3, 0, "length not a power of two"),
     (0, 0, 0, 0, "no hashes"),
     (0, 0, 2, 6, "a proof layer above the root"),
     (1, 0, 2, 0, "a base layer we do not serve (only the piece layer)")],
)  # fmt: skip
async def test_invalid_hash_request_gets_hash_reject(
    seeder: tuple[Metainfo, int], base: int, index: int, length: int, proofs: int, why: str
) -> None:
    meta, port = seeder
    root = meta.files[0].pieces_root
    assert root is not None
    peer = await HostilePeer.open(port, meta.info_hash)
    try:
        peer.send(m.HashRequest(root, base, index, length, proofs))
        answer = await peer.expect(lambda ev: isinstance(ev, m.Hashes | m.HashReject), 10)
        assert answer == m.HashReject(root, base, index, length, proofs), why
        # A valid request on the same connection is still answered, and consistently:
        # 2 hashes, then uncles from proof layer 1 up to 5 (one per layer below the root).
        peer.send(m.HashRequest(root, 0, 2, 2, 5))
        answer = await peer.expect(lambda ev: isinstance(ev, m.Hashes | m.HashReject), 10)
        assert isinstance(answer, m.Hashes)
        assert len(answer.hashes) == 32 * (2 + 5)
    finally:
        await peer.close()


async def test_non_canonical_extension_handshake_is_accepted(
    seeder: tuple[Metainfo, int],
) -> None:
    meta, port = seeder
    peer = await HostilePeer.open(port, meta.info_hash)
    try:
        # "v" before "m", and "m"'s keys unsorted, as some clients send it.
        peer.send_ext_handshake(b"d1:v7:hostile1:md6:ut_pexi0e11:ut_metadatai3eee")
        their_ut = (await peer.their_ext_handshake())["ut_metadata"]
        # The seeder kept the connection and learned our ut_metadata id from that dict:
        # it answers a metadata request (unsorted keys again) on id 3.
        request = b"d5:piecei0e8:msg_typei0ee"
        assert decode_metadata_message(request) == MetadataRequest(0)
        peer.send(m.Extended(their_ut, request))
        answer = await peer.expect(lambda ev: isinstance(ev, m.Extended) and ev.ext_id == 3, 10)
        assert isinstance(answer, m.Extended)
        msg = decode_metadata_message(answer.payload)
        assert isinstance(msg, MetadataData)
        assert (msg.piece, msg.total_size) == (0, len(meta.info_bytes))
        assert msg.data == meta.info_bytes[:16384]
        assert encode_metadata_message(MetadataRequest(0)) != request  # it was non-canonical
    finally:
        await peer.close()
