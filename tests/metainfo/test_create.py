from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.errors import MetainfoError, StorageError
from swarmhub.metainfo import (
    BLOCK_SIZE,
    Metainfo,
    TorrentVersion,
    auto_piece_length,
    create_torrent,
    load_torrent,
    torrent_bytes,
)

PL = 32 * 1024


def naive_root(data: bytes, pad_to_leaves: int = 0) -> bytes:
    """BEP 52 merkle root written out the slow way (independent of merkle.py)."""
    leaves = [
        hashlib.sha256(data[i : i + BLOCK_SIZE]).digest() for i in range(0, len(data), BLOCK_SIZE)
    ]
    width = 1
    while width < max(len(leaves), pad_to_leaves):
        width *= 2
    layer = leaves + [bytes(32)] * (width - len(leaves))
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
    return layer[0]


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


FILES = {
    "b.bin": rnd(100_000, 1),
    "a.bin": rnd(40_000, 2),
    "empty": b"",
    "sub/c": rnd(70_000, 3),
    "Z": rnd(PL, 4),  # exactly one piece: sorts first (uppercase < lowercase)
    "sub/\u00e9t\u00e9": rnd(5, 5),
}
ORDER = ["Z", "a.bin", "b.bin", "empty", "sub/c", "sub/\u00e9t\u00e9"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("src") / "folder", FILES)


def sha1_pieces(data: bytes, pl: int) -> bytes:
    return b"".join(hashlib.sha1(data[i : i + pl]).digest() for i in range(0, len(data), pl))


def test_v1_multi_file_has_no_pads_and_sorted_files(folder: Path) -> None:
    meta = create_torrent(folder, version=TorrentVersion.V1, piece_length=PL)
    assert meta.version is TorrentVersion.V1
    assert meta.info_hash_v2 is None and not meta.piece_layers
    assert not any(f.pad for f in meta.files)
    assert ["/".join(f.path) for f in meta.files] == ORDER
    data = b"".join(FILES[p] for p in ORDER)
    assert meta.total_length == len(data)
    assert [f.offset for f in meta.files] == [
        sum(len(FILES[p]) for p in ORDER[:i]) for i in range(6)
    ]
    assert meta.pieces_v1 == sha1_pieces(data, PL)
    assert meta.info_hash_v1 == hashlib.sha1(meta.info_bytes).digest()
    assert b"attr" not in meta.info_bytes and b".pad" not in meta.info_bytes
    assert not meta.single_file and meta.name == "folder"


def expected_hybrid_space() -> bytes:
    out = b""
    for i, p in enumerate(ORDER):
        out += FILES[p]
        if i < len(ORDER) and FILES[p]:
            out += bytes(-len(out) % PL)
    return out


