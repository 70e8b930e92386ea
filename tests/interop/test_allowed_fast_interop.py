"""BEP 6 Allowed Fast against real libtorrent, both directions, over loopback.

Each side chokes the other for good, so every piece that moves is one of the allowed-fast
set: without the feature nothing moves and the bounded wait fails. libtorrent gets
``unchoke_slots_limit=0`` (ltpeer.py then moves loopback peers out of its "local" class,
which ignores unchoke slots) and ``allowed_fast_set_size=5`` (its default; ltpeer's tuned
preset turns it off); ours ``unchoke_slots=0`` and ``allowed_fast_set_size=5`` (off by
default). DHT, LSD, UPnP, NAT-PMP are off on both sides (ltpeer.py; ours dials only
``--peer`` and listens on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from interop.harness import VENV_PYTHON, LtPeer, Proc, lt_make_torrent, make_test_data
from swarmhub.engine.allowedfast import allowed_fast_set
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
PIECE = 32 * 1024
PIECES = 40
K = 5  # libtorrent's allowed_fast_set_size default (ours is 0: set here)


def ours(args: list[str], tmp: Path, name: str, **settings: str) -> Proc:
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp / "state"),
               SWARMHUB_DHT="0", SWARMHUB_LSD="0",
               **{f"SWARMHUB_{k.upper()}": v for k, v in settings.items()})
    return Proc([*SWARMHUB, *args], env=env, cwd=tmp, name=name, log=tmp / f"{name}.log")


def pieces_of(bitfield_hex: str) -> set[int]:
    bits = int(bitfield_hex, 16) if bitfield_hex else 0
    n = len(bitfield_hex) * 4
    return {i for i in range(n) if bits >> (n - 1 - i) & 1}


def test_our_leecher_fetches_libtorrents_allowed_pieces_while_choked(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [PIECES * PIECE], seed=61)
    tfile = tmp_path / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, "v1", PIECE))
    with LtPeer(tfile, data.parent, seed=True, log_dir=tmp_path, name="lt-seed",
                settings={"unchoke_slots_limit": 0, "allowed_fast_set_size": K}) as seeder:
        get = ours(["get", str(tfile), "-o", str(tmp_path / "dl"), "--json", "--no-pex",
                    "--no-lsd", "--peer", f"127.0.0.1:{seeder.port}", "--timeout", "150"],
                   tmp_path, "get")
        with get:
            line = get.wait_for_line(
                lambda s: s.startswith("{") and len(pieces_of(
                    json.loads(s).get("bitfield", ""))) >= K, 120)
            got = pieces_of(json.loads(line)["bitfield"])
            seen = seeder.wait_status(lambda st: st.get("uploaded", 0) > 0, 30)
    assert len(got) == K, got  # its whole set, and nothing else: it never unchoked us
    assert seen["uploaded"] >= K * PIECE


def test_libtorrent_fetches_our_allowed_pieces_while_choked(tmp_path: Path) -> None:
    data = make_test_data(tmp_path / "src", [PIECES * PIECE], seed=62)
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=PIECE)
    tfile = tmp_path / "ours.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0"], tmp_path, "seed",
                unchoke_slots="0", super_seeding="0", allowed_fast_set_size=str(K))
    with seed:
        line = seed.wait_for_line(lambda s: '"event": "listening"' in s, 60)
        port = int(json.loads(line)["port"])
        want = set(allowed_fast_set("127.0.0.1", meta.info_hash, PIECES, K))
        with LtPeer(tfile, tmp_path / "dl", peers=[("127.0.0.1", port)], log_dir=tmp_path,
                    name="lt-leech") as leech:
            st = leech.wait_status(
                lambda st: len(pieces_of(st.get("bitfield", ""))) >= K, 120)
    assert pieces_of(st["bitfield"]) == want  # exactly the canonical set of 127.0.0.0/24
