from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import PIECE, Torrent, file_path, make_torrent

from swarmhub.errors import InconsistentHashesError
from swarmhub.metainfo.model import BLOCK_SIZE, TorrentVersion
from swarmhub.storage import PieceVerifier, TorrentStorage, recheck

MIXED: list[tuple[str, bytes | int]] = [
    ("small.bin", 5000),  # less than one piece: verified by its v2 root
    ("empty", b""),
    ("exact.bin", PIECE),  # exactly one piece
    ("dir/large.bin", 3 * PIECE + 4321),  # piece layer, short last piece
    ("tail.bin", 2 * PIECE),
]
VERSIONS = [TorrentVersion.V1, TorrentVersion.V2, TorrentVersion.HYBRID]


def piece(t: Torrent, index: int) -> bytes:
    start = index * t.meta.piece_length
    return t.space[start : start + t.meta.piece_size(index)]


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x5A]) + data[pos + 1 :]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_good_piece_passes_and_any_flipped_byte_fails(version: TorrentVersion) -> None:
    t = make_torrent(MIXED, version=version)
    v = PieceVerifier(t.meta)
    for index in range(t.meta.num_pieces):
        good = piece(t, index)
        assert v.check(index, good)
        assert v.check(index, bytearray(good))
        assert v.check(index, memoryview(good))
        assert not v.check(index, flip(good, 0))
        assert not v.check(index, flip(good, len(good) - 1))
        assert not v.check(index, good[:-1])
        assert not v.check(index, good + b"\0")
    assert not v.check(-1, piece(t, 0))
    assert not v.check(t.meta.num_pieces, piece(t, 0))


def test_v1_hash_covers_pads_as_zeros() -> None:
    t = make_torrent([("a", 1000), ("b", 1000)], version=TorrentVersion.V1, pads=True)
    v = PieceVerifier(t.meta)
    assert v.check(0, t.contents[0] + bytes(PIECE - 1000))
    assert not v.check(0, t.contents[0] + b"\1" + bytes(PIECE - 1001))


def test_v2_small_file_is_checked_against_its_root_and_pad_must_be_zero() -> None:
    t = make_torrent([("a", 1000), ("b", 1000)], version=TorrentVersion.V2, pads=False)
    v = PieceVerifier(t.meta)
    assert t.meta.pieces_v1 is None and not t.meta.piece_layers
    assert v.check(0, t.contents[0] + bytes(PIECE - 1000))
    assert not v.check(0, t.contents[0] + b"\1" + bytes(PIECE - 1001))
    assert v.check(1, t.contents[1])  # the last piece has no pad


def test_v2_large_file_uses_the_piece_layer_with_local_piece_numbers() -> None:
    t = make_torrent(
        [("first", 2 * PIECE + 1), ("big", 4 * PIECE + 100)], version=TorrentVersion.V2
    )
    big = t.meta.data_files[1]
    assert big.offset == 3 * PIECE and big.pieces_root in t.meta.piece_layers
    v = PieceVerifier(t.meta)
    assert all(v.check(i, piece(t, i)) for i in range(t.meta.num_pieces))
    # Swapping two of the big file's pieces breaks both (the layer index matters).
    p3, p4 = piece(t, 3), piece(t, 4)
    assert not v.check(3, p4) and not v.check(4, p3)


def test_v2_without_piece_layers_cannot_verify_large_files() -> None:
    t = make_torrent([("big", 3 * PIECE)], version=TorrentVersion.V2)
    meta = replace(t.meta, piece_layers={})
    assert not PieceVerifier(meta).check(0, piece(t, 0))


def _sha1_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the verifier's SHA-1 computations (one entry per call)."""
    import swarmhub.storage.verify as verify

    calls: list[int] = []
    real = hashlib.sha1

    def counting(data: bytes | memoryview = b"") -> hashlib._Hash:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(verify, "hashlib", SimpleNamespace(sha1=counting))
    return calls


