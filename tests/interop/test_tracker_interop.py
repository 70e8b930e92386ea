"""Real clients announce to our HTTP tracker: libtorrent seeds and leeches, aria2 downloads.

The only way the peers can find each other is our tracker: DHT, LSD, PEX, UPnP and NAT-PMP are
off, and nobody is told a peer address directly. Everything listens on 127.0.0.1.

libtorrent settings that matter for a loopback tracker (libtorrent 2.1.1):
- ``ssrf_mitigation`` (default on) only lets an HTTP tracker on a loopback address be reached
  when its path starts with ``/announce``: a tracker mounted at ``/tracker/announce`` is
  "blocked by SSRF mitigation". Serve it at ``/announce`` or turn the setting off.
- ``allow_multiple_connections_per_ip`` so several peers on 127.0.0.1 can all connect.
- ``min_reconnect_time`` low so a refused first dial is retried within the test's time.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import free_port, need, need_tool, until
from swarmhub.discovery.tracker import AnnounceRequest, announce, scrape
from swarmhub.hub.tracker import TrackerState, make_tracker_app, parse_announce_query

pytestmark = pytest.mark.interop

HAVE_LT = importlib.util.find_spec("libtorrent") is not None
PIECE = 16 * 1024


@dataclass
class Tracker:
    url: str
    state: TrackerState


async def start_tracker(prefix: str = "") -> tuple[web.AppRunner, Tracker]:
    state = TrackerState(interval=60, min_interval=5)
    app = make_tracker_app(state)
    if prefix:
        root = web.Application()
        root.add_subapp(prefix, app)
        app = root
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return runner, Tracker(f"http://127.0.0.1:{port}{prefix}/announce", state)


@pytest.fixture
async def tracker() -> AsyncIterator[Tracker]:
    need(HAVE_LT, "libtorrent (python) is not installed")
    runner, t = await start_tracker()
    try:
        yield t
    finally:
        await runner.cleanup()


def lt_settings(**extra: Any) -> dict[str, Any]:
    import libtorrent as lt

    s: dict[str, Any] = {
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "listen_interfaces": "127.0.0.1:0",
        "outgoing_interfaces": "127.0.0.1",
        "enable_ip_notifier": False,
        "allow_multiple_connections_per_ip": True,
        "min_reconnect_time": 1,
        # A session's destructor blocks its thread while it sends "stopped"; when that thread
        # runs our tracker's event loop, the announce can only time out. Keep that short.
        "stop_tracker_timeout": 1,
        "alert_mask": lt.alert.category_t.tracker_notification
        | lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification,
    }
    s.update(extra)
    return s


def make_v1_torrent(data_dir: Path, name: str, size: int, tracker_url: str) -> tuple[bytes, bytes]:
    """Write ``size`` random bytes to ``data_dir/name``; return (payload, .torrent bytes)."""
    import libtorrent as lt

    payload = os.urandom(size)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / name).write_bytes(payload)
    ct = lt.create_torrent(lt.list_files(str(data_dir / name)), PIECE, lt.create_torrent.v1_only)
    ct.add_tracker(tracker_url, 0)
    lt.set_piece_hashes(ct, str(data_dir))
    return payload, bytes(lt.bencode(ct.generate()))


def add(session: Any, torrent: bytes, save: Path) -> tuple[Any, bytes]:
    """Add a torrent to a libtorrent session; return (handle, v1 info hash)."""
    import libtorrent as lt

    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = str(save)
    handle = session.add_torrent(atp)
    return handle, atp.ti.info_hashes().v1.to_bytes()


def alerts_text(session: Any, log: list[str]) -> list[str]:
    log.extend(f"{a.what()}: {a.message()}" for a in session.pop_alerts())
    return log


def got_reply(session: Any, log: list[str]) -> bool:
    """Whether libtorrent has read a tracker's answer (a ``tracker_reply`` alert).

    Why: our tracker counts an announce when the request arrives, but libtorrent marks
    "started" as sent only once it has read the reply, and never sends "stopped" for an
    announce it does not know was answered. A session paused in between (a loaded machine)
    leaves the tracker's entry in place until it expires."""
    return any(m.startswith("tracker_reply") for m in alerts_text(session, log))


@dataclass
class Seeder:
    session: Any
    info_hash: bytes
    payload: bytes
    torrent: bytes
    port: int


async def start_seeder(tracker: Tracker, tmp_path: Path, size: int) -> Seeder:
    """A libtorrent seeder, returned once our tracker has recorded its announce."""
    import libtorrent as lt

    payload, torrent = make_v1_torrent(tmp_path / "seed", "payload.bin", size, tracker.url)
    session = lt.session(lt_settings())
    handle, info_hash = add(session, torrent, tmp_path / "seed")
    log: list[str] = []
    try:
        await until(lambda: tracker.state.stats(info_hash)[0] == 1, "the seeder's announce")
        # Its "stopped" when the test pauses it needs the answer read (got_reply).
        await until(lambda: got_reply(session, log), "the seeder to read the answer")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; libtorrent said: {alerts_text(session, log)[-10:]}") from None
    assert handle.status().is_seeding
    return Seeder(session, info_hash, payload, torrent, session.listen_port())


