"""A hybrid torrent taken without its piece layers (the hub's short form, which our
``get`` asks for) still answers BEP 52 hash requests once it holds a file: it rejects them
until then, derives the layer from the data on a hash thread at the first request after,
and answers as a torrent with the layers would. Data that does not hash to the file's
pieces root gives no layer: requests stay rejected. Real thread pools and files."""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import until
from swarmhub.engine.pieces import Pieces
from swarmhub.metainfo import load_torrent, torrent_bytes
from swarmhub.metainfo.create import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage import TorrentStorage
from swarmhub.wire import messages as m

PIECE = 64 * 1024
NUM_PIECES = 5  # the layer is 8 wide (32 leaves of 16 KiB, 4 a piece)


def _short(meta: Metainfo) -> Metainfo:
    """``meta`` as the hub's short form parses: the same info dict, no piece layers."""
    raw = torrent_bytes(dataclasses.replace(meta, piece_layers={}))
    return load_torrent(raw, require_piece_layers=False)


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = os.urandom(NUM_PIECES * PIECE - 1000)
    src = tmp_path / "src" / "payload"
    src.parent.mkdir()
    src.write_bytes(data)
    full = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=PIECE)
    storage = TorrentStorage(full, tmp_path / "dst")
    storage.open()
    session = SimpleNamespace(
        settings=Settings(), hash_pool=ThreadPoolExecutor(2), disk_pool=ThreadPoolExecutor(1),
        hash_threads=2)
    try:
        yield full, data, storage, session
    finally:
        storage.close()
        session.hash_pool.shutdown()
        session.disk_pool.shutdown()


def _request(meta: Metainfo) -> m.HashRequest:
    root = meta.files[0].pieces_root
    assert root is not None
    return m.HashRequest(root, 2, 0, 8, 2)  # the whole piece layer, two uncles


async def test_a_torrent_without_layers_answers_hash_requests_once_it_holds_the_file(
        setup) -> None:  # type: ignore[no-untyped-def]
    full, data, storage, session = setup
    short = _short(full)
    assert not short.piece_layers and short.info_hash == full.info_hash
    req = _request(short)
    expected = Pieces(full, storage, session).hashes_for(req, bytes(NUM_PIECES))
    assert expected is not None  # with the layers: answered from them, file or not
    pieces = Pieces(short, storage, session)
    storage.write(0, data)
    # a piece short of the file: rejected, and nothing is derived
    partial = b"\1" * (NUM_PIECES - 1) + b"\0"
    assert pieces.hashes_for(req, partial) is None
    session.hash_pool.submit(lambda: None).result()  # a derivation would have run by now
    assert pieces.hashes_for(req, partial) is None
    # the whole file: the first request is rejected and starts the derivation
    have = b"\1" * NUM_PIECES
    assert pieces.hashes_for(req, have) is None
    await until(lambda: pieces.hashes_for(req, have) is not None, "the derived layer")
    assert pieces.hashes_for(req, have) == expected


async def test_data_that_is_not_the_files_gives_no_layer(
        setup, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    full, data, storage, session = setup
    short = _short(full)
    req = _request(short)
    pieces = Pieces(short, storage, session)
    storage.write(0, data[:PIECE] + bytes(len(data) - PIECE))  # not what the torrent says
    have = b"\1" * NUM_PIECES
    with caplog.at_level(logging.WARNING, logger="swarmhub.engine.pieces"):
        assert pieces.hashes_for(req, have) is None
        await until(lambda: "does not hash to its v2 pieces root" in caplog.text,
                    "the derivation's verdict")
    assert pieces.hashes_for(req, have) is None


async def test_a_seeding_session_without_layers_answers_a_peers_hash_requests(
        tmp_path: Path) -> None:
    """Over the wire: a session seeding the short form rejects the first hash request
    (the derivation starts), then answers with the layer a full torrent has."""
    from hostile import HostilePeer

    from swarmhub.engine.session import Session

    data = tmp_path / "payload.bin"
    data.write_bytes(os.urandom(NUM_PIECES * PIECE - 1000))
    full = create_torrent(data, version=TorrentVersion.HYBRID, piece_length=PIECE)
    req = _request(full)
    async with Session(state_dir=tmp_path / "state") as session:
        port = await session.listen("127.0.0.1", 0)
        await session.add(full, tmp_path, seed_mode=True)
        peer = await HostilePeer.open(port, full.info_hash)
        try:
            peer.send(req)
            expected = await peer.expect(lambda ev: isinstance(ev, m.Hashes), 10)
        finally:
            await peer.close()
        await session.remove(full.info_hash)
        await session.add(_short(full), tmp_path, seed_mode=True)
        peer = await HostilePeer.open(port, full.info_hash)
        try:
            peer.send(req)
            first = await peer.expect(lambda ev: isinstance(ev, m.Hashes | m.HashReject), 10)
            assert first == m.HashReject(req.pieces_root, req.base_layer, req.index,
                                         req.length, req.proof_layers)
            torrent = session.torrent_for_hash(full.info_hash)
            assert torrent is not None
            # triggered on state: the reject started the derivation; once its layer is in
            # hand, the same request is answered
            await until(lambda: req.pieces_root in torrent.pieces._derived,
                        "the derived piece layer")
            peer.send(req)
            answer = await peer.expect(lambda ev: isinstance(ev, m.Hashes | m.HashReject), 10)
            assert answer == expected
        finally:
            await peer.close()
