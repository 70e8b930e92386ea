"""Message stream encryption against libtorrent and aria2, each in its own process on loopback.

libtorrent runs with ``--encryption`` (ltpeer.py): ``in_enc_policy``/``out_enc_policy`` forced and
``allowed_enc_level`` RC4, so it neither accepts nor dials a plaintext connection; aria2 runs with
``--bt-require-crypto=true --bt-min-crypto-level=arc4``. A completed transfer is the proof that
the stream was encrypted; every transfer is compared byte for byte with the source.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import need_tool
from interop.harness import LtPeer, Proc, compare_trees, lt_make_torrent, make_test_data
from interop.test_peer_interop import listening_port, ours, start_tracker
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import Metainfo, TorrentVersion

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

PIECE = 64 * 1024
SIZES = [1_500_000, 700_001, 3]


def our_torrent(work: Path, version: str = "hybrid", trackers: list[list[str]] | None = None
                ) -> tuple[Path, Path, Metainfo]:
    data = make_test_data(work / "src", SIZES, seed=21)
    meta = create_torrent(data, version=TorrentVersion(version), piece_length=PIECE,
                          trackers=trackers or [])
    tfile = work / "ours.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    return data, tfile, meta


def wait_for_seeders(announce: str, meta: Metainfo, seed: Proc, seconds: float = 60) -> None:
    """Until the tracker's scrape counts one seeder: the seed's first announce is done."""
    import urllib.parse
    import urllib.request

    from swarmhub.bencode import bdecode

    ih = meta.info_hash_v1
    assert ih is not None
    url = announce.replace("/announce", "/scrape") + "?info_hash=" + urllib.parse.quote(ih)
    deadline = time.monotonic() + seconds
    while True:
        with urllib.request.urlopen(url, timeout=10) as r:
            files = bdecode(r.read()).get(b"files", {})
        if files.get(ih, {}).get(b"complete", 0) >= 1:
            return
        assert seed.poll() is None, f"seed exited\n{seed.describe()}"
        assert time.monotonic() < deadline, f"the seed never announced\n{seed.describe()}"
        time.sleep(0.1)


def wait_for_text(proc: Proc, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in proc.output():
        assert proc.poll() is None, f"{proc.name} exited\n{proc.describe()}"
        assert time.monotonic() < deadline, f"no {text!r} from {proc.name}\n{proc.describe()}"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["prefer", "require"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_forced_encryption_libtorrent_downloads_from_our_seed(work: Path, mode: str,
                                                              version: str) -> None:
    """v2: the SKEY libtorrent uses is the v2 info hash truncated to 20 bytes."""
    data, tfile, _ = our_torrent(work, version)
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0",
                 "--encryption", mode], work, "seed")
    with seed:
        port = listening_port(seed)
        with LtPeer(tfile, work / "dl", peers=[("127.0.0.1", port)], log_dir=work,
                    name="lt-leech", encryption=True) as leech:
            leech.wait_finished(120)
    compare_trees(data, work / "dl" / data.name)


@pytest.mark.parametrize("mode", ["prefer", "require"])
def test_we_download_from_a_forced_encryption_libtorrent_seed(work: Path, mode: str) -> None:
    data = make_test_data(work / "src", SIZES, seed=22)
    tfile = work / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, "hybrid", PIECE))  # type: ignore[arg-type]
    with LtPeer(tfile, data.parent, seed=True, log_dir=work, name="lt-seed",
                encryption=True) as seeder:
        get = ours(["get", str(tfile), "-o", str(work / "dl"), "--json", "--encryption", mode,
                    "--peer", f"127.0.0.1:{seeder.port}", "--timeout", "120"], work, "get")
        with get:
            assert get.wait(150) == 0, get.describe()
    compare_trees(data, work / "dl" / data.name)


def test_we_fetch_a_magnets_metadata_from_a_forced_encryption_libtorrent_seed(work: Path
                                                                             ) -> None:
    """BEP 9 metadata over an encrypted connection too: with ``require`` nothing is sent in
    plaintext, and a forced-encryption peer would refuse a plaintext metadata request."""
    from swarmhub.metainfo import load_torrent, make_magnet

    data = make_test_data(work / "src", SIZES, seed=24)
    tfile = work / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, "v1", PIECE))  # type: ignore[arg-type]
    magnet = make_magnet(load_torrent(tfile.read_bytes()))
    with LtPeer(tfile, data.parent, seed=True, log_dir=work, name="lt-seed",
                encryption=True) as seeder:
        get = ours(["get", magnet, "-o", str(work / "dl"), "--json", "--encryption", "require",
                    "--peer", f"127.0.0.1:{seeder.port}", "--timeout", "120"], work, "get")
        with get:
            assert get.wait(150) == 0, get.describe()
    compare_trees(data, work / "dl" / data.name)


@pytest.mark.parametrize("crypto", [["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"],
                                    []], ids=["require-crypto", "aria2-defaults"])
def test_aria2_downloads_from_our_seed_encrypted_at_first_try(work: Path, crypto: list[str]
                                                             ) -> None:
    """aria2 opens every connection encrypted, even by default: we answer it at once (no
    failed attempt and plaintext reconnect)."""
    aria2c = need_tool("aria2c")
    # The seed announces once, before aria2 exists, and not again for 10 min: it never
    # learns aria2's address, so the one connection is aria2's, incoming (a 2 s interval let
    # our seed dial aria2 first on a loaded machine, and the test saw no incoming handshake).
    tracker, url = start_tracker(work, interval=600)
    with tracker:
        data, tfile, meta = our_torrent(work, "v1", trackers=[[url]])
        seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0", "-vv"],
                    work, "seed")
        with seed:
            listening_port(seed)
            wait_for_seeders(url, meta, seed)
            aria = Proc([aria2c, "--enable-dht=false", "--enable-dht6=false",
                         "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                         *crypto,
                         "--seed-time=0", "--bt-tracker-interval=1", "--summary-interval=0",
                         "--file-allocation=none", "--check-integrity=true",
                         f"--dir={work / 'dl'}", str(tfile)], name="aria2c",
                        log=work / "aria2.log")
            with aria:
                assert aria.wait(120) == 0, aria.describe()
            out = seed.output()
    compare_trees(data, work / "dl" / data.name)
    # aria2 offers RC4 and plaintext by default: like libtorrent (prefer_rc4 off) we pick
    # plaintext after the obfuscated handshake; when aria2 requires RC4, RC4 it is.
    stream = "rc4" if crypto else "plaintext"
    assert f"incoming handshake done, {stream} stream" in out, out[-3000:]
    assert "encrypted handshake failed" not in out  # no reconnect, no plaintext retry


def test_we_download_from_an_aria2_seed_requiring_encryption(work: Path) -> None:
    """We dial aria2 (which only answers an encrypted handshake) and it selects RC4."""
    from conftest import free_port

    aria2c = need_tool("aria2c")
    data, tfile, _ = our_torrent(work, "v1")
    port = free_port()
    aria = Proc([aria2c, "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
                 "--enable-peer-exchange=false", "--bt-require-crypto=true",
                 "--bt-min-crypto-level=arc4", f"--listen-port={port}", "--seed-ratio=0.0",
                 "--check-integrity=true", "--summary-interval=0", "--file-allocation=none",
                 f"--dir={data.parent}", str(tfile)], name="aria2-seed", log=work / "aria2.log")
    with aria:
        wait_for_text(aria, f"BitTorrent: listening on TCP port {port}", 60)
        get = ours(["get", str(tfile), "-o", str(work / "dl"), "--json", "-vv",
                    "--peer", f"127.0.0.1:{port}", "--timeout", "120"], work, "get")
        with get:
            assert get.wait(150) == 0, get.describe()
            out = get.output()
    compare_trees(data, work / "dl" / data.name)
    assert "outgoing handshake done, rc4 stream" in out, out[-3000:]


def test_require_refuses_a_plaintext_peer_with_a_clear_log_line(work: Path) -> None:
    """ltpeer dials in plaintext by default (out_enc_policy disabled)."""
    data, tfile, _ = our_torrent(work)
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.0.1:0",
                 "--encryption", "require", "-v"], work, "seed")
    with seed:
        port = listening_port(seed)
        with LtPeer(tfile, work / "dl", peers=[("127.0.0.1", port)], log_dir=work,
                    name="lt-plain") as leech:
            wait_for_text(seed, "refusing a plaintext connection from 127.0.0.1:", 60)
            wait_for_text(seed, "encryption is required (--encryption require)", 1)
            status = leech.wait_status(lambda st: True, 10)  # the latest, the leech alive
            assert status["downloaded"] == 0 and status["progress"] == 0, status


def test_prefer_falls_back_to_a_plaintext_only_libtorrent_seed(work: Path) -> None:
    """libtorrent with in_enc_policy disabled closes our encrypted attempt; we dial again in
    plaintext and download."""
    import libtorrent as lt

    data = make_test_data(work / "src", SIZES, seed=23)
    tfile = work / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, "hybrid", PIECE))  # type: ignore[arg-type]
    plain_only = {"in_enc_policy": int(lt.enc_policy.pe_disabled)}
    with LtPeer(tfile, data.parent, seed=True, log_dir=work, name="lt-plain-seed",
                settings=plain_only) as seeder:
        get = ours(["get", str(tfile), "-o", str(work / "dl"), "--json", "-vv",
                    "--peer", f"127.0.0.1:{seeder.port}", "--timeout", "120"], work, "get")
        with get:
            assert get.wait(150) == 0, get.describe()
            out = get.output()
    compare_trees(data, work / "dl" / data.name)
    assert "retrying in plaintext" in out, out[-3000:]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path