async def test_libtorrent_seeder_and_leecher_meet_through_our_tracker(
    tracker: Tracker, tmp_path: Path
) -> None:
    import libtorrent as lt

    seeder = await start_seeder(tracker, tmp_path, 700_000)
    ih = seeder.info_hash
    # Over HTTP with our client: scrape shows one seeder under libtorrent's info hash,
    # and a leecher's announce is handed the seeder's real listen address.
    assert await scrape(tracker.url, [ih]) == {ih: (1, 0, 0)}
    probe = AnnounceRequest(ih, b"-SH0000-probe-probe-", 9, 0, 0, 1, "started")
    answer = await announce(tracker.url, probe)
    assert answer.peers == [("127.0.0.1", seeder.port)]
    await announce(tracker.url, dataclasses.replace(probe, event="stopped"))
    assert tracker.state.stats(ih) == (1, 0, 0)

    leecher = lt.session(lt_settings())
    handle, _ = add(leecher, seeder.torrent, tmp_path / "leech")
    log: list[str] = []
    try:
        await until(lambda: handle.status().is_seeding, "the libtorrent leecher")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; libtorrent said: {alerts_text(leecher, log)[-10:]}") from None
    assert (tmp_path / "leech" / "payload.bin").read_bytes() == seeder.payload
    # The leecher's "completed" announce is counted and it now counts as a seeder.
    await until(lambda: tracker.state.stats(ih) == (2, 1, 0), "the completed announce")
    # Pausing a session sends "stopped": both leave the swarm, the download count stays.
    seeder.session.pause()
    leecher.pause()
    await until(lambda: tracker.state.stats(ih) == (0, 1, 0), "the stopped announces")


async def test_aria2_downloads_from_a_seeder_it_found_only_through_our_tracker(
    tracker: Tracker, tmp_path: Path
) -> None:
    aria2c = need_tool("aria2c")
    seeder = await start_seeder(tracker, tmp_path, 1_000_000)
    torrent_file = tmp_path / "payload.torrent"
    torrent_file.write_bytes(seeder.torrent)
    out = tmp_path / "aria2"
    out.mkdir()
    aria_log = tmp_path / "aria2.log"
    cmd = [
        aria2c,
        "--enable-dht=false",
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
        str(torrent_file),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await until(lambda: proc.poll() is not None, "aria2c to finish")
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert proc.returncode == 0, f"aria2c exit {proc.returncode}: {output[-2000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    assert (out / "payload.bin").read_bytes() == seeder.payload
    # aria2's own log: it announced this info hash to our tracker, then dialled the seeder's
    # address, which only our tracker could have told it.
    log_text = aria_log.read_text(errors="replace")
    announces = [
        parse_announce_query(line.split(" ")[1].partition("?")[2], "127.0.0.1")
        for line in log_text.splitlines()
        if line.startswith("GET /announce?")
    ]
    assert [a.event for a in announces] == ["started", "stopped"], log_text[-3000:]
    assert {a.info_hash for a in announces} == {seeder.info_hash}
    assert f"Connecting to 127.0.0.1:{seeder.port}" in log_text
    # It stopped with nothing left: one finished download, and it is gone from the swarm.
    assert tracker.state.stats(seeder.info_hash) == (1, 1, 0)
    seeder.session.pause()
    await until(lambda: tracker.state.stats(seeder.info_hash)[0] == 0, "seeder's stop")


@pytest.mark.parametrize("ssrf_mitigation", [True, False])
async def test_libtorrent_ssrf_mitigation_blocks_a_prefixed_loopback_tracker(
    tmp_path: Path, ssrf_mitigation: bool
) -> None:
    """Documents why the hub serves its tracker at /announce: a libtorrent client with
    default settings refuses ``http://127.0.0.1:P/tracker/announce``."""
    need(HAVE_LT, "libtorrent (python) is not installed")
    import libtorrent as lt

    runner, t = await start_tracker(prefix="/tracker")
    try:
        _, torrent = make_v1_torrent(tmp_path, "p.bin", 50_000, t.url)
        session = lt.session(lt_settings(ssrf_mitigation=ssrf_mitigation))
        _, ih = add(session, torrent, tmp_path)
        log: list[str] = []

        def settled() -> bool:
            return t.state.stats(ih)[0] == 1 or any("SSRF" in m for m in alerts_text(session, log))

        await until(settled, "libtorrent's announce or its SSRF refusal")
        if ssrf_mitigation:
            assert t.state.stats(ih) == (0, 0, 0)
            assert any("SSRF" in m for m in log)
        else:
            assert t.state.stats(ih) == (1, 0, 0)
            # Paused before it read the answer, libtorrent would send no "stopped".
            await until(lambda: got_reply(session, log), "libtorrent to read the answer")
            session.pause()
            await until(lambda: t.state.stats(ih) == (0, 0, 0), "the stopped announce")
    finally:
        await runner.cleanup()
