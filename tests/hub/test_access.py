"""One access rule for every path to a private file's bytes, the embedded seeder included.

Issue 11, finding 1: a revoked reader kept the private .torrent and downloaded the file
from the hub's seeder with ``swarmhub get THAT.torrent --peer <seeder>``. These tests run
the hub in-process (its seeder is inspectable) and real clients as separate processes:
our CLI and libtorrent (``tests/interop/ltpeer.py``: DHT, LSD, UPnP and NAT-PMP off).
The torrents handed to clients lose their web seed (outside the info dict: the swarm is
the same), so the seeder is the only source and the test sees exactly that path.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_api import Live, live_hub
from test_app import announce, fetch, publish

from conftest import need, until
from interop.harness import VENV_PYTHON, LtPeer, Proc
from swarmhub.bencode import bdecode, bencode
from swarmhub.hub.access import SwarmAccess, normalize_ip
from swarmhub.hub.tracker import AnnounceParams, TrackerState

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def live(tmp_path: Path, hub_backend: dict[str, str]) -> AsyncIterator[Live]:
    async for x in live_hub(tmp_path, max_upload_size=64 << 20, peer_listen=("127.0.0.1", 0),
                            tracker_interval=5, **hub_backend):
        async with x.http.post(f"{x.url}/api/collections", json={"name": "team", "private": True},
                               headers=x.auth(x.admin)) as r:
            assert r.status == 201
        yield x


def seeder_of(live: Live) -> Any:
    seeder = live.hub.seeder
    assert seeder is not None and seeder.session is not None  # type: ignore[attr-defined]
    return seeder


def seeder_peers(live: Live, file: dict[str, Any]) -> int:
    """Connections the seeder holds in the file's swarms (hybrid and v1)."""
    torrents = seeder_of(live).session.torrents
    hashes = {bytes.fromhex(file["info_hash_v1"]), bytes.fromhex(file["info_hash_v1_torrent"])}
    return sum(len(t.peers) for h, t in torrents.items() if h in hashes)


def seeder_uploaded(live: Live, file: dict[str, Any]) -> int:
    stats = seeder_of(live).upload_stats()
    hashes = {bytes.fromhex(file["info_hash_v1"]), bytes.fromhex(file["info_hash_v1_torrent"])}
    return sum(up for h, (up, _) in stats.items() if h in hashes)


async def torrent_file(live: Live, file_id: str, token: str, dest: Path) -> Path:
    """The user's private .torrent, web seed removed: the seeder is the only source."""
    status, raw, _ = await fetch(live, f"/t/{file_id}.torrent", token=token)
    assert status == 200, raw
    outer = bdecode(raw)
    assert outer[b"info"][b"private"] == 1
    outer.pop(b"url-list", None)
    dest.write_bytes(bencode(outer))
    return dest


def swarmhub_get(torrent: Path, dest: Path, work: Path, name: str, *extra: str) -> Proc:
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(work / f"state-{name}"))
    return Proc([VENV_PYTHON, "-m", "swarmhub", "get", str(torrent), "-o", str(dest), "--json",
                 "--listen", "127.0.0.1:0", *extra], env=env, name=name, log=work / f"{name}.log")


def downloaded(proc: Proc) -> int:
    """Payload bytes the CLI reports having received (its last JSON status line)."""
    for line in reversed(proc.output().splitlines()):
        if line.startswith("{") and '"downloaded"' in line:
            return int(json.loads(line)["downloaded"])
    return 0


async def revoke(live: Live, token_id: str) -> None:
    async with live.http.post(f"{live.url}/api/tokens/{token_id}/revoke",
                              headers=live.auth(live.admin)) as r:
        assert r.status == 200


# ------------------------------------------------------------------------------ seeder


