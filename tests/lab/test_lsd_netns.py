"""BEP 14 local service discovery between real processes, inside lab namespaces only.

Multicast leaves the machine, so these tests never send it from the root namespace: each
builds its own hosts (198.18.0.0/24 behind a bridge in a namespace of its own) and turns
LSD on only for the processes it starts there. No tracker, no DHT, no --peer: the peers
find each other by multicast alone.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from conftest import need  # type: ignore[import-not-found,unused-ignore]
from swarmhub.lab.topology import Lab, LabProc, netns_available
from swarmhub.metainfo import create_torrent, make_magnet, read_torrent
from swarmhub.metainfo.parse import torrent_bytes

PREFIX = f"lsd{os.getpid() % 100000}"
_PY = [sys.executable, "-u", "-m", "swarmhub"]
_LSD_ON = {**os.environ, "SWARMHUB_LSD": "1"}


def _share(tmp: Path, *, private: bool = False, size: int = 3 * 1024 * 1024) -> Path:
    src = tmp / "seed"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(size))
    meta = create_torrent(src / "data.bin", private=private, piece_length=256 * 1024)
    torrent = tmp / "data.torrent"
    torrent.write_bytes(torrent_bytes(meta))
    return torrent


def _seed(lab: Lab, torrent: Path, tmp: Path, *extra: str) -> LabProc:
    proc = lab.run(0, [*_PY, "seed", str(torrent), str(tmp / "seed"), "--listen",
                       f"{lab.addr(0)}:6881", "--json", "--duration", "90", *extra],
                   name="seed", env=_LSD_ON)
    proc.wait_json("listening", 30)
    return proc


def _get(lab: Lab, host: int, torrent: Path, tmp: Path, *extra: str) -> LabProc:
    out = tmp / f"get{host}"
    return lab.run(host, [*_PY, "get", str(torrent), "-o", str(out), "--listen",
                          f"{lab.addr(host)}:0", "--json", *extra],
                   name=f"get{host}", env=_LSD_ON)


@pytest.mark.netns
@pytest.mark.slow
def test_peers_find_each_other_by_multicast_alone(tmp_path: Path) -> None:
    need(*netns_available())
    torrent = _share(tmp_path)
    want = (tmp_path / "seed" / "data.bin").read_bytes()
    with Lab(PREFIX, 3, 200e6, 200e6, log_dir=tmp_path / "logs") as lab:
        seed = _seed(lab, torrent, tmp_path)
        getters = {h: _get(lab, h, torrent, tmp_path, "--timeout", "60") for h in (1, 2)}
        for h, proc in getters.items():
            done = proc.wait_json("finished", 75)
            assert proc.wait(15) == 0, proc.tail()
            assert done["downloaded"] == len(want)
            assert (tmp_path / f"get{h}" / "data.bin").read_bytes() == want
        assert seed.alive, seed.tail()


@pytest.mark.netns
@pytest.mark.slow
def test_a_magnet_link_alone_finds_its_swarm_on_the_lan(tmp_path: Path) -> None:
    """No torrent file, no tracker, no DHT, no x.pe: the seed hears the newcomer's announce
    and answers with its own at once, so the magnet link's metadata comes from it."""
    need(*netns_available())
    torrent = _share(tmp_path)
    magnet = make_magnet(read_torrent(torrent))
    assert "tr=" not in magnet and "x.pe=" not in magnet
    want = (tmp_path / "seed" / "data.bin").read_bytes()
    with Lab(PREFIX, 2, 200e6, 200e6, log_dir=tmp_path / "logs") as lab:
        _seed(lab, torrent, tmp_path)
        proc = lab.run(1, [*_PY, "get", magnet, "-o", str(tmp_path / "m"), "--listen",
                           f"{lab.addr(1)}:0", "--json", "--timeout", "60"],
                       name="magnet", env=_LSD_ON)
        proc.wait_json("finished", 75)
        assert proc.wait(15) == 0, proc.tail()
        assert (tmp_path / "m" / "data.bin").read_bytes() == want
        assert "LSD: 1 peers for the magnet link" in proc.log.read_text()


@pytest.mark.netns
@pytest.mark.slow
def test_private_torrents_and_no_lsd_never_use_it(tmp_path: Path) -> None:
    need(*netns_available())
    with Lab(PREFIX, 2, 200e6, 200e6, log_dir=tmp_path / "logs") as lab:
        # A private torrent with no tracker and no peer: nothing to find peers with.
        private = _share(tmp_path, private=True, size=300_000)
        proc = _get(lab, 1, private, tmp_path)
        assert proc.wait(30) == 2, proc.tail()  # usage error: no way to find peers
        assert "no way to find peers" in proc.tail()
        # --no-lsd says the same for a public one.
        public = tmp_path / "pub"
        public.mkdir()
        torrent = _share(public, size=300_000)
        proc = _get(lab, 1, torrent, tmp_path, "--no-lsd")
        assert proc.wait(30) == 2, proc.tail()


_LTPEER = Path(__file__).resolve().parents[1] / "interop" / "ltpeer.py"


def _libtorrent(lab: Lab, host: int, torrent: Path, save: Path, *extra: str) -> LabProc:
    need(importlib.util.find_spec("libtorrent") is not None, "libtorrent is not installed")
    return lab.run(host, [sys.executable, "-u", str(_LTPEER), "--torrent", str(torrent),
                          "--save", str(save), "--listen", f"{lab.addr(host)}:6881",
                          "--set", "enable_lsd=true", "--timeout", "60", *extra],
                   name=f"lt{host}")


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.interop
def test_libtorrent_and_ours_find_each_other_by_multicast_both_ways(tmp_path: Path) -> None:
    need(*netns_available())
    torrent = _share(tmp_path)
    want = (tmp_path / "seed" / "data.bin").read_bytes()
    with Lab(PREFIX, 3, 200e6, 200e6, log_dir=tmp_path / "logs") as lab:
        # libtorrent downloads from our seed: it announces, we hear it and dial it (or the
        # reverse, whichever announce lands first)
        _seed(lab, torrent, tmp_path)
        lt_get = _libtorrent(lab, 1, torrent, tmp_path / "lt1", "--stop-when-done")
        lt_get.wait_json("finished", 75)
        assert lt_get.wait(15) == 0, lt_get.tail()
        assert (tmp_path / "lt1" / "data.bin").read_bytes() == want
        # we download from a libtorrent seed (ours is stopped: libtorrent is the only source)
        for proc in lab.procs:
            proc.stop()
        lt_seed = _libtorrent(lab, 1, torrent, tmp_path / "lt1", "--seed")
        lt_seed.wait_json("ready", 30)
        ours = _get(lab, 2, torrent, tmp_path, "--timeout", "60")
        done = ours.wait_json("finished", 75)
        assert ours.wait(15) == 0, ours.tail()
        assert done["downloaded"] == len(want)
        assert (tmp_path / "get2" / "data.bin").read_bytes() == want
