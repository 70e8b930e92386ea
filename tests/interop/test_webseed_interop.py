"""Our url-list layout is the standard one: libtorrent and aria2 download from it alone.

A folder (with names that need percent-encoding) is served by a plain static HTTP server
on 127.0.0.1; we make the torrent with ``url_list=[that server]``; a real client with no
peers at all (no tracker, DHT, LSD, PEX, UPnP, NAT-PMP) must fetch every byte from the
web seed. Our own :class:`WebSeed` fetches the same torrent from the same URL, so the
three clients agree on where each file lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import free_port, need, need_tool
from swarmhub.discovery.httpget import HttpClient
from swarmhub.engine.webseed import WebSeed
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.storage.verify import PieceVerifier

pytestmark = pytest.mark.interop

HAVE_LT = importlib.util.find_spec("libtorrent") is not None
PIECE = 32 * 1024
#: Sizes chosen so files straddle pieces (v1) and get pads (hybrid).
TREE = {
    "a b.bin": 300_000,
    "é#?.bin": 70_001,
    "sub dir/100%+.bin": 5 * PIECE + 17,
    "sub dir/small.txt": 999,
    "z.bin": 2 * PIECE,
}


@dataclass
class Served:
    base: str = ""
    log: list[tuple[str, str | None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def static_server(root: Path) -> AsyncIterator[Served]:
    served = Served()

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        served.log.append((request.path, request.headers.get("Range")))
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.router.add_static("/", root)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        served.base = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        yield served
    finally:
        await runner.cleanup()


def make_folder(www: Path, name: str = "my share") -> Path:
    rng = random.Random(19)
    root = www / "pub" / name
    for rel, size in TREE.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


def same_files(meta: Metainfo, src: Path, dst: Path) -> None:
    for f in meta.data_files:
        got = dst.joinpath(*f.path)
        assert got.is_file(), f"missing {got}"
        assert got.read_bytes() == src.joinpath(*f.path).read_bytes(), "/".join(f.path)


async def wait_until(cond: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


async def our_client_agrees(meta: Metainfo, url: str) -> None:
    verifier = PieceVerifier(meta)
    async with HttpClient() as http:
        ws = WebSeed(url, meta, http)
        seen = 0
        async for index, data in ws.fetch(range(meta.num_pieces)):
            assert verifier.check(index, data), index
            seen += 1
    assert seen == meta.num_pieces


def lt_session() -> Any:
    import libtorrent as lt

    return lt.session(
        {
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "dht_bootstrap_nodes": "",
            "listen_interfaces": "127.0.0.1:0",
            "outgoing_interfaces": "127.0.0.1",
            "enable_ip_notifier": False,
            "alert_mask": lt.alert.category_t.error_notification
            | lt.alert.category_t.peer_notification
            | lt.alert.category_t.status_notification,
        }
    )


@pytest.mark.parametrize(
    "version", [TorrentVersion.V1, TorrentVersion.HYBRID], ids=lambda v: v.value
)
@pytest.mark.parametrize("single", [False, True], ids=["folder", "single"])
async def test_libtorrent_downloads_from_our_url_list_alone(
    tmp_path: Path, version: TorrentVersion, single: bool
) -> None:
    need(HAVE_LT, "libtorrent (python) is not installed")
    import libtorrent as lt

    src = make_folder(tmp_path / "www")
    if single:
        src = src / "a b.bin"
    async with static_server(tmp_path / "www") as srv:
        # single file: the folder holding it (BEP 19 appends the name to a URL ending in /)
        url = srv.base + ("pub/my%20share/" if single else "pub/")
        meta = create_torrent(src, version=version, piece_length=PIECE, url_list=[url])
        assert meta.url_list == (url,)
        if version is TorrentVersion.HYBRID and not single:
            assert any(f.pad for f in meta.files)

        ses = lt_session()
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(torrent_bytes(meta))
        atp.save_path = str(tmp_path / "lt")
        handle = ses.add_torrent(atp)
        alerts: list[str] = []
        try:
            await wait_until(lambda: handle.status().is_seeding, 60, "libtorrent to finish")
        except AssertionError as exc:
            alerts.extend(f"{a.what()}: {a.message()}" for a in ses.pop_alerts())
            raise AssertionError(f"{exc}; libtorrent said: {alerts[-15:]}") from None
        status = handle.status()
        assert status.num_peers <= 1  # the web seed counts as a peer; nothing else exists
        ses.remove_torrent(handle)
        del ses
        same_files(
            meta, src.parent if single else src, tmp_path / "lt" / ("" if single else src.name)
        )
        assert srv.log and all(rng is not None for _, rng in srv.log)
        assert not any("/.pad" in path for path, _ in srv.log)

        await our_client_agrees(meta, url)


@pytest.mark.parametrize("single", [False, True], ids=["folder", "single"])
async def test_aria2_downloads_our_v1_torrent_from_the_web_seed_alone(
    tmp_path: Path, single: bool
) -> None:
    aria2c = need_tool("aria2c")
    src = make_folder(tmp_path / "www")
    if single:
        src = src / "a b.bin"
    async with static_server(tmp_path / "www") as srv:
        # single file: the folder holding it (BEP 19 appends the name to a URL ending in /)
        url = srv.base + ("pub/my%20share/" if single else "pub/")
        meta = create_torrent(src, version=TorrentVersion.V1, piece_length=PIECE, url_list=[url])
        torrent = tmp_path / "share.torrent"
        torrent.write_bytes(torrent_bytes(meta))
        out = tmp_path / "aria2"
        out.mkdir()
        log_file = tmp_path / "aria2.log"
        proc = await asyncio.create_subprocess_exec(
            aria2c,
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--seed-time=0",
            "--bt-stop-timeout=60",
            "--disable-ipv6=true",
            f"--listen-port={free_port()}",
            "--interface=127.0.0.1",
            "--summary-interval=0",
            "--console-log-level=warn",
            f"--log={log_file}",
            "--log-level=info",
            f"--dir={out}",
            str(torrent),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 90)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("aria2c did not finish in 90 s") from None
        text = output.decode(errors="replace")
        assert proc.returncode == 0, f"aria2c exit {proc.returncode}: {text[-2000:]}"
        same_files(meta, src.parent if single else src, out if single else out / src.name)
        assert srv.log and all(rng is not None for _, rng in srv.log)

        await our_client_agrees(meta, url)
