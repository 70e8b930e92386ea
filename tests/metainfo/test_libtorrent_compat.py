"""Our parser and creator against libtorrent 2.1: same info hashes, files, pads and pieces."""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

import pytest

from conftest import STRICT  # type: ignore[import-not-found,unused-ignore]
from swarmhub.metainfo import (
    Metainfo,
    TorrentVersion,
    create_torrent,
    load_torrent,
    torrent_bytes,
)

# A dev dependency: strict (CI) fails at the import instead of skipping the module.
lt = importlib.import_module("libtorrent") if STRICT else pytest.importorskip("libtorrent")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

FLAGS = {
    TorrentVersion.V1: "v1_only",
    TorrentVersion.V2: "v2_only",
    TorrentVersion.HYBRID: None,
}

MULTI = {
    "a.bin": 40_000,
    "b.bin": 100_000,
    "empty": 0,
    "sub/c": 700_000,
    "sub/deeper/exact": 65_536,
    "zz/last": 333_333,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compat")
    rng = random.Random(52)
    for rel, size in MULTI.items():
        path = root / "multi" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    (root / "single.bin").write_bytes(rng.randbytes(1_234_567))
    (root / "lonely").mkdir()
    (root / "lonely" / "only.bin").write_bytes(rng.randbytes(100_001))
    return root


def lt_make(root: Path, name: str, version: TorrentVersion, piece_length: int) -> bytes:
    fs = lt.file_storage()
    lt.add_files(fs, str(root / name))
    flag = FLAGS[version]
    flags = getattr(lt.create_torrent, flag) if flag else 0
    t = lt.create_torrent(fs, piece_length, flags=flags)
    lt.set_piece_hashes(t, str(root))
    data: bytes = lt.bencode(t.generate())
    return data


def lt_files(ti: Any) -> list[tuple[str, int, int, bool]]:
    """(path below the torrent folder, size, offset, is pad) as libtorrent sees them."""
    fs = ti.files()
    out = []
    for i in range(fs.num_files()):
        path = fs.file_path(i)
        if ti.num_files() > 1 or "/" in path:
            path = path.split("/", 1)[1] if path.startswith(ti.name() + "/") else path
        pad = bool(fs.file_flags(i) & lt.file_storage.flag_pad_file)
        out.append((path, fs.file_size(i), fs.file_offset(i), pad))
    return out


def our_files(meta: Metainfo) -> list[tuple[str, int, int, bool]]:
    return [("/".join(f.path), f.length, f.offset, f.pad) for f in meta.files]


def lt_hashes(ti: Any) -> tuple[bytes | None, bytes | None]:
    h = ti.info_hashes()
    return (
        h.v1.to_bytes() if h.has_v1() else None,
        h.v2.to_bytes() if h.has_v2() else None,
    )


CASES = [
    (version, name, pl)
    for version in TorrentVersion
    for name in ("multi", "single.bin", "lonely")
    for pl in (16384, 65536)
]


def _case_id(case: tuple[TorrentVersion, str, int]) -> str:
    return f"{case[0].value}-{case[1]}-{case[2] // 1024}k"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_libtorrent_torrents_load_with_our_parser(
    data_root: Path, case: tuple[TorrentVersion, str, int]
) -> None:
    version, name, pl = case
    data = lt_make(data_root, name, version, pl)
    ti = lt.torrent_info(data)
    meta = load_torrent(data)
    assert meta.version is version
    assert (meta.info_hash_v1, meta.info_hash_v2) == lt_hashes(ti)
    assert meta.info_bytes == ti.info_section()
    assert meta.num_pieces == ti.num_pieces()
    assert meta.piece_length == ti.piece_length()
    ours, theirs = our_files(meta), lt_files(ti)
    if version is TorrentVersion.V2 and name != "multi":
        # libtorrent pads a lone v2 file to a whole piece; its hybrid twin has no pad.
        # Like libtorrent, a v2 torrent of a folder with one file is a single-file torrent.
        assert meta.single_file
        assert theirs[-1][3] and ours == theirs[:-1]
    else:
        assert ours == theirs
    if meta.pieces_v1 is not None:
        for i in (0, meta.num_pieces - 1):
            assert meta.pieces_v1[20 * i : 20 * i + 20] == ti.hash_for_piece(i)
    if version is not TorrentVersion.V1:
        layers = lt.bdecode(data).get(b"piece layers", {})
        assert dict(meta.piece_layers) == layers
        assert len(layers) == sum(1 for f in meta.data_files if f.length > pl)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_our_torrents_load_in_libtorrent(
    data_root: Path, case: tuple[TorrentVersion, str, int]
) -> None:
    version, name, pl = case
    meta = create_torrent(data_root / name, version=version, piece_length=pl, threads=2)
    ti = lt.torrent_info(torrent_bytes(meta))
    assert ti.is_valid()
    assert lt_hashes(ti) == (meta.info_hash_v1, meta.info_hash_v2)
    assert ti.num_pieces() == meta.num_pieces
    if version is TorrentVersion.V2 and meta.single_file:
        assert ti.name() == meta.files[0].path[0]  # libtorrent names it after its one file
    else:
        assert ti.name() == meta.name
    sizes = sorted(s for _, s, _, pad in lt_files(ti) if not pad)
    assert sizes == sorted(f.length for f in meta.data_files)
    # Byte for byte the same info dict as libtorrent makes from the same files, so the
    # two creators join the same swarm (v1, v2 and hybrid alike).
    reference = lt.torrent_info(lt_make(data_root, name, version, pl))
    assert meta.info_bytes == reference.info_section()
    if version is TorrentVersion.HYBRID:
        assert lt_files(ti) == lt_files(reference)
        pads = [(size, off) for _, size, off, pad in lt_files(ti) if pad]
        assert pads == [(f.length, f.offset) for f in meta.files if f.pad]
        if name == "multi":
            assert pads and all(0 < size < pl for size, _ in pads)
        else:
            assert not pads


def test_hybrid_without_tail_padding_is_accepted(data_root: Path) -> None:
    """Older libtorrent 2.0 hybrids pad before each file and leave the tail unpadded."""
    fs = lt.file_storage()
    lt.add_files(fs, str(data_root / "multi"))
    t = lt.create_torrent(fs, 16384, flags=lt.create_torrent.canonical_files_no_tail_padding)
    lt.set_piece_hashes(t, str(data_root))
    data = lt.bencode(t.generate())
    ti = lt.torrent_info(data)
    meta = load_torrent(data)
    assert (meta.info_hash_v1, meta.info_hash_v2) == lt_hashes(ti)
    # libtorrent moves an empty file behind the pad that follows it; where a zero-length
    # file sits does not change the piece space.
    assert [f for f in our_files(meta) if f[1]] == [f for f in lt_files(ti) if f[1]]
    assert sorted(f[:2] for f in our_files(meta)) == sorted(f[:2] for f in lt_files(ti))
    assert not meta.files[-1].pad


def test_libtorrent_accepts_our_magnet(data_root: Path) -> None:
    from swarmhub.metainfo import make_magnet

    meta = create_torrent(
        data_root / "multi", piece_length=65536, trackers=[["http://127.0.0.1:1/a"]]
    )
    params = lt.parse_magnet_uri(make_magnet(meta))
    assert params.info_hashes.v1.to_bytes() == meta.info_hash_v1
    assert params.info_hashes.v2.to_bytes() == meta.info_hash_v2
    assert params.name == "multi"
    assert list(params.trackers) == ["http://127.0.0.1:1/a"]
