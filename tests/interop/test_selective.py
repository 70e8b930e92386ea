"""``get --files``: only the chosen files, from our seeder and from libtorrent, over loopback.

Files are sized so pieces straddle file edges: the pieces a chosen file shares with its
neighbours are fetched whole, yet the neighbours are never created and their bytes live
only in ``.swarmhub.parts``. A later ``get`` without ``--files`` completes the rest from
what is there.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from interop.harness import (
    VENV_PYTHON,
    LtPeer,
    Proc,
    compare_trees,
    lt_make_torrent,
    make_test_data,
)
from swarmhub.metainfo import create_torrent, read_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
PIECE = 64 * 1024
# file_000 .. file_003, sub/file_004; every boundary falls inside a piece
SIZES = [100_003, 70_001, 200_000, 50_000, 30_123]


def ours(args: list[str], work: Path, name: str) -> Proc:
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(work / "state"))
    return Proc([*SWARMHUB, *args], env=env, cwd=work, name=name, log=work / f"{name}.log")


def listening_port(proc: Proc) -> int:
    line = proc.wait_for_line(lambda s: '"event": "listening"' in s, 60)
    return int(json.loads(line)["port"])


def finished(proc: Proc) -> dict[str, object]:
    for line in reversed(proc.output().splitlines()):
        if line.startswith('{"event": "finished"'):
            result: dict[str, object] = json.loads(line)
            return result
    raise AssertionError(f"no finished line\n{proc.describe()}")


def check_only(data: Path, dl: Path, chosen: set[str]) -> None:
    """The chosen files are byte-exact; the others do not exist at all."""
    for src in sorted(p for p in data.rglob("*") if p.is_file()):
        rel = src.relative_to(data).as_posix()
        got = dl / data.name / rel
        if rel in chosen:
            assert got.read_bytes() == src.read_bytes(), rel
        else:
            assert not got.exists(), f"{rel} was not chosen but exists"


def get_files(tfile: Path, dl: Path, port: int, work: Path, name: str,
              files: list[str]) -> dict[str, object]:
    args = ["get", str(tfile), "-o", str(dl), "--json", "--peer", f"127.0.0.1:{port}",
            "--timeout", "60"]
    for f in files:
        args += ["--files", f]
    with ours(args, work, name) as get:
        assert get.wait(90) == 0, get.describe()
        return finished(get)


def run_selection(tfile: Path, data: Path, port: int, work: Path, *,
                  shared_pieces: bool = True) -> None:
    """``shared_pieces``: files share pieces (v1 without pads); BEP 47/52 aligned
    layouts have none, so nothing goes to the part file."""
    dl = work / "dl"
    meta = read_torrent(tfile)  # libtorrent lists files in its own order
    index = ["/".join(f.path) for f in meta.data_files].index("file_003.bin")
    # file_001 by glob, file_003 by its index (as `swarmhub info` numbers them)
    get_files(tfile, dl, port, work, "get1", ["file_001*", str(index)])
    check_only(data, dl, {"file_001.bin", "file_003.bin"})
    parts = dl / ".swarmhub.parts" / meta.info_hash.hex()
    assert parts.exists() == shared_pieces  # the neighbours' bytes of shared pieces
    # a folder name selects what is below it
    get_files(tfile, dl, port, work, "get2", ["sub"])
    check_only(data, dl, {"file_001.bin", "file_003.bin", "sub/file_004.bin"})
    # no --files: the rest, reusing the edge pieces already verified
    result = get_files(tfile, dl, port, work, "get3", [])
    compare_trees(data, dl / data.name)
    assert not parts.exists()  # nothing parked any more
    assert int(result["downloaded"]) < sum(SIZES)  # type: ignore[call-overload]


@pytest.mark.parametrize("version", [TorrentVersion.V1, TorrentVersion.HYBRID])
def test_files_by_glob_and_index_from_our_seeder(tmp_path: Path,
                                                 version: TorrentVersion) -> None:
    data = make_test_data(tmp_path / "src", SIZES, seed=21)
    meta = create_torrent(data, version=version, piece_length=PIECE)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    with ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], tmp_path,
              "seed") as seed:
        run_selection(tfile, data, listening_port(seed), tmp_path,
                      shared_pieces=version is TorrentVersion.V1)


def test_files_by_glob_and_index_from_libtorrent(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", SIZES, seed=22)
    tfile = tmp_path / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, "v1", PIECE))
    with LtPeer(tfile, data.parent, seed=True, log_dir=tmp_path, name="lt-seed") as seeder:
        run_selection(tfile, data, seeder.port, tmp_path)


def test_an_unknown_file_is_a_usage_error(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", SIZES, seed=23)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(create_torrent(data, version=TorrentVersion.V1,
                                                   piece_length=PIECE)))
    with ours(["get", str(tfile), "--peer", "127.0.0.1:9", "--files", "nope*"], tmp_path,
              "get") as get:
        assert get.wait(60) == 2, get.describe()
    assert "matches no file" in get.output()
    assert not (tmp_path / data.name).exists()


def test_kill9_then_resume_with_a_selection(tmp_path: Path) -> None:
    sizes = [3_000_001, 6_000_007, 2_000_003]
    data = make_test_data(tmp_path / "src", sizes, seed=24)
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=256 * 1024)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    dl = tmp_path / "dl"
    with ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0",
               "--upload-limit", "2048"], tmp_path, "seed") as seed:
        port = listening_port(seed)
        args = ["get", str(tfile), "-o", str(dl), "--json", "--peer", f"127.0.0.1:{port}",
                "--timeout", "150", "--files", "1"]
        with ours(args, tmp_path, "get1") as first:
            first.wait_for_line(
                lambda s: s.startswith('{"t"') and json.loads(s)["progress"] >= 0.4, 90)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        with ours(args, tmp_path, "get2") as second:
            assert second.wait(180) == 0, second.describe()
            result = finished(second)
    check_only(data, dl, {"file_001.bin"})
    assert int(result["downloaded"]) <= 0.75 * sizes[1], result  # type: ignore[call-overload]


def test_files_with_a_magnet_apply_once_the_metadata_arrives(tmp_path: Path) -> None:
    from swarmhub.metainfo import make_magnet

    data = make_test_data(tmp_path / "src", SIZES, seed=25)
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=PIECE)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    with ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], tmp_path,
              "seed") as seed:
        port = listening_port(seed)
        args = ["get", make_magnet(meta), "-o", str(tmp_path / "dl"), "--json",
                "--peer", f"127.0.0.1:{port}", "--timeout", "60", "--files", "*2.bin"]
        with ours(args, tmp_path, "get") as get:
            assert get.wait(90) == 0, get.describe()
    check_only(data, tmp_path / "dl", {"file_002.bin"})