def test_hybrid_pieces_are_decided_by_v2_with_sha1_on_a_sample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The single-hash path is what runs: SHA-1 only for pieces 0, k, 2k... and the last."""
    t = make_torrent([("big", 40 * PIECE + 5), ("small", 100)], version=TorrentVersion.HYBRID)
    n = t.meta.num_pieces
    v = PieceVerifier(t.meta, v1_stride=16)
    calls = _sha1_calls(monkeypatch)
    assert all(v.check(i, piece(t, i)) for i in range(n))
    assert len(calls) == len({0, 16, 32, n - 1})
    assert [i for i in range(n) if v.v1_due(i)] == [0, 16, 32, n - 1]
    calls.clear()
    assert all(PieceVerifier(t.meta, v1_stride=1).check(i, piece(t, i)) for i in range(n))
    assert len(calls) == n


@pytest.mark.parametrize("stride", [1, 3, 16, 100])
@pytest.mark.parametrize("pieces", [1, 2, 16, 17, 41])
def test_v1_sample_marks_the_pieces_v1_due_names(pieces: int, stride: int) -> None:
    """The uploader's per-piece SHA-1 flags, built by slices, are v1_due's answers."""
    t = make_torrent([("f", (pieces - 1) * PIECE + 7)], version=TorrentVersion.HYBRID)
    v = PieceVerifier(t.meta, v1_stride=stride)
    assert t.meta.num_pieces == pieces
    assert v.v1_sample() == bytearray(v.v1_due(i) for i in range(pieces))


def test_hybrid_rejects_bad_data_whatever_the_sample() -> None:
    t = make_torrent([("big", 20 * PIECE)], version=TorrentVersion.HYBRID)
    v = PieceVerifier(t.meta)
    for index in (0, 1, 19):  # sampled, not sampled, last
        good = piece(t, index)
        assert v.check(index, good)
        assert not v.check(index, flip(good, len(good) // 2))


def test_hybrid_whose_v1_and_v2_hashes_disagree_is_reported() -> None:
    """A torrent describing two contents (libtorrent: torrent_inconsistent_hashes) raises,
    whichever hash is the wrong one, on a piece the SHA-1 sample covers; a piece failing
    v2 is always checked against SHA-1 too."""
    t = make_torrent([("big", 20 * PIECE), ("small", 100)], version=TorrentVersion.HYBRID)
    big_root = t.meta.data_files[0].pieces_root
    assert big_root is not None and t.meta.pieces_v1 is not None
    v1 = t.meta.pieces_v1

    def bad_sha1(i: int) -> PieceVerifier:
        return PieceVerifier(replace(t.meta, pieces_v1=v1[:i * 20] + bytes(20) + v1[i * 20 + 20:]))

    with pytest.raises(InconsistentHashesError, match="piece 0 matches its v2"):
        bad_sha1(0).check(0, piece(t, 0))
    assert bad_sha1(1).check(1, piece(t, 1))  # outside the sample: v2 decides alone
    with pytest.raises(InconsistentHashesError):
        PieceVerifier(bad_sha1(1).meta, v1_stride=1).check(1, piece(t, 1))
    layer = t.meta.piece_layers[big_root]
    bad_layer = replace(t.meta, piece_layers={big_root: layer[:32] + bytes(32) + layer[64:]})
    with pytest.raises(InconsistentHashesError, match="piece 1 fails its v2"):
        PieceVerifier(bad_layer).check(1, piece(t, 1))  # SHA-1 right, v2 wrong
    assert PieceVerifier(bad_layer).check(0, piece(t, 0))
    assert not PieceVerifier(bad_layer).check(1, flip(piece(t, 1), 9))  # both wrong: bad data
    # Piece layers not fetched yet (magnet): v1 alone decides for a hybrid torrent.
    no_layers = replace(t.meta, piece_layers={})
    assert PieceVerifier(no_layers).check(1, piece(t, 1))
    assert not PieceVerifier(no_layers).check(1, flip(piece(t, 1), 7))


class _HashLog:
    """A stand-in for the ``hashlib`` of merkle and verify that logs what each SHA-1 and
    SHA-256 is fed, in order: ``("sha256", n)`` / ``("sha1", n)`` per input of n bytes."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def _wrap(self, name: str, real: hashlib._Hash) -> object:
        log = self.log

        class Logged:
            def update(self, data: bytes | memoryview) -> None:
                log.append((name, len(data)))
                real.update(data)

            def digest(self) -> bytes:
                return real.digest()

            def copy(self) -> object:
                raise AssertionError("not used")

        return Logged()

    def sha1(self, data: bytes | memoryview = b"") -> object:
        h = self._wrap("sha1", hashlib.sha1())
        if len(data):
            h.update(data)  # type: ignore[attr-defined]
        return h

    def sha256(self, data: bytes | memoryview = b"") -> object:
        h = self._wrap("sha256", hashlib.sha256())
        if len(data):
            h.update(data)  # type: ignore[attr-defined]
        return h


