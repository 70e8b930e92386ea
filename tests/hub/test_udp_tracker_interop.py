"""libtorrent and aria2 find the hub's seeder through its UDP tracker (BEP 15) and download.

The hub runs in-process with ``udp_tracker`` on and its embedded seeder; the torrents
handed to the clients keep their info dict (same swarm) but list only the UDP tracker and
no web seed, so the only way to the bytes is: UDP announce -> the seeder's address ->
BitTorrent. DHT, LSD, PEX, UPnP and NAT-PMP are off; everything is on 127.0.0.1.

aria2 1.36 sends UDP tracker requests through its DHT socket: with ``--enable-dht=false``
every ``udp://`` announce fails with "udp is not supported yet" (checked by hand). Its
DHT is therefore on, but with no entry point, a routing table file in the test's folder
and loopback only, so it can only reach our tracker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_api import live_hub
from test_app import publish

from conftest import free_port, need, need_tool, until
from interop.harness import VENV_PYTHON, LtPeer, Proc
from swarmhub.bencode import bdecode, bencode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Any]:
    async for x in live_hub(tmp_path, max_upload_size=64 << 20, peer_listen=("127.0.0.1", 0),
                            tracker_interval=10, udp_tracker=("127.0.0.1", 0)):
        async with x.http.post(f"{x.url}/api/collections", json={"name": "team", "private": True},
                               headers=x.auth(x.admin)) as r:
            assert r.status == 201
        yield x


async def udp_only_torrent(
    live: Any, file_id: str, dest: Path, *, v1: bool = True, token: str | None = None
) -> tuple[Path, str]:
    """The hub's .torrent with only its UDP tier and no web seed; (path, UDP URL)."""
    suffix = ".v1.torrent" if v1 else ".torrent"
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with live.http.get(f"{live.url}/t/{file_id}{suffix}", headers=headers) as r:
        assert r.status == 200, await r.text()
        outer = bdecode(await r.read())
    tiers = outer[b"announce-list"]
    assert len(tiers) == 2 and tiers[1][0].startswith(b"udp://127.0.0.1:")
    outer[b"announce"] = tiers[1][0]
    del outer[b"announce-list"]
    outer.pop(b"url-list", None)
    dest.write_bytes(bencode(outer))
    return dest, tiers[1][0].decode()


def lt_peer(torrent: Path, save: Path, log_dir: Path, name: str) -> LtPeer:
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        need(False, "libtorrent is not installed")
    return LtPeer(torrent, save, stop_when_done=True, timeout=120, log_dir=log_dir, name=name)


async def test_libtorrent_downloads_a_public_file_found_over_udp(live: Any, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 7)
    f = await publish(live, data, "pub.bin")
    torrent, _ = await udp_only_torrent(live, f["id"], tmp_path / "pub.torrent", v1=False)
    counts = live.hub.udp_tracker.core.counts
    lt = lt_peer(torrent, tmp_path / "lt", tmp_path, "lt-udp")
    try:
        await asyncio.to_thread(lt.start)
        await asyncio.to_thread(lt.wait_finished, 120)
    finally:
        await asyncio.to_thread(lt.stop)
    assert (tmp_path / "lt" / "pub.bin").read_bytes() == data
    assert counts["connect"] >= 1 and counts["announce"] >= 1
    assert counts["bad_connection_id"] == 0 and counts["malformed"] == 0


