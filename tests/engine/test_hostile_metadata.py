"""Fetching a magnet's metadata from a silent peer: the fetch honours the caller's timeout
(``get --timeout 10`` used to wait 60 s), and a peer that makes no progress makes room for
the next one (issue #8 section 5)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from hostile import SilentPeer, poll

from interop.harness import REPO_ROOT, VENV_PYTHON, Proc
from swarmhub.engine.metadata import fetch_metadata
from swarmhub.engine.session import Session
from swarmhub.errors import MetainfoError
from swarmhub.metainfo import create_torrent, make_magnet, parse_magnet
from swarmhub.metainfo.model import Metainfo, TorrentVersion

PEER_ID = b"-SH0100-metadatatest"


def small_torrent(tmp: Path) -> Metainfo:
    data = tmp / "payload.bin"
    data.write_bytes(random.Random(3).randbytes(300_000))
    return create_torrent(data, version=TorrentVersion.HYBRID, piece_length=32 * 1024)


async def test_fetch_gives_up_at_its_timeout_on_a_silent_peer(tmp_path: Path) -> None:
    """The whole fetch's timeout ends it while the silent peer is still being waited on (its
    own ``peer_timeout`` would take an hour); the outer deadline only guards against that."""
    meta = small_torrent(tmp_path)
    magnet = parse_magnet(make_magnet(meta))
    async with SilentPeer(magnet.info_hash) as silent:
        try:
            await asyncio.wait_for(
                fetch_metadata(magnet, [("127.0.0.1", silent.port)], PEER_ID,
                               timeout=1.0, peer_timeout=3600.0), 60)
        except MetainfoError as exc:
            assert "no answer within 1 s" in str(exc), exc
            assert f"still waiting for 127.0.0.1:{silent.port}" in str(exc), exc
        else:
            raise AssertionError("a silent peer gave us metadata")
        assert silent.connections == 1


async def test_a_silent_peer_times_out_and_the_next_one_is_asked(tmp_path: Path) -> None:
    """One peer at a time, the silent one first: only its ``peer_timeout`` lets the seeder
    in before the whole fetch's 60 s would end it with an error. The same ``peer_timeout``
    binds each step of the seeder's answer, so it is a generous 5 s (0.5 s could run out
    for a seeder on a loaded machine), well below the fetch's own timeout."""
    meta = small_torrent(tmp_path)
    magnet = parse_magnet(make_magnet(meta))
    async with SilentPeer(magnet.info_hash) as silent, \
            Session(state_dir=tmp_path / "state") as seeder:
        port = await seeder.listen("127.0.0.1", 0)
        await seeder.add(meta, tmp_path, seed_mode=True)
        got = await fetch_metadata(magnet, [("127.0.0.1", silent.port), ("127.0.0.1", port)],
                                   PEER_ID, timeout=60.0, peer_timeout=5.0,
                                   max_peers_at_once=1)
    assert got.info_hash == meta.info_hash and got.info_bytes == meta.info_bytes
    assert silent.connections == 1
    # it was asked for both metadata pieces (so it was dropped for its silence, not refused)
    assert silent.heard.count(b"8:msg_typei0e") == 2, bytes(silent.heard)


async def test_get_timeout_covers_fetching_the_metadata(tmp_path: Path) -> None:
    meta = small_torrent(tmp_path)
    link = make_magnet(meta)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"),
               SWARMHUB_STATE_DIR=str(tmp_path / "state"))
    async with SilentPeer(parse_magnet(link).info_hash) as silent:
        with Proc([VENV_PYTHON, "-m", "swarmhub", "get", link, "--peer",
                   f"127.0.0.1:{silent.port}", "--listen", "127.0.0.1:0", "--timeout", "2",
                   "-o", tmp_path / "dl"], env=env, name="get", log=tmp_path / "get.log") as get:
            # The deadline guards against the old bug (60 s whatever --timeout said) with
            # room for a loaded machine's start-up; the exit and its message are the check.
            await poll(lambda: get.poll() is not None, 40, "swarmhub get exits")
            output = " ".join(get.output().split())  # undo the console's line wrapping
    assert get.returncode == 1, output
    assert "metadata" in output and "no answer within 2 s" in output, output
    assert f"still waiting for 127.0.0.1:{silent.port}" in output, output
