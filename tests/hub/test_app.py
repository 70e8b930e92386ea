"""The hub app end to end: torrents, magnets, private collections, tracker, metrics, downloads.

The download tests need ``swarmhub.hub.origin`` (written separately); they are skipped
without it. The last tests run libtorrent against a live hub: once fed by the hub's
embedded seeder through the hub's tracker (web seed removed), once by the web seed alone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_api import Live, check_schema, live_hub

from conftest import free_port, need
from swarmhub.bencode import bdecode, bencode
from swarmhub.discovery.tracker import AnnounceRequest, build_announce_url
from swarmhub.errors import MetainfoError
from swarmhub.metainfo import TorrentVersion, create_torrent, load_torrent, parse_magnet

HAS_ORIGIN = importlib.util.find_spec("swarmhub.hub.origin") is not None
needs_origin = pytest.mark.skipif(not HAS_ORIGIN, reason="swarmhub.hub.origin is not there yet")


@pytest.fixture
async def live(tmp_path: Path, hub_backend: dict[str, str]) -> AsyncIterator[Live]:
    async for x in live_hub(tmp_path, max_upload_size=64 << 20, **hub_backend):
        yield x


async def fetch(live: Live, path: str, token: str | None = None) -> tuple[int, bytes, Any]:
    async with live.http.get(live.url + path, headers=live.auth(token), allow_redirects=False) as r:
        return r.status, await r.read(), r.headers


async def announce(
    live: Live, info_hash: bytes, *, base: str | None = None, port: int = 7000, **kw: Any
) -> dict[bytes, Any]:
    req = AnnounceRequest(
        info_hash=info_hash,
        peer_id=kw.pop("peer_id", None) or b"-TS0001-" + os.urandom(6).hex().encode()[:12],
        port=port,
        uploaded=0,
        downloaded=0,
        left=kw.pop("left", 100),
        **kw,
    )
    url = build_announce_url(base or live.url + "/announce", req)
    async with live.http.get(url) as r:
        assert r.status == 200
        out: dict[bytes, Any] = bdecode(await r.read())
        return out


async def publish(live: Live, data: bytes, name: str, **kw: Any) -> dict[str, Any]:
    pub, _ = await live.token("publisher")
    status, body = await live.publish(data, name, pub, **kw)
    assert status == 201, body
    return dict(body)


async def test_only_a_client_that_asks_gets_the_torrent_without_piece_layers(
        live: Live) -> None:
    """Our get asks for ``?piece_layers=0``: the same info dict (same swarm, same hashes),
    trackers and web seed, minus the layers. Without the question (libtorrent, aria2, a
    browser) the torrent is whole."""
    f = await publish(live, os.urandom(300_000), "a.bin")
    status, whole, _ = await fetch(live, f"/t/{f['id']}.torrent")
    assert status == 200
    status, short, headers = await fetch(live, f"/t/{f['id']}.torrent?piece_layers=0")
    assert status == 200 and headers["Content-Type"] == "application/x-bittorrent"
    full, meta = load_torrent(whole), load_torrent(short, require_piece_layers=False)
    assert full.piece_layers and not meta.piece_layers
    assert meta.info_bytes == full.info_bytes
    assert (meta.trackers, meta.url_list) == (full.trackers, full.url_list)
    assert len(short) < len(whole) - sum(len(x) for x in full.piece_layers.values())
    with pytest.raises(MetainfoError, match="piece layer is missing"):
        load_torrent(short)


async def test_a_crowd_of_gets_has_the_stored_torrent_read_and_parsed_once(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each get asks for its file's torrent twice (the file info's magnet, then the short
    .torrent) and a crowd asks at once: the hub reads the stored torrent from its catalog
    once per version, and hands every asker the same bytes. A private file's torrent is
    still made for each user (their passkey)."""
    f = await publish(live, os.urandom(300_000), "crowd.bin")
    reads: list[tuple[str, str]] = []
    get_torrent = live.hub.catalog.get_torrent

    def counted(file_id: str, version: str) -> bytes | None:
        reads.append((file_id, version))
        return get_torrent(file_id, version)

    monkeypatch.setattr(live.hub.catalog, "get_torrent", counted)
    shorts, infos = set(), set()
    for _ in range(3):
        status, body, _ = await fetch(live, f"/api/files/{f['id']}")
        assert status == 200
        infos.add(json.loads(body)["magnet"])
        status, short, _ = await fetch(live, f"/t/{f['id']}.torrent?piece_layers=0")
        assert status == 200
        shorts.add(short)
    status, whole, _ = await fetch(live, f"/t/{f['id']}.torrent")
    status_v1, v1, _ = await fetch(live, f"/t/{f['id']}.v1.torrent")
    assert status == status_v1 == 200
    assert sorted(set(reads)) == [(f["id"], "hybrid"), (f["id"], "v1")]
    assert len(reads) == 2  # once each, the first time it was asked for
    assert len(shorts) == len(infos) == 1
    full = load_torrent(whole)
    meta = load_torrent(shorts.pop(), require_piece_layers=False)
    assert meta.info_bytes == full.info_bytes and full.piece_layers and not meta.piece_layers
    assert load_torrent(v1).version is TorrentVersion.V1

    admin = live.auth(live.admin)
    async with live.http.post(
        f"{live.url}/api/collections", json={"name": "crew", "private": True}, headers=admin
    ) as r:
        assert r.status == 201
    g = await publish(live, os.urandom(70_000), "crew.bin", collection="crew")
    carol, dave = await live.token("reader", "c"), await live.token("reader", "d")
    for token, info in [carol, dave, carol]:
        status, raw, _ = await fetch(live, f"/t/{g['id']}.torrent?piece_layers=0", token=token)
        assert status == 200
        got = load_torrent(raw, require_piece_layers=False)
        assert got.trackers == ((f"{live.url}/announce?passkey={info['passkey']}",),)