async def test_libtorrent_private_file_over_udp_needs_its_passkey(
    live: Any, tmp_path: Path
) -> None:
    data = os.urandom(1024 * 1024 + 3)
    f = await publish(live, data, "secret.bin", collection="team")
    reader, _ = await live.token("reader", "udp")
    torrent, url = await udp_only_torrent(live, f["id"], tmp_path / "p.torrent", v1=False,
                                          token=reader)
    assert "?passkey=" in url  # rides to the tracker as BEP 41 URL data
    counts = live.hub.udp_tracker.core.counts
    lt = lt_peer(torrent, tmp_path / "lt", tmp_path, "lt-udp-private")
    try:
        await asyncio.to_thread(lt.start)
        await asyncio.to_thread(lt.wait_finished, 120)
    finally:
        await asyncio.to_thread(lt.stop)
    assert (tmp_path / "lt" / "secret.bin").read_bytes() == data
    assert counts["announce"] >= 1 and counts["refused"] == 0
    # Without the passkey the same client is refused and gets nothing.
    outer = bdecode(torrent.read_bytes())
    outer[b"announce"] = url.partition("?")[0].encode()
    bare = tmp_path / "bare.torrent"
    bare.write_bytes(bencode(outer))
    lt2 = LtPeer(bare, tmp_path / "lt2", timeout=60, log_dir=tmp_path, name="lt-udp-bare")
    try:
        await asyncio.to_thread(lt2.start)
        await until(lambda: counts["refused"] >= 1, "the refused announce", 30)
    finally:
        await asyncio.to_thread(lt2.stop)
    assert not (tmp_path / "lt2" / "secret.bin").exists() or \
        (tmp_path / "lt2" / "secret.bin").read_bytes() != data


async def test_aria2_downloads_a_file_found_over_udp(live: Any, tmp_path: Path) -> None:
    aria2c = need_tool("aria2c")
    data = os.urandom(1024 * 1024 + 11)
    f = await publish(live, data, "aria.bin")
    torrent, _ = await udp_only_torrent(live, f["id"], tmp_path / "a.torrent", v1=True)
    counts = live.hub.udp_tracker.core.counts
    out = tmp_path / "aria2"
    out.mkdir()
    aria_log = tmp_path / "aria2.log"
    cmd = [
        aria2c,
        "--enable-dht=true",  # its UDP tracker client lives on the DHT socket
        f"--dht-listen-port={free_port()}",
        f"--dht-file-path={tmp_path / 'dht.dat'}",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-time=0",
        "--disable-ipv6=true",
        f"--listen-port={free_port()}",
        "--interface=127.0.0.1",
        "--bt-tracker-connect-timeout=5",
        "--bt-tracker-timeout=10",
        "--summary-interval=0",
        "--console-log-level=warn",
        f"--log={aria_log}",
        "--log-level=info",
        f"--dir={out}",
        str(torrent),
    ]
    loop = asyncio.get_running_loop()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = loop.time() + 90
        while proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.1)
        output = b""
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            output = proc.stdout.read()
        log_text = aria_log.read_text(errors="replace") if aria_log.exists() else ""
        assert proc.returncode == 0, f"aria2c exit {proc.returncode}: {output[-2000:]!r}" \
            f"\n{log_text[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    assert (out / "aria.bin").read_bytes() == data
    assert counts["connect"] >= 1 and counts["announce"] >= 1


async def test_swarmhub_get_with_a_udp_tracker_flag(live: Any, tmp_path: Path) -> None:
    """``swarmhub get T --tracker udp://HOST:PORT``: the CLI's engine announces over UDP."""
    data = os.urandom(1024 * 1024 + 5)
    f = await publish(live, data, "cli.bin")
    torrent, url = await udp_only_torrent(live, f["id"], tmp_path / "c.torrent")
    outer = bdecode(torrent.read_bytes())
    outer[b"announce"] = b"http://127.0.0.1:9/announce"  # a dead tracker: --tracker wins
    torrent.write_bytes(bencode(outer))
    counts = live.hub.udp_tracker.core.counts
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp_path / "state"))
    argv = [VENV_PYTHON, "-m", "swarmhub", "get", str(torrent), "-o", str(tmp_path / "out"),
            "--json", "--listen", "127.0.0.1:0", "--tracker", url.replace("/announce", "")]
    with Proc(argv, env=env, name="get-udp", log=tmp_path / "get.log") as proc:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert proc.poll() == 0, proc.output()[-3000:]
    assert (tmp_path / "out" / "cli.bin").read_bytes() == data
    assert counts["announce"] >= 2  # started, and completed or stopped