@pytest.mark.parametrize("pad", [False, True])
def test_a_hybrid_piece_checked_both_ways_is_read_once(pad: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A hybrid piece whose SHA-1 is checked too (``v1``: it goes to a v1 peer; the
    sample) feeds each 16 KiB block to SHA-1 right after that block's SHA-256 leaf, while
    the block is in the core's cache: its bytes come from memory once, not once per hash
    (hashing is memory-bound here). The verdicts are those of two separate hashes."""
    import swarmhub.metainfo.merkle as merkle
    import swarmhub.storage.verify as verify

    size = 4 * PIECE + (5000 if pad else 0)  # pad: the last piece ends in zeros
    t = make_torrent([("big", size), ("small", 100)], version=TorrentVersion.HYBRID)
    v = PieceVerifier(t.meta, v1_stride=16)
    logged = _HashLog()
    monkeypatch.setattr(merkle, "hashlib", logged)
    monkeypatch.setattr(verify, "hashlib", logged)
    for index in range(-(-size // PIECE)):  # the big file's pieces (layer-checked)
        good = piece(t, index)
        n = min(PIECE, size - index * PIECE)  # file bytes; the pad's zeros after them
        for data, want in ((good, True), (flip(good, n - 1), False)):
            logged.log.clear()
            assert v.check(index, data, v1=True) is want
            leaves = [entry for entry in logged.log if entry[1] > 64]  # not tree nodes
            blocks = [min(BLOCK_SIZE, n - b) for b in range(0, n, BLOCK_SIZE)]
            assert leaves[:2 * len(blocks)] == [
                (name, k) for k in blocks for name in ("sha256", "sha1")], logged.log
            assert leaves[2 * len(blocks):] == ([("sha1", PIECE - n)] if n < PIECE else [])


def test_hybrid_both_ways_refuses_inconsistent_hashes_and_bad_blocks() -> None:
    """The one-pass check of both hashes (``v1``) keeps every verdict: a corrupt block in
    any position fails, a piece only one hash accepts is an inconsistent torrent."""
    t = make_torrent([("big", 6 * PIECE + 700)], version=TorrentVersion.HYBRID)
    assert t.meta.pieces_v1 is not None
    v1 = t.meta.pieces_v1
    v = PieceVerifier(t.meta)
    for index in range(t.meta.num_pieces):
        good = piece(t, index)
        assert v.check(index, good, v1=True)
        for pos in range(0, len(good), BLOCK_SIZE // 2):
            assert not v.check(index, flip(good, pos), v1=True)
    bad_sha1 = PieceVerifier(replace(t.meta, pieces_v1=v1[:40] + bytes(20) + v1[60:]))
    assert bad_sha1.check(2, piece(t, 2))  # outside the sample, no v1 peer: v2 decides
    with pytest.raises(InconsistentHashesError, match="piece 2 matches its v2"):
        bad_sha1.check(2, piece(t, 2), v1=True)


def test_recheck_reports_a_hybrid_whose_hashes_disagree(tmp_path: Path) -> None:
    """A recheck (what a seeder serves) checks both hashes of every piece."""
    t = make_torrent([("big", 3 * PIECE)], version=TorrentVersion.HYBRID)
    st = TorrentStorage(t.meta, tmp_path)
    st.open()
    for i in range(t.meta.num_pieces):
        st.write(i * PIECE, piece(t, i))
    st.close()
    assert t.meta.pieces_v1 is not None
    v1 = t.meta.pieces_v1
    meta = replace(t.meta, pieces_v1=v1[:20] + bytes(20) + v1[40:])
    st = TorrentStorage(meta, tmp_path)
    st.open()
    try:
        assert recheck(t.meta, st) == bytearray(b"\1\1\1")
        with pytest.raises(InconsistentHashesError):
            recheck(meta, st)
    finally:
        st.close()


def test_hybrid_rejects_nonzero_pad_even_for_v2_root() -> None:
    t = make_torrent([("a", 1000), ("b", 10)], version=TorrentVersion.HYBRID)
    forged = t.contents[0] + b"\1" + bytes(PIECE - 1001)
    # Make SHA-1 agree with the forged pad: only the v2 check can notice now, and the
    # two hashes disagreeing is an inconsistent torrent, never a good piece.
    assert t.meta.pieces_v1 is not None
    meta = replace(t.meta, pieces_v1=hashlib.sha1(forged).digest() + t.meta.pieces_v1[20:])
    with pytest.raises(InconsistentHashesError):
        PieceVerifier(meta).check(0, forged)
    assert PieceVerifier(meta).check(1, piece(t, 1))


@pytest.mark.parametrize("version", VERSIONS)
def test_recheck_finds_exactly_the_corrupted_pieces(
    tmp_path: Path, version: TorrentVersion
) -> None:
    t = make_torrent(MIXED, version=version)
    t.write_files(tmp_path)
    st = TorrentStorage(t.meta, tmp_path)
    assert recheck(t.meta, st) == b"\1" * t.meta.num_pieces
    large = t.meta.data_files[3]
    path = file_path(t.meta, tmp_path, large)
    with open(path, "r+b") as fh:  # corrupt one byte in the large file's second piece
        fh.seek(PIECE + 10)
        fh.write(b"\xee" if t.contents[3][PIECE + 10] != 0xEE else b"\xef")
    st.close()
    have = recheck(t.meta, st, threads=3)
    bad = (large.offset + PIECE + 10) // PIECE
    assert [i for i in range(t.meta.num_pieces) if not have[i]] == [bad]
    st.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_recheck_missing_and_truncated_files_zero_only_their_pieces(
    tmp_path: Path, version: TorrentVersion
) -> None:
    t = make_torrent(MIXED, version=version)
    t.write_files(tmp_path)
    small, _, exact, large, tail = t.meta.data_files
    file_path(t.meta, tmp_path, tail).unlink()
    with open(file_path(t.meta, tmp_path, large), "r+b") as fh:
        fh.truncate(PIECE + 5)  # only the large file's first piece is still whole
    st = TorrentStorage(t.meta, tmp_path)
    have = recheck(t.meta, st)
    expected = bytearray(t.meta.num_pieces)
    pl = t.meta.piece_length
    for entry in (small, exact):
        expected[entry.offset // pl] = 1
    if large.offset % pl == 0:  # v2/hybrid: aligned, its first piece is its own
        expected[large.offset // pl] = 1
    assert have == expected
    st.close()


def test_recheck_only_subset_and_progress(tmp_path: Path) -> None:
    t = make_torrent([("a", 10 * PIECE + 3)], version=TorrentVersion.HYBRID)
    t.write_files(tmp_path)
    st = TorrentStorage(t.meta, tmp_path)
    seen: list[int] = []
    have = recheck(t.meta, st, threads=2, progress=seen.append, only=[1, 3, 3, 99, 10])
    assert [i for i in range(t.meta.num_pieces) if have[i]] == [1, 3, 10]
    assert seen == sorted(seen) and seen[-1] == 3
    assert threading.current_thread() is threading.main_thread()
    st.close()


def test_recheck_reuses_one_buffer_per_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_torrent([("a", 40 * PIECE)], version=TorrentVersion.V1)
    t.write_files(tmp_path)
    st = TorrentStorage(t.meta, tmp_path)
    buffers: set[int] = set()
    real = st.read_into

    def spy(offset: int, buf: memoryview) -> None:
        buffers.add(id(buf.obj))
        real(offset, buf)

    monkeypatch.setattr(st, "read_into", spy)
    assert recheck(t.meta, st, threads=2) == b"\1" * 40
    assert 1 <= len(buffers) <= 2
    st.close()


def test_recheck_of_sparse_unwritten_download_finds_nothing(tmp_path: Path) -> None:
    t = make_torrent([("a", 3 * PIECE), ("b", BLOCK_SIZE)], version=TorrentVersion.HYBRID)
    st = TorrentStorage(t.meta, tmp_path)
    st.open()
    assert recheck(t.meta, st) == bytes(t.meta.num_pieces)
    st.write(0, t.space[:PIECE])
    assert recheck(t.meta, st) == b"\1" + bytes(t.meta.num_pieces - 1)
    st.close()


def test_recheck_bigger_random_torrent_matches_per_piece_check(tmp_path: Path) -> None:
    t = make_torrent(
        [(f"f{i}", n) for i, n in enumerate([70_000, 1, 0, 300_000, 65_536, 123_457])],
        version=TorrentVersion.HYBRID,
        seed=3,
    )
    t.write_files(tmp_path)
    target = file_path(t.meta, tmp_path, t.meta.data_files[3])
    data = bytearray(target.read_bytes())
    data[os.urandom(1)[0] * 1000] ^= 1
    target.write_bytes(data)
    st = TorrentStorage(t.meta, tmp_path)
    v = PieceVerifier(t.meta)
    have = recheck(t.meta, st, threads=4)
    assert have == bytearray(v.check(i, st.read_piece(i)) for i in range(t.meta.num_pieces))
    assert have.count(0) == 1
    st.close()