def test_hybrid_pads_every_file_to_a_piece_boundary_like_libtorrent(folder: Path) -> None:
    meta = create_torrent(folder, version=TorrentVersion.HYBRID, piece_length=PL)
    layout = [("/".join(f.path), f.length, f.pad) for f in meta.files]
    assert layout == [
        ("Z", PL, False),
        ("a.bin", 40_000, False),
        (".pad/25536", 25536, True),
        ("b.bin", 100_000, False),
        (".pad/31072", 31072, True),
        ("empty", 0, False),
        ("sub/c", 70_000, False),
        (".pad/28304", 28304, True),
        ("sub/\u00e9t\u00e9", 5, False),
        (".pad/32763", 32763, True),  # tail pad after the last file, as libtorrent 2.1 does
    ]
    space = expected_hybrid_space()
    assert meta.total_length == len(space)
    assert meta.pieces_v1 == sha1_pieces(space, PL)
    for f in meta.data_files:
        data = FILES["/".join(f.path)]
        assert f.offset % PL == 0 or not data
        if not data:
            assert f.pieces_root is None
            continue
        assert f.pieces_root == naive_root(data)
        if len(data) > PL:
            layer = meta.piece_layers[f.pieces_root]
            assert layer == b"".join(
                naive_root(data[i : i + PL], PL // BLOCK_SIZE) for i in range(0, len(data), PL)
            )
        else:
            assert f.pieces_root not in meta.piece_layers


def test_v2_has_the_same_piece_space_as_hybrid(folder: Path) -> None:
    v2 = create_torrent(folder, version=TorrentVersion.V2, piece_length=PL)
    hybrid = create_torrent(folder, version=TorrentVersion.HYBRID, piece_length=PL)
    assert v2.version is TorrentVersion.V2 and v2.info_hash_v1 is None and v2.pieces_v1 is None
    assert v2.files == hybrid.files
    assert v2.total_length == hybrid.total_length
    assert dict(v2.piece_layers) == dict(hybrid.piece_layers)
    assert b"pieces" not in v2.info_bytes.replace(b"pieces root", b"")


@pytest.mark.parametrize("version", list(TorrentVersion))
def test_single_file_has_no_pads(tmp_path: Path, version: TorrentVersion) -> None:
    data = rnd(3 * PL + 123, 9)
    (tmp_path / "one.iso").write_bytes(data)
    meta = create_torrent(tmp_path / "one.iso", version=version, piece_length=PL)
    assert meta.files[0].path == ("one.iso",) and len(meta.files) == 1
    assert meta.total_length == len(data) and meta.num_pieces == 4
    assert meta.single_file
    if version is not TorrentVersion.V2:
        assert meta.pieces_v1 == sha1_pieces(data, PL)
        assert b"6:lengthi" in meta.info_bytes and b"5:files" not in meta.info_bytes
    if version is not TorrentVersion.V1:
        assert meta.files[0].pieces_root == naive_root(data)


def test_threads_do_not_change_the_result(folder: Path) -> None:
    one = create_torrent(folder, piece_length=16384, threads=1)
    many = create_torrent(folder, piece_length=16384, threads=7)
    assert one.info_bytes == many.info_bytes
    assert dict(one.piece_layers) == dict(many.piece_layers)


def test_progress_reports_every_data_byte(folder: Path) -> None:
    seen: list[int] = []
    create_torrent(folder, piece_length=PL, progress=seen.append)
    assert sum(seen) == sum(len(d) for d in FILES.values())
    assert all(n > 0 for n in seen)


def test_metadata_fields_reach_the_torrent(folder: Path) -> None:
    meta = create_torrent(
        folder,
        trackers=[["http://a/announce", ""], [], ["udp://b:1"]],
        url_list=["http://seed/"],
        private=True,
        comment="hello",
        created_by="me",
    )
    assert meta.trackers == (("http://a/announce",), ("udp://b:1",))
    assert meta.url_list == ("http://seed/",)
    assert meta.private and b"7:privatei1e" in meta.info_bytes
    assert (meta.comment, meta.created_by) == ("hello", "me")
    assert isinstance(meta.creation_date, int)
    again = load_torrent(torrent_bytes(meta))
    assert again == meta


def test_executable_files_get_attr_x(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"run.sh": b"#!/bin/sh\n" * 100, "data": b"x" * 10})
    os.chmod(root / "run.sh", 0o755)
    meta = create_torrent(root, piece_length=PL)
    attrs = {"/".join(f.path): f.attr for f in meta.data_files}
    assert attrs == {"data": "", "run.sh": "x"}