async def test_revoked_reader_gets_nothing_from_the_seeder(live: Live, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 7)
    f = await publish(live, data, "secret.bin", collection="team")
    reader, info = await live.token("reader", "mallory")
    tfile = await torrent_file(live, f["id"], reader, tmp_path / "kept.torrent")
    await revoke(live, info["id"])
    seeder = seeder_of(live)
    refused: list[str] = []
    admit = seeder.session.peer_filter

    def watch(info_hash: bytes, addr: tuple[str, int], peer_id: bytes,
              outgoing: bool) -> str | None:
        reason = admit(info_hash, addr, peer_id, outgoing)
        if reason is not None:
            refused.append(reason)
        return reason

    seeder.session.peer_filter = watch
    peer = f"127.0.0.1:{seeder.port}"
    with swarmhub_get(tfile, tmp_path / "dl", tmp_path, "get-revoked", "--peer", peer,
                      "--timeout", "30") as g:
        await until(lambda: len(refused) >= 1, "the seeder refusing the revoked reader")
        assert g.poll() is None, g.describe()  # still trying: it got nothing
        assert downloaded(g) == 0 and seeder_uploaded(live, f) == 0
    assert "passkey" in refused[0]
    assert not (tmp_path / "dl" / "secret.bin").exists() or \
        (tmp_path / "dl" / "secret.bin").read_bytes() != data


async def test_revoking_closes_a_running_download_and_others_keep_going(
    live: Live, tmp_path: Path
) -> None:
    data = os.urandom(6 * 1024 * 1024)
    f = await publish(live, data, "big.bin", collection="team")
    alice, alice_info = await live.token("reader", "alice")
    bob, _ = await live.token("reader", "bob")
    a_torrent = await torrent_file(live, f["id"], alice, tmp_path / "alice.torrent")
    b_torrent = await torrent_file(live, f["id"], bob, tmp_path / "bob.torrent")
    # Alice downloads slowly (64 KiB/s), finding the seeder through the tracker.
    with swarmhub_get(a_torrent, tmp_path / "a", tmp_path, "get-alice",
                      "--download-limit", "64", "--timeout", "120") as a:
        await until(lambda: downloaded(a) > 0 and seeder_peers(live, f) > 0,
                    "alice downloading from the seeder")
        await revoke(live, alice_info["id"])
        # The revocation closed her connection at once (no re-announce needed) ...
        assert seeder_peers(live, f) == 0
        assert live.hub.access.revoke(alice_info["id"]) == []  # nothing of hers is left
        # ... her tracker entries are gone, and reconnecting does not help her.
        complete, _, incomplete = await live.hub.tracker.stats(bytes.fromhex(f["info_hash_v1"]))
        assert incomplete == 0 and complete == 1  # only the seeder
        got = downloaded(a)
        with swarmhub_get(b_torrent, tmp_path / "b", tmp_path, "get-bob", "--timeout", "120") as b:
            assert await asyncio.to_thread(b.wait, 150) == 0, b.describe()
        assert a.poll() is None, a.describe()  # still trying, never finished
        # At most what was in flight when she was cut off (a few 16 KiB blocks).
        assert downloaded(a) <= got + (1 << 20), (downloaded(a), got)
    assert (tmp_path / "b" / "big.bin").read_bytes() == data
    assert not (tmp_path / "a" / "big.bin").exists() or \
        (tmp_path / "a" / "big.bin").read_bytes() != data
    assert seeder_uploaded(live, f) >= len(data)


async def test_libtorrent_with_a_valid_passkey_downloads_from_the_seeder(
    live: Live, tmp_path: Path
) -> None:
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        need(False, "libtorrent is not installed")
    data = os.urandom(3 * 1024 * 1024 + 99)
    f = await publish(live, data, "lt.bin", collection="team")
    reader, _ = await live.token("reader", "lt")
    tfile = await torrent_file(live, f["id"], reader, tmp_path / "lt.torrent")
    lt = LtPeer(tfile, tmp_path / "lt", stop_when_done=True, timeout=120, log_dir=tmp_path,
                name="lt-private")
    try:
        await asyncio.to_thread(lt.start)
        await asyncio.to_thread(lt.wait_finished, 120)
    finally:
        await asyncio.to_thread(lt.stop)
    assert (tmp_path / "lt" / "lt.bin").read_bytes() == data
    assert seeder_uploaded(live, f) >= len(data)


