"""Chosen files: unchosen files are never created, their edge bytes live in the part file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from helpers import PIECE, make_torrent

from swarmhub.storage import TorrentStorage
from swarmhub.storage.files import PARTS_DIR
from swarmhub.storage.verify import recheck


def write_pieces(st: TorrentStorage, space: bytes, pieces: Iterable[int]) -> None:
    for i in pieces:
        st.write(i * PIECE, space[i * PIECE:(i + 1) * PIECE])


def test_unchosen_file_is_not_created_and_edge_bytes_go_to_the_part_file(
        tmp_path: Path) -> None:
    # a: 1.5 pieces, b: 1 piece straddling pieces 1-2, c: rest; pieces 0-1 touch a
    t = make_torrent([("a", PIECE + PIECE // 2), ("b", PIECE), ("c", PIECE)], pads=False)
    st = TorrentStorage(t.meta, tmp_path)
    st.set_selection([True, False, True])
    st.open()
    assert st.is_parked(1)
    write_pieces(st, t.space, range(t.meta.num_pieces))  # edge pieces come whole
    assert not (tmp_path / "t" / "b").exists()
    assert (tmp_path / "t" / "a").read_bytes() == t.contents[0]
    assert (tmp_path / "t" / "c").read_bytes() == t.contents[2]
    parts = tmp_path / PARTS_DIR / t.meta.info_hash.hex()
    assert st.parts_path == parts and parts.exists()
    for i in range(t.meta.num_pieces):  # uploads and rechecks see whole pieces
        assert st.read_piece(i) == t.space[i * PIECE:(i + 1) * PIECE]
    assert all(recheck(t.meta, st))
    st.close()


def test_choosing_a_parked_file_later_creates_it_from_the_part_file(tmp_path: Path) -> None:
    # b spans pieces 1..4; only its edge pieces (1 and 4) are written
    t = make_torrent([("a", PIECE + 100), ("b", 3 * PIECE), ("c", PIECE)], pads=False)
    st = TorrentStorage(t.meta, tmp_path)
    st.set_selection([True, False, True])
    st.open()
    write_pieces(st, t.space, [0, 1, 4])
    st.close()

    again = TorrentStorage(t.meta, tmp_path)
    again.set_selection(None)
    again.open()
    b = (tmp_path / "t" / "b").read_bytes()
    start = PIECE + 100
    # edge bytes copied in; the middle (never downloaded) is still a hole of zeros
    assert b[:PIECE - 100] == t.contents[1][:PIECE - 100]
    tail = start + 3 * PIECE - 4 * PIECE
    assert b[-tail:] == t.contents[1][-tail:]
    assert b[PIECE - 100:-tail] == bytes(len(b) - (PIECE - 100) - tail)
    assert not (tmp_path / PARTS_DIR / t.meta.info_hash.hex()).exists()  # nothing parked
    ok = recheck(t.meta, again)
    assert list(ok) == [1, 1, 0, 0, 1, 0]  # piece 5 (the rest of c) was never written
    again.close()


def test_an_unchosen_file_already_on_disk_is_used(tmp_path: Path) -> None:
    t = make_torrent([("a", PIECE + 7), ("b", PIECE)], pads=False)
    t.write_files(tmp_path)
    st = TorrentStorage(t.meta, tmp_path)
    st.set_selection([True, False])
    st.open()
    assert not st.is_parked(1)
    assert st.read_piece(1) == t.space[PIECE:2 * PIECE]
    assert not (tmp_path / PARTS_DIR).exists()
    st.close()