async def test_torrents_point_at_hub_tracker_and_web_seed(live: Live, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    f = await publish(live, data, "report one.pdf")
    status, hybrid_bytes, headers = await fetch(live, f"/t/{f['id']}.torrent")
    assert status == 200 and headers["Content-Type"] == "application/x-bittorrent"
    hybrid = load_torrent(hybrid_bytes)
    assert hybrid.version is TorrentVersion.HYBRID and hybrid.name == "report one.pdf"
    assert hybrid.trackers == ((live.url + "/announce",),)
    assert hybrid.url_list == (f"{live.url}/f/{f['id']}/report%20one.pdf",)
    assert hybrid.url_list[0] == f["url"]
    assert hybrid.info_hash_v1 is not None and hybrid.info_hash_v1.hex() == f["info_hash_v1"]
    assert hybrid.private is False
    status, v1_bytes, _ = await fetch(live, f"/t/{f['id']}.v1.torrent")
    v1 = load_torrent(v1_bytes)
    assert v1.version is TorrentVersion.V1 and v1.url_list == hybrid.url_list
    assert v1.trackers == hybrid.trackers
    assert v1.pieces_v1 == hybrid.pieces_v1  # same SHA-1 pieces, hashed once
    assert v1.info_hash_v1 is not None and v1.info_hash_v1.hex() == f["info_hash_v1_torrent"]
    # The v1 torrent is exactly what a v1-only creator makes of the same file.
    (tmp_path / "x").mkdir()
    same = tmp_path / "x" / "report one.pdf"
    same.write_bytes(data)
    reference = create_torrent(same, version=TorrentVersion.V1, piece_length=v1.piece_length)
    assert reference.info_hash_v1 == v1.info_hash_v1
    status, magnet, headers = await fetch(live, f"/m/{f['id']}")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    parsed = parse_magnet(magnet.decode().strip())
    assert parsed.info_hash_v1 == hybrid.info_hash_v1
    assert parsed.info_hash_v2 == hybrid.info_hash_v2
    assert parsed.trackers == (live.url + "/announce",) and parsed.web_seeds == hybrid.url_list
    status, body, _ = await fetch(live, "/t/nope.torrent")
    assert status == 404 and b"error" in body


async def test_tracker_through_the_app(live: Live) -> None:
    f = await publish(live, os.urandom(40_000), "t.bin")
    ih = bytes.fromhex(f["info_hash_v1"])
    first = await announce(live, ih, port=7001, event="started")
    assert first[b"interval"] > 0 and b"failure reason" not in first
    second = await announce(live, ih, port=7002)
    assert second[b"peers"][-2:] == (7001).to_bytes(2, "big")  # compact: finds the first
    v2_truncated = bytes.fromhex(f["info_hash_v2"])[:20]
    assert b"failure reason" not in await announce(live, v2_truncated, port=7003)
    unknown = await announce(live, os.urandom(20))
    assert b"unregistered" in unknown[b"failure reason"]
    async with live.http.get(live.url + "/announce?info_hash=short&port=1") as r:
        bad = bdecode(await r.read())
    assert b"info_hash" in bad[b"failure reason"]
    q = "info_hash=" + urllib.parse.quote_from_bytes(ih)
    async with live.http.get(f"{live.url}/scrape?{q}") as r:
        scraped = bdecode(await r.read())
    assert scraped[b"files"][ih][b"incomplete"] == 2
    async with live.http.get(f"{live.url}/scrape") as r:
        everything = bdecode(await r.read())
    assert ih in everything[b"files"]


async def test_a_files_info_counts_its_swarm_and_the_gets_about_to_join(live: Live) -> None:
    """GET /api/files/{id}?peer_id= says who is in the swarm and who is about to be: a
    get that read it counts as pending until it announces (so 16 gets starting at once
    do not all read "nobody here" and start their web seeds early)."""
    f = await publish(live, os.urandom(40_000), "c.bin")
    first, second = b"-SH0100-" + b"a" * 12, b"-SH0100-" + b"b" * 12

    async def counts(peer_id: bytes | None) -> tuple[int, int, int] | None:
        query = "" if peer_id is None else f"?peer_id={peer_id.hex()}"
        status, body, _ = await fetch(live, f"/api/files/{f['id']}{query}")
        assert status == 200
        one = json.loads(body)
        check_schema("/api/files/{id}", "get", 200, one)
        if "pending" not in one:
            return None
        return one["seeders"], one["leechers"], one["pending"]

    assert await counts(None) is None  # a plain catalog read counts nobody
    seeders, leechers, pending = await counts(first) or (0, -1, -1)
    assert (leechers, pending) == (0, 0)  # alone: this get may start at once
    assert await counts(second) == (seeders, 0, 1)  # the first one is on its way
    assert await counts(first) == (seeders, 0, 1)  # asking again: still one other
    ih = bytes.fromhex(f["info_hash_v1"])
    answer = await announce(live, ih, port=7011, event="started", peer_id=first)
    # the tracker's answer counts the get on its way too (not "only you": no early HTTP)
    assert answer[b"incomplete"] == 2
    assert await counts(second) == (seeders, 1, 0)  # now the tracker counts it
    answer = await announce(live, ih, port=7012, event="started", peer_id=second)
    assert answer[b"incomplete"] == 2  # announced: counted once, by the tracker
    status, _, _ = await fetch(live, f"/api/files/{f['id']}?peer_id=zz")
    assert status == 400


async def test_a_peer_in_several_swarms_of_a_file_counts_once(live: Live) -> None:
    """A file has up to three swarms (hybrid v1 hash, truncated v2 hash, the v1-only
    torrent): a peer announcing in several (a hybrid client; the hub's own seeder sits in
    the hybrid and the v1 swarm) counts once, in the file info, the admin numbers and the
    HTTP announce's complete/incomplete; a seeder in any swarm is a seeder."""
    f = await publish(live, os.urandom(40_000), "once.bin")
    v1, v2 = bytes.fromhex(f["info_hash_v1"]), bytes.fromhex(f["info_hash_v2"])[:20]
    v1_only = bytes.fromhex(f["info_hash_v1_torrent"])
    hub_like = b"-SH0100-" + b"h" * 12
    for ih in (v1, v1_only):  # as the hub's seeder: the hybrid and the v1 swarm
        await announce(live, ih, port=7021, left=0, event="started", peer_id=hub_like)
    hybrid = b"-LT2010-" + b"l" * 12  # libtorrent: both hashes of the hybrid torrent
    for ih in (v1, v2):
        await announce(live, ih, port=7022, left=0, event="completed", peer_id=hybrid)
    await announce(live, v1_only, port=7024, left=0, event="started")  # aria2: v1 only
    status, body, _ = await fetch(live, f"/api/files/{f['id']}?peer_id={'ab' * 20}")
    assert status == 200
    one = json.loads(body)
    assert (one["seeders"], one["leechers"]) == (3, 0)  # per-swarm sums say 4 or 5
    status, body, _ = await fetch(live, "/api/live", live.admin)
    entry = next(x for x in json.loads(body)["files"] if x["id"] == f["id"])
    assert (entry["seeders"], entry["leechers"]) == (3, 0)
    # A new leecher in the hybrid swarm hears of the file's three seeders (its swarm
    # alone lists two), and of itself as the one leecher.
    answer = await announce(live, v1, port=7023, event="started", peer_id=b"\xab" * 20)
    assert (answer[b"complete"], answer[b"incomplete"]) == (3, 1)


async def test_private_collection(live: Live) -> None:
    admin = live.auth(live.admin)
    async with live.http.post(
        f"{live.url}/api/collections", json={"name": "team", "private": True}, headers=admin
    ) as r:
        assert r.status == 201
    data = os.urandom(70_000)
    f = await publish(live, data, "secret.bin", collection="team")
    reader, reader_info = await live.token("reader", "carol")
    pk = reader_info["passkey"]

    status, body, headers = await fetch(live, f"/t/{f['id']}.torrent")
    assert status == 401 and b"private" in body and "Bearer" in headers["WWW-Authenticate"]
    status, body, _ = await fetch(live, f"/t/{f['id']}.torrent", token="wrong")
    assert status == 403
    status, raw, _ = await fetch(live, f"/t/{f['id']}.torrent", token=reader)
    meta = load_torrent(raw)
    assert meta.private is True
    assert meta.trackers == ((f"{live.url}/announce?passkey={pk}",),)
    assert meta.url_list == (f"{live.url}/k/{pk}/{f['id']}/secret.bin",)
    assert meta.info_hash_v1 is not None and meta.info_hash_v1.hex() == f["info_hash_v1"]
    status, raw_v1, _ = await fetch(live, f"/t/{f['id']}.v1.torrent?token={reader}")
    assert status == 200 and load_torrent(raw_v1).trackers == meta.trackers
    status, magnet, _ = await fetch(live, f"/m/{f['id']}", token=reader)
    assert f"passkey%3D{pk}" in magnet.decode() or f"passkey={pk}" in magnet.decode()

    ih = meta.info_hash_v1
    ok = await announce(live, ih, base=meta.trackers[0][0])
    assert b"failure reason" not in ok
    missing = await announce(live, ih)
    assert b"passkey" in missing[b"failure reason"]
    wrong = await announce(live, ih, base=f"{live.url}/announce?passkey={'0' * 32}")
    assert wrong[b"failure reason"] == b"unknown or revoked passkey"
    async with live.http.get(f"{live.url}/scrape") as r:
        assert ih not in bdecode(await r.read())[b"files"]  # not for strangers

    if HAS_ORIGIN:
        status, body, _ = await fetch(live, f"/f/{f['id']}/secret.bin")
        assert status == 401 and b"error" in body
        status, body, _ = await fetch(live, f"/f/{f['id']}/secret.bin?token={reader}")
        assert status == 200 and body == data
        status, body, _ = await fetch(live, f"/k/{pk}/{f['id']}/secret.bin")
        assert status == 200 and body == data

    async with live.http.post(
        f"{live.url}/api/tokens/{reader_info['id']}/revoke", headers=admin
    ) as r:
        assert r.status == 200
    revoked = await announce(live, ih, base=meta.trackers[0][0])
    assert revoked[b"failure reason"] == b"unknown or revoked passkey"
    status, _, _ = await fetch(live, f"/t/{f['id']}.torrent", token=reader)
    assert status == 403
    status, body, _ = await fetch(live, f"/f/{f['id']}/secret.bin?token={reader}")
    assert status == 403 and b"revoked" in body
    status, _, _ = await fetch(live, f"/k/{pk}/{f['id']}/secret.bin")
    assert status == 403


_SAMPLE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*"
    r'(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\\\|\\"|\\n)*",?)*\})?'
    r" (-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?|NaN|[+-]Inf)$"
)


