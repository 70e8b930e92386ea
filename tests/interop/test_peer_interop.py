"""Our peers against libtorrent and aria2, each in its own process, over loopback.

Every transfer compares the downloaded bytes with the source byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need_tool
from interop.harness import (
    VENV_PYTHON,
    LtPeer,
    Proc,
    compare_trees,
    lt_make_torrent,
    make_test_data,
)
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
VERSIONS = ["v1", "v2", "hybrid"]
SHAPES = {"single": [3_000_017], "multi": [700_001, 0, 1_500_000, 65_536, 123]}
PIECE = 64 * 1024


def env(tmp: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["SWARMHUB_STATE_DIR"] = str(tmp / "state")
    return e


def ours(args: list[str], tmp: Path, name: str) -> Proc:
    return Proc([*SWARMHUB, *args], env=env(tmp), cwd=tmp, name=name,
                log=tmp / f"{name}.log")


def listening_port(proc: Proc) -> int:
    line = proc.wait_for_line(lambda s: '"event": "listening"' in s, 60)
    return int(json.loads(line)["port"])


def finished(proc: Proc) -> dict[str, object]:
    for line in reversed(proc.output().splitlines()):
        if line.startswith('{"event": "finished"'):
            result: dict[str, object] = json.loads(line)
            return result
    raise AssertionError(f"no finished line\n{proc.describe()}")


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("version", VERSIONS)
def test_libtorrent_seeds_ours_downloads(work: Path, version: str, shape: str) -> None:
    data = make_test_data(work / "src", SHAPES[shape], seed=7)
    tfile = work / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, version, PIECE))  # type: ignore[arg-type]
    with LtPeer(tfile, data.parent, seed=True, log_dir=work, name="lt-seed") as seeder:
        get = ours(["get", str(tfile), "-o", str(work / "dl"), "--json",
                    "--peer", f"127.0.0.1:{seeder.port}", "--timeout", "120"], work, "get")
        with get:
            assert get.wait(150) == 0, get.describe()
    compare_trees(data, work / "dl" / data.name)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("version", VERSIONS)
def test_ours_seeds_libtorrent_downloads(work: Path, version: str, shape: str) -> None:
    data = make_test_data(work / "src", SHAPES[shape], seed=8)
    meta = create_torrent(data, version=TorrentVersion(version), piece_length=PIECE)
    tfile = work / "ours.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], work, "seed")
    with seed:
        port = listening_port(seed)
        with LtPeer(tfile, work / "dl", peers=[("127.0.0.1", port)], log_dir=work,
                    name="lt-leech") as leech:
            leech.wait_finished(120)
    compare_trees(data, work / "dl" / data.name)


@pytest.mark.parametrize("version", ["v2", "hybrid"])
def test_libtorrent_downloads_by_magnet_from_our_seed(work: Path, version: str) -> None:
    """Metadata comes over BEP 9 and, for v2, the piece layers over BEP 52 hash requests."""
    from swarmhub.metainfo import make_magnet

    data = make_test_data(work / "src", [1_500_000, 2_100_000, 4_000], seed=12)
    meta = create_torrent(data, version=TorrentVersion(version), piece_length=PIECE)
    tfile = work / "ours.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    magnet = make_magnet(meta)
    if version == "v2":
        assert "btih" not in magnet
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], work, "seed")
    with seed:
        port = listening_port(seed)
        with LtPeer(magnet, work / "dl", peers=[("127.0.0.1", port)], log_dir=work,
                    name="lt-magnet") as leech:
            leech.wait_finished(120)
            assert leech.hash_fails() == 0
    compare_trees(data, work / "dl" / data.name)


@pytest.mark.parametrize("version", VERSIONS)
def test_ours_downloads_by_magnet_from_libtorrent(work: Path, version: str) -> None:
    """BEP 9 metadata from libtorrent, plus BEP 52 piece layers for a v2-only torrent."""
    from swarmhub.metainfo import load_torrent, make_magnet

    data = make_test_data(work / "src", [1_000_000, 2_500_000, 3], seed=14)
    tfile = work / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, version, PIECE))  # type: ignore[arg-type]
    magnet = make_magnet(load_torrent(tfile.read_bytes()))
    with LtPeer(tfile, data.parent, seed=True, log_dir=work, name="lt-seed") as seeder:
        get = ours(["get", magnet, "-o", str(work / "dl"), "--json",
                    "--peer", f"127.0.0.1:{seeder.port}", "--timeout", "120"], work, "get")
        with get:
            assert get.wait(150) == 0, get.describe()
    compare_trees(data, work / "dl" / data.name)


def start_tracker(work: Path, interval: int = 2) -> tuple[Proc, str]:
    from conftest import free_port

    port = free_port()
    proc = Proc([str(VENV_PYTHON), "-m", "swarmhub.hub.tracker", "--listen",
                 f"127.0.0.1:{port}", "--interval", str(interval), "--min-interval",
                 str(max(1, interval // 2))],
                name="tracker", log=work / "tracker.log")
    import socket
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}/announce"
        time.sleep(0.1)
    proc.stop()
    raise AssertionError(f"tracker did not start\n{proc.describe()}")


def test_aria2_downloads_from_our_seed_via_our_tracker(work: Path) -> None:
    aria2c = need_tool("aria2c")
    tracker, url = start_tracker(work)
    with tracker:
        data = make_test_data(work / "src", [900_000, 2_000_001, 77], seed=9)
        meta = create_torrent(data, version=TorrentVersion.V1, piece_length=PIECE,
                              trackers=[[url]])
        tfile = work / "v1.torrent"
        tfile.write_bytes(torrent_bytes(meta))
        seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], work, "seed")
        with seed:
            listening_port(seed)
            aria = Proc([aria2c, "--enable-dht=false", "--enable-dht6=false",
                         "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                         "--seed-time=0", "--bt-tracker-interval=1", "--summary-interval=0",
                         "--file-allocation=none", "--check-integrity=true",
                         f"--dir={work / 'dl'}", str(tfile)], name="aria2c",
                        log=work / "aria2.log")
            with aria:
                assert aria.wait(120) == 0, aria.describe()
    compare_trees(data, work / "dl" / data.name)


def test_one_seed_four_mixed_leechers(work: Path) -> None:
    tracker, url = start_tracker(work)
    with tracker:
        data = make_test_data(work / "src", [4_000_000, 1_000_003], seed=10)
        meta = create_torrent(data, version=TorrentVersion.HYBRID, piece_length=PIECE,
                              trackers=[[url]])
        tfile = work / "swarm.torrent"
        tfile.write_bytes(torrent_bytes(meta))
        seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0",
                     "--upload-limit", "2048"], work, "seed")
        with seed:
            listening_port(seed)
            gets = [ours(["get", str(tfile), "-o", str(work / f"ours{i}"), "--json",
                          "--listen", "127.0.0.1:0", "--timeout", "150",
                          "--seed-after", "20"], work, f"get{i}") for i in range(2)]
            lts = [LtPeer(tfile, work / f"lt{i}", log_dir=work, name=f"lt{i}").start()
                   for i in range(2)]
            try:
                for lt in lts:
                    lt.wait_finished(150)
                for g in gets:
                    g.wait_for_line(lambda s: s.startswith('{"event": "finished"'), 150)
                uploaded_by_leechers = sum(
                    int(json.loads(ln)["uploaded"])
                    for g in gets for ln in g.output().splitlines()
                    if ln.startswith('{"t"'))
            finally:
                for lt in lts:
                    lt.stop()
                for g in gets:
                    g.stop()
    for i in range(2):
        compare_trees(data, work / f"ours{i}" / data.name)
        compare_trees(data, work / f"lt{i}" / data.name)
    # The seed is capped at 2 MiB/s: with 4 leechers the swarm must have traded pieces.
    assert uploaded_by_leechers > 0


def test_kill9_then_restart_keeps_verified_pieces(work: Path) -> None:
    size = 24 * 1024 * 1024
    data = make_test_data(work / "src", [size], seed=11)
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=256 * 1024)
    tfile = work / "big.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0",
                 "--upload-limit", "8192"], work, "seed")
    with seed:
        port = listening_port(seed)
        args = ["get", str(tfile), "-o", str(work / "dl"), "--json",
                "--peer", f"127.0.0.1:{port}", "--timeout", "120"]
        first = ours(args, work, "get1")
        with first:
            first.wait_for_line(
                lambda s: s.startswith('{"t"') and json.loads(s)["progress"] >= 0.45, 60)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        second = ours(args, work, "get2")
        with second:
            assert second.wait(120) == 0, second.describe()
            result = finished(second)
    compare_trees(data, work / "dl" / data.name)
    assert int(result["downloaded"]) <= 0.55 * size, result  # type: ignore[call-overload]


def test_ctrl_c_saves_resume_data(work: Path) -> None:
    from swarmhub.storage.resume import load_resume, unpack_bits

    size = 8 * 1024 * 1024
    data = make_test_data(work / "src", [size], seed=13)
    meta = create_torrent(data, version=TorrentVersion.HYBRID, piece_length=128 * 1024)
    tfile = work / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0",
                 "--upload-limit", "4096"], work, "seed")
    with seed:
        port = listening_port(seed)
        get = ours(["get", str(tfile), "-o", str(work / "dl"), "--json",
                    "--peer", f"127.0.0.1:{port}"], work, "get")
        with get:
            get.wait_for_line(
                lambda s: s.startswith('{"t"') and json.loads(s)["progress"] >= 0.3, 60)
            os.kill(get.pid, signal.SIGINT)
            assert get.wait(30) == 130, get.describe()
        # SIGTERM, with room to save its own resume data on a loaded machine
        seed.stop(grace=30)
    files = list((work / "state").glob(f"{meta.info_hash.hex()}-*.resume"))
    assert len(files) == 2  # the seed's and the download's, side by side
    resumes = [load_resume(f) for f in files]
    resume = min((r for r in resumes if r is not None), key=lambda r: sum(r.have))
    have = unpack_bits(resume.have, meta.num_pieces)
    assert 0.25 * meta.num_pieces <= sum(have) < meta.num_pieces


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