def test_auto_piece_length_aims_at_1000_to_2000_pieces() -> None:
    assert auto_piece_length(1) == 16 * 1024
    assert auto_piece_length(1 << 40) == 16 * 1024 * 1024
    for total in (50 << 20, 512 << 20, 3 << 30, (4 << 30) + 1):
        pl = auto_piece_length(total)
        assert 1000 <= -(-total // pl) <= 2000


@given(st.integers(min_value=1, max_value=1 << 45))
def test_auto_piece_length_property(total: int) -> None:
    pl = auto_piece_length(total)
    assert pl & (pl - 1) == 0 and 16 * 1024 <= pl <= 16 * 1024 * 1024
    pieces = -(-total // pl)
    assert pieces <= 2000 or pl == 16 * 1024 * 1024
    assert pieces > 1000 or pl == 16 * 1024


def test_auto_piece_length_is_used(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(rnd(40 << 20 >> 4, 3))  # 2.5 MiB
    meta = create_torrent(tmp_path / "f", version=TorrentVersion.V1)
    assert meta.piece_length == auto_piece_length(40 << 20 >> 4)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(MetainfoError, match="no regular files"):
        create_torrent(tmp_path / "empty")


def test_only_empty_files_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "t", {"a": b"", "b/c": b""})
    with pytest.raises(MetainfoError, match="only empty files"):
        create_torrent(tmp_path / "t")


def test_missing_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nope"):
        create_torrent(tmp_path / "nope")


def test_symlinks_are_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path / "t", {"real": b"r" * 1000})
    (tmp_path / "outside").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", root / "link")
    os.symlink(tmp_path, root / "dirlink")
    with caplog.at_level(logging.INFO, logger="swarmhub.metainfo.create"):
        meta = create_torrent(root, version=TorrentVersion.V1)
    assert [f.path for f in meta.files] == [("real",)]
    assert sum("skipping symlink" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("bad", [0, 1000, 8192, 3 * 16384])
def test_bad_piece_length_is_refused(folder: Path, bad: int) -> None:
    with pytest.raises(MetainfoError, match="power of two"):
        create_torrent(folder, piece_length=bad)


@pytest.mark.parametrize("name", ["CON.txt", "a\\b", "trailing.", "bad\nname"])
def test_unsafe_file_names_are_refused(tmp_path: Path, name: str) -> None:
    make_tree(tmp_path / "t", {"ok": b"1", name: b"2"})
    with pytest.raises(MetainfoError, match="unsafe path"):
        create_torrent(tmp_path / "t")


def test_memory_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a few piece buffers exist at once, however many pieces the data has."""
    from swarmhub.metainfo import create as create_mod

    (tmp_path / "big").write_bytes(rnd(300 * 16384, 11))
    allocated = 0

    def counting(size: int) -> bytearray:
        nonlocal allocated
        allocated += 1
        return bytearray(size)

    monkeypatch.setattr(create_mod, "bytearray", counting, raising=False)
    meta = create_torrent(tmp_path / "big", piece_length=16384, threads=2)
    assert meta.num_pieces == 300
    assert 0 < allocated <= 2 * 4


def test_hybrid_torrent_reloads_identically(folder: Path) -> None:
    meta = create_torrent(folder, piece_length=PL)
    assert isinstance(meta, Metainfo)
    data = torrent_bytes(meta)
    assert meta.info_bytes in data
    assert load_torrent(data) == meta


def test_non_utf8_file_names_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "ok").write_bytes(b"1")
    with open(os.fsencode(root) + b"/bad\xff", "wb") as fh:
        fh.write(b"2")
    with pytest.raises(MetainfoError, match="not valid Unicode"):
        create_torrent(root)


def test_a_file_shrinking_while_hashed_is_a_storage_error_and_leaks_no_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "t", {"a": rnd(100_000, 1), "b": rnd(100_000, 2)})
    before = len(os.listdir("/proc/self/fd"))
    real = os.preadv

    def short_read(fd: int, buffers: list[memoryview], offset: int) -> int:
        return 0 if offset >= 50_000 else real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", short_read)
    with pytest.raises(StorageError, match="shrank"):
        create_torrent(tmp_path / "t", piece_length=16384, threads=2)
    assert len(os.listdir("/proc/self/fd")) == before


def test_folder_with_one_file_is_multi_file_in_v1(tmp_path: Path) -> None:
    make_tree(tmp_path / "box", {"inner.txt": b"hello" * 1000})
    meta = create_torrent(tmp_path / "box", version=TorrentVersion.V1)
    assert not meta.single_file and meta.name == "box"
    assert [f.path for f in meta.files] == [("inner.txt",)]


def test_many_small_files_do_not_exhaust_file_descriptors(tmp_path: Path) -> None:
    import resource

    files = {f"d{i % 7}/f{i:05d}": rnd(i % 50, i) for i in range(3000)}
    make_tree(tmp_path / "t", files)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(96, hard), hard))
    try:
        meta = create_torrent(tmp_path / "t", version=TorrentVersion.V1, piece_length=16384)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    order = sorted(files, key=lambda p: [c.encode() for c in p.split("/")])
    assert ["/".join(f.path) for f in meta.files] == order
    assert meta.pieces_v1 == sha1_pieces(b"".join(files[p] for p in order), 16384)