async def test_metrics_parse_and_count(live: Live) -> None:
    f = await publish(live, os.urandom(10_000), 'we"ird näme.bin')
    await announce(live, bytes.fromhex(f["info_hash_v1"]), left=0)
    # The same hybrid client announces under its truncated v2 hash too: it counts once.
    await announce(live, bytes.fromhex(f["info_hash_v2"])[:20], left=0)
    async with live.http.get(live.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        assert _SAMPLE.match(line), line
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    assert values["swarmhub_files"] == 1
    assert values["swarmhub_bytes_stored"] == 10_000
    assert values["swarmhub_tracker_announces_total"] == 2
    label = f'swarmhub_torrent_seeders{{file="{f["id"]}",name="we\\"ird näme.bin"}}'
    assert values[label] == 1
    for name in (
        "swarmhub_http_bytes_served_total",
        "swarmhub_http_transfers_active",
        "swarmhub_http_transfers_rejected_total",
        "swarmhub_seeder_uploaded_bytes_total",
    ):
        assert name in values


@needs_origin
async def test_plain_download_and_redirect(live: Live) -> None:
    data = os.urandom(123_457)
    f = await publish(live, data, "plain.bin")
    status, body, headers = await fetch(live, f"/f/{f['id']}/plain.bin")
    assert status == 200 and body == data
    assert f["sha256"][:16] in headers["ETag"]
    async with live.http.get(f["url"], headers={"Range": "bytes=1000-1999"}) as r:
        assert r.status == 206 and await r.read() == data[1000:2000]
    async with live.http.head(f["url"]) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
    status, _, headers = await fetch(live, f"/f/{f['id']}")
    assert status == 308 and headers["Location"] == f["url"]
    status, body, _ = await fetch(live, f"/f/{f['id']}/other-name.bin")
    assert status == 404 and b"error" in body
    async with live.http.get(live.url + "/metrics") as r:
        text = await r.text()
    served = re.search(r"^swarmhub_http_bytes_served_total (\d+)$", text, re.M)
    assert served is not None and int(served.group(1)) >= len(data) + 1000


# ------------------------------------------------------------------------------ libtorrent


def _lt_session(lt: Any, port: int) -> Any:
    return lt.session(
        {
            "listen_interfaces": f"127.0.0.1:{port}",
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "dht_bootstrap_nodes": "",
            "enable_incoming_utp": False,
            "enable_outgoing_utp": False,
            "allow_multiple_connections_per_ip": True,
            "out_enc_policy": int(lt.enc_policy.pe_disabled),
            "min_reconnect_time": 1,
            "peer_connect_timeout": 5,
            # libtorrent waits this long on exit even after the hub answered "stopped".
            "stop_tracker_timeout": 1,
        }
    )


async def _lt_download(lt: Any, torrent: bytes, dest: Path, *, web_seed: bool) -> Any:
    holder = [_lt_session(lt, free_port())]
    ses = holder[0]
    try:
        if not web_seed:  # outside the info dict: the info hash stays the same
            outer = bdecode(torrent)
            del outer[b"url-list"]
            torrent = bencode(outer)
        ti = lt.torrent_info(lt.bdecode(torrent))
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(dest)
        handle = ses.add_torrent(atp)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = handle.status()
            if st.is_seeding:
                return st
            if st.errc.value():
                raise AssertionError(f"libtorrent error: {st.errc.message()}")
            await asyncio.sleep(0.1)
        alerts = [a.message() for a in ses.pop_alerts()][-20:]
        raise AssertionError(f"libtorrent did not finish: {handle.status().state} {alerts}")
    finally:
        # Destroying a session waits for its "stopped" announces to the hub, which runs
        # on this event loop: let a thread do it so the hub can answer them.
        del ses
        await asyncio.to_thread(holder.clear)


@pytest.mark.interop
@pytest.mark.parametrize("suffix", [".torrent", ".v1.torrent"])
async def test_libtorrent_downloads_from_the_embedded_seeder(tmp_path: Path, suffix: str) -> None:
    try:
        import libtorrent as lt
    except ImportError:
        lt = None
    need(lt is not None, "libtorrent is not installed")
    data = os.urandom(3 * 1024 * 1024 + 12345)
    async for live in live_hub(tmp_path, peer_listen=("127.0.0.1", 0), tracker_interval=5):
        f = await publish(live, data, "e2e.bin")
        status, torrent, _ = await fetch(live, f"/t/{f['id']}{suffix}")
        assert status == 200
        # Wait (bounded) until the seeder has announced itself to the hub's tracker.
        ih = load_torrent(torrent).info_hash
        deadline = time.monotonic() + 60  # a hang guard, not a margin
        while (await live.hub.tracker.stats(ih))[0] < 1:
            assert time.monotonic() < deadline, "the embedded seeder never announced"
            await asyncio.sleep(0.1)
        await _lt_download(lt, torrent, tmp_path / "lt", web_seed=False)
        assert (tmp_path / "lt" / "e2e.bin").read_bytes() == data
        async with live.http.get(live.url + "/metrics") as r:
            text = await r.text()
        up = re.search(r"^swarmhub_seeder_uploaded_bytes_total (\d+)$", text, re.M)
        assert up is not None and int(up.group(1)) >= len(data)
        check_schema("/api/files/{id}", "get", 200, (await _get_json(live, f["id"])))
    shutil.rmtree(tmp_path / "lt", ignore_errors=True)


async def _get_json(live: Live, file_id: str) -> Any:
    async with live.http.get(f"{live.url}/api/files/{file_id}") as r:
        return await r.json()


@pytest.mark.interop
@needs_origin
async def test_libtorrent_downloads_from_the_web_seed_alone(tmp_path: Path) -> None:
    try:
        import libtorrent as lt
    except ImportError:
        lt = None
    need(lt is not None, "libtorrent is not installed")
    data = os.urandom(2 * 1024 * 1024 + 999)
    async for live in live_hub(tmp_path, peer_listen=None):
        f = await publish(live, data, "ws.bin")
        status, torrent, _ = await fetch(live, f"/t/{f['id']}.torrent")
        assert status == 200
        await _lt_download(lt, torrent, tmp_path / "lt", web_seed=True)
        assert (tmp_path / "lt" / "ws.bin").read_bytes() == data


# ------------------------------------------------------------------------------ commands


def _cli() -> Any:
    import typer

    from swarmhub.hub.commands import register

    app = typer.Typer()
    register(app)
    return app


async def test_publish_command_prints_urls_and_magnet(live: Live, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    pub, _ = await live.token("publisher")
    src = tmp_path / "hello world.txt"
    src.write_bytes(os.urandom(5000))
    args = ["publish", str(src), "--hub", live.url, "--token", pub]
    result = await asyncio.to_thread(CliRunner().invoke, _cli(), args)
    assert result.exit_code == 0, result.output
    async with live.http.get(f"{live.url}/api/files") as r:
        (f,) = (await r.json())["files"]
    assert f["name"] == "hello world.txt" and f["size"] == 5000
    assert f"http:    {f['url']}" in result.output
    assert f"torrent: {f['torrent_url']}" in result.output
    assert "magnet:  magnet:?xt=urn:btih:" + f["info_hash_v1"] in result.output
    bad = await asyncio.to_thread(
        CliRunner().invoke, _cli(), ["publish", str(src), "--hub", live.url, "--token", "nope"]
    )
    assert bad.exit_code == 1 and "403" in bad.output


def test_hub_command_prints_admin_token_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    port = free_port()
    code = (
        "import typer; from swarmhub.hub.commands import register; "
        "app = typer.Typer(); register(app); app()"
    )
    args = [sys.executable, "-c", code, "hub", "--data", str(tmp_path / "d")]
    args += ["--listen", f"127.0.0.1:{port}", "--peer-listen", "off"]
    for attempt in range(2):
        log = tmp_path / f"hub{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while b"hub listening" not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        text = log.read_text()
        if attempt == 0:
            m = re.search(r"admin token: (\S+)", text)
            assert m is not None, text
            assert f"http://127.0.0.1:{port}/admin" in text
        else:
            assert "admin token" not in text  # only on the first start


async def test_seeder_picks_up_catalogued_files_after_restart(tmp_path: Path) -> None:
    async for live in live_hub(tmp_path, peer_listen=("127.0.0.1", 0)):
        f = await publish(live, os.urandom(50_000), "again.bin")
        seeder = live.hub.seeder
        assert seeder is not None
        assert bytes.fromhex(f["info_hash_v1"]) in seeder.session.torrents  # type: ignore[attr-defined]
    shutil.rmtree(tmp_path / "hub" / "seed")  # links are rebuilt from the blobs
    async for live in live_hub(tmp_path, peer_listen=("127.0.0.1", 0)):
        seeder = live.hub.seeder
        assert seeder is not None
        wanted = {bytes.fromhex(f["info_hash_v1"]), bytes.fromhex(f["info_hash_v1_torrent"])}
        deadline = time.monotonic() + 60  # a hang guard, not a margin
        while not wanted <= set(seeder.session.torrents):  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the seeder never took the files up again"
            await asyncio.sleep(0.05)
        assert (tmp_path / "hub" / "seed" / f["id"] / "again.bin").exists()


async def test_deleted_then_republished_file_is_seeded_again(tmp_path: Path) -> None:
    """Delete stops the seeder's swarms and forgets them (Session.remove), so publishing
    the same bytes again seeds them again without a restart."""
    async for live in live_hub(tmp_path, peer_listen=("127.0.0.1", 0)):
        data = os.urandom(50_000)
        f = await publish(live, data, "twice.bin")
        seeder = live.hub.seeder
        assert seeder is not None
        ih = bytes.fromhex(f["info_hash_v1"])
        assert ih in seeder.session.torrents  # type: ignore[attr-defined]
        async with live.http.delete(f"{live.url}/api/files/{f['id']}",
                                    headers=live.auth(live.admin)) as r:
            assert r.status in (200, 204), await r.text()
        assert ih not in seeder.session.torrents  # type: ignore[attr-defined]
        g = await publish(live, data, "twice.bin")
        assert g["info_hash_v1"] == f["info_hash_v1"]
        torrent = seeder.session.torrents.get(ih)  # type: ignore[attr-defined]
        assert torrent is not None and torrent.status().progress == 1.0



async def test_a_failed_tracker_purge_does_not_end_the_purging(tmp_path: Path) -> None:
    """A purge round that fails (Redis away for a moment) used to end the loop for good:
    peers were never dropped again, and stopping the hub raised the old error."""
    from conftest import until

    hub = live_hub(tmp_path, tracker_interval=1, tracker_min_interval=1)
    live = await anext(hub)
    rounds: list[float] = []
    real = live.hub.tracker.purge

    async def flaky(now: float) -> int:
        rounds.append(now)
        if len(rounds) == 1:
            raise ConnectionError("the swarm state went away")
        return await real(now)

    try:
        live.hub.tracker.purge = flaky  # type: ignore[method-assign]
        await until(lambda: len(rounds) >= 2, "a purge round after the failed one")
    finally:
        await hub.aclose()