async def test_a_peer_without_a_passkey_announce_is_refused_even_from_a_granted_ip(
    live: Live,
) -> None:
    """Same address, other peer id: loopback and NATs put many peers behind one IP."""
    f = await publish(live, os.urandom(100_000), "x.bin", collection="team")
    _, info = await live.token("reader")
    ih = bytes.fromhex(f["info_hash_v1"])
    ok = await announce(live, ih, base=f"{live.url}/announce?passkey={info['passkey']}")
    assert b"failure reason" not in ok
    seeder = seeder_of(live)
    now = asyncio.get_running_loop().time()
    (granted,) = [k for k in live.hub.access._grants]  # (file, ip, peer id)
    assert granted[:2] == (f["id"], "127.0.0.1")
    assert seeder.admit(ih, ("127.0.0.1", 1), granted[2]) is None
    assert live.hub.access.allows(f["id"], ("::ffff:127.0.0.1", 1), granted[2], now)
    other = b"-XX0000-someoneelse1"
    assert seeder.admit(ih, ("127.0.0.1", 1), other) is not None
    assert seeder.admit(ih, ("127.0.0.1", 7000), other) is not None  # it dialed us
    assert seeder.admit(ih, ("127.0.0.1", 7000), other, True) is None  # we dialed it
    assert seeder.admit(ih, ("127.0.0.2", 1), granted[2]) is not None
    public = await publish(live, os.urandom(50_000), "pub.bin")
    assert seeder.admit(bytes.fromhex(public["info_hash_v1"]), ("10.0.0.1", 1), b"a" * 20) is None


# ------------------------------------------------------------------------------ units


def test_swarm_access_expires_and_revokes() -> None:
    acc = SwarmAccess(ttl=10)
    p, entry = b"p" * 20, (b"h" * 20, "127.0.0.1", 6881, b"p" * 20)
    acc.record(file_id="f", ip="::ffff:127.0.0.1", port=6881, peer_id=p, token_id="t1",
               entry=entry, now=100)
    assert acc.allows("f", ("127.0.0.1", 50000), p, 109.9)  # its peer id, any port
    assert not acc.allows("f", ("127.0.0.1", 50000), p, 110.0)  # one ttl after the announce
    assert not acc.allows("g", ("127.0.0.1", 50000), p, 100)
    # A per-connection peer id: only on a connection the seeder made to the listening port.
    assert acc.allows("f", ("127.0.0.1", 6881), b"r" * 20, 101, outgoing=True)
    assert not acc.allows("f", ("127.0.0.1", 6881), b"r" * 20, 101)
    assert not acc.allows("f", ("127.0.0.1", 6882), b"r" * 20, 101, outgoing=True)
    assert not acc.allows("f", ("127.0.0.2", 6881), b"r" * 20, 101, outgoing=True)
    acc.record(file_id="f", ip="127.0.0.1", port=6881, peer_id=p, token_id="t1",
               entry=entry, now=105)  # a re-announce extends it
    assert acc.allows("f", ("127.0.0.1", 1), p, 114)
    acc.record(file_id="g", ip="10.1.1.1", port=1, peer_id=b"q" * 20, token_id="t2",
               entry=(b"g" * 20, "10.1.1.1", 1, b"q" * 20), now=105)
    assert acc.revoke("t1") == [entry]
    assert not acc.allows("f", ("127.0.0.1", 1), p, 106)
    assert not acc.allows("f", ("127.0.0.1", 6881), b"r" * 20, 106, outgoing=True)
    assert acc.revoke("t1") == [] and len(acc) == 1
    assert acc.expire(200) == 1 and len(acc) == 0
    assert not acc.allows("g", ("10.1.1.1", 1), b"x" * 20, 106, outgoing=True)
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1" and normalize_ip("host") == "host"


def test_one_token_cannot_grow_the_access_table_without_bound() -> None:
    acc = SwarmAccess(ttl=10, max_per_token=3)
    for i in range(10):
        pid = b"%020d" % i
        acc.record(file_id="f", ip="10.0.0.1", port=i + 1, peer_id=pid, token_id="t",
                   entry=(b"h" * 20, "10.0.0.1", i + 1, pid), now=float(i))
    assert len(acc) == 3
    assert acc.allows("f", ("10.0.0.1", 0), b"%020d" % 9, 9.5)  # the newest stay
    assert not acc.allows("f", ("10.0.0.1", 0), b"%020d" % 6, 9.5)
    assert not acc.allows("f", ("10.0.0.1", 7), b"x" * 20, 9.5, outgoing=True)
    assert len(acc.revoke("t")) == 3 and len(acc) == 0


