"""The CLI leaves the tracker's swarm when it exits: a ``stopped`` announce on a normal exit
of ``get`` and on Ctrl-C/SIGTERM of ``seed`` (so new clients are not handed dead ports).

State-based: the tracker's own scrape counts say who is still listed.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from interop.harness import compare_trees, make_test_data
from interop.test_peer_interop import listening_port, ours, start_tracker
from swarmhub.bencode import bdecode
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import Metainfo, TorrentVersion


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def scrape(announce_url: str, info_hash: bytes) -> tuple[int, int, int]:
    """``(complete, downloaded, incomplete)`` from the tracker's scrape."""
    url = (announce_url.replace("/announce", "/scrape") + "?info_hash="
           + urllib.parse.quote_from_bytes(info_hash, safe=""))
    with urllib.request.urlopen(url, timeout=10) as r:
        files = bdecode(r.read())[b"files"]
    entry = files.get(info_hash, {})
    return (entry.get(b"complete", 0), entry.get(b"downloaded", 0),
            entry.get(b"incomplete", 0))


def wait_scrape(url: str, info_hash: bytes, want: tuple[int, int, int], seconds: float
                ) -> None:
    deadline = time.monotonic() + seconds
    got = scrape(url, info_hash)
    while got != want:
        assert time.monotonic() < deadline, f"tracker lists {got}, expected {want}"
        time.sleep(0.05)
        got = scrape(url, info_hash)


def torrent(work: Path, url: str) -> tuple[Path, Path, Metainfo]:
    data = make_test_data(work / "src", [300_000], seed=5)
    meta = create_torrent(data, version=TorrentVersion.HYBRID, piece_length=64 * 1024,
                          trackers=[[url]])
    tfile = work / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    return data, tfile, meta


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_seed_says_stopped(work: Path, sig: signal.Signals) -> None:
    tracker, url = start_tracker(work)
    with tracker:
        data, tfile, meta = torrent(work, url)
        seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], work, "seed")
        with seed:
            listening_port(seed)
            wait_scrape(url, meta.info_hash, (1, 0, 0), 30)
            os.kill(seed.pid, sig)
            seed.wait(30)
        assert scrape(url, meta.info_hash) == (0, 0, 0)  # gone at once, not after a ttl


def test_a_finished_get_says_completed_then_stopped(work: Path) -> None:
    tracker, url = start_tracker(work)
    with tracker:
        data, tfile, meta = torrent(work, url)
        seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], work, "seed")
        with seed:
            listening_port(seed)
            wait_scrape(url, meta.info_hash, (1, 0, 0), 30)
            get = ours(["get", str(tfile), "-o", str(work / "dl"), "--listen", "127.0.0.1:0",
                        "--timeout", "60", "--json"], work, "get")
            with get:
                get.wait_ok(90)
            assert scrape(url, meta.info_hash) == (1, 1, 0)  # the seed stays, get left
        compare_trees(data, work / "dl" / data.name)