def test_tracker_drop_removes_only_that_peer() -> None:
    state = TrackerState()
    ih = b"i" * 20
    for port, pid in ((1000, b"a" * 20), (1001, b"b" * 20)):
        state.announce(AnnounceParams(info_hash=ih, peer_id=pid, ip="10.0.0.1", port=port,
                                      left=5), now=1.0)
    assert not state.drop(ih, "10.0.0.1", 1000, b"z" * 20)  # another peer now at that address
    assert state.drop(ih, "10.0.0.1", 1000, b"a" * 20)
    assert not state.drop(ih, "10.0.0.1", 1000, b"a" * 20)
    assert state.stats(ih) == (0, 0, 1)


# ------------------------------------------------------------------------------ leaks


async def test_private_files_leak_nothing_without_a_token(live: Live) -> None:
    """Issue 11, finding 2: /metrics, /f/<id> and /api/collections named private files."""
    public = await publish(live, os.urandom(20_000), "brochure.bin")
    async with live.http.post(f"{live.url}/api/collections",
                              json={"name": "skunkworks", "private": True},
                              headers=live.auth(live.admin)) as r:
        assert r.status == 201
    f = await publish(live, os.urandom(30_000), "merger-plan.bin", collection="skunkworks")
    reader, info = await live.token("reader")
    ih = bytes.fromhex(f["info_hash_v1"])
    ok = await announce(live, ih, base=f"{live.url}/announce?passkey={info['passkey']}")
    assert b"failure reason" not in ok
    secrets_ = ["merger-plan", "skunkworks", f["sha256"], f["info_hash_v1"],
                f["info_hash_v2"], f["info_hash_v1_torrent"]]

    async def stranger(path: str, token: str | None = None) -> tuple[int, str]:
        async with live.http.get(live.url + path, headers=live.auth(token),
                                 allow_redirects=False) as r:
            text = (await r.read()).decode("latin-1") + repr(dict(r.headers))
        leaked = [s for s in secrets_ if s in text or s in urllib.parse.unquote(text)]
        assert not leaked, f"{path} shows {leaked}: {text[:300]}"
        return r.status, text

    fid = f["id"]
    status, text = await stranger("/metrics")
    assert status == 200 and f'file="{public["id"]}"' in text and fid not in text
    assert re.search(r"^swarmhub_private_leechers 1$", text, re.M), text
    assert re.search(r"^swarmhub_private_seeders [1-9]$", text, re.M), text  # the seeder
    assert (await stranger(f"/f/{fid}"))[0] == 401
    assert (await stranger(f"/f/{fid}?token=not-a-token"))[0] == 403
    status, text = await stranger("/api/collections")
    assert status == 200 and "skunkworks" not in text
    assert (await stranger("/api/files"))[0] == 200
    assert (await stranger("/api/files?collection=skunkworks"))[0] == 200
    assert (await stranger(f"/api/files/{fid}"))[0] == 404
    for path in (f"/t/{fid}.torrent", f"/t/{fid}.v1.torrent", f"/m/{fid}",
                 f"/f/{fid}/merger-plan.bin"):
        assert (await stranger(path))[0] == 401, path
    assert (await stranger(f"/k/{'0' * 32}/{fid}/merger-plan.bin"))[0] == 403
    assert (await stranger("/scrape"))[0] == 200
    q = urllib.parse.quote_from_bytes(ih)
    assert (await stranger(f"/scrape?info_hash={q}"))[0] == 200
    # A reader sees all of it, and a revoked reader is a stranger again.
    async with live.http.get(f"{live.url}/f/{fid}", headers=live.auth(reader),
                             allow_redirects=False) as r:
        assert r.status == 308 and r.headers["Location"].endswith("/merger-plan.bin")
    async with live.http.get(f"{live.url}/api/collections", headers=live.auth(reader)) as r:
        assert "skunkworks" in [c["name"] for c in (await r.json())["collections"]]
    await revoke(live, info["id"])
    assert (await stranger(f"/f/{fid}?token={reader}"))[0] == 403
    assert (await stranger(f"/k/{info['passkey']}/{fid}/merger-plan.bin"))[0] == 403
    status, text = await stranger("/metrics")
    assert re.search(r"^swarmhub_private_leechers 0$", text, re.M), text  # dropped at once
