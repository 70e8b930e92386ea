"""The ``swarmhub`` command: create, inspect, seed and download torrents (and a demo)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from swarmhub import __version__
from swarmhub.aio import INTERRUPTED, run_cancellable
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import Metainfo, TorrentVersion

__all__ = ["app", "main"]

app = typer.Typer(
    help="Share files peer-to-peer (BitTorrent), client-server (hub) or both.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

log = logging.getLogger("swarmhub")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise typer.BadParameter(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _version(v1: bool, v2: bool) -> TorrentVersion:
    if v1 and v2:
        raise typer.BadParameter("choose at most one of --v1 and --v2 (default: hybrid)")
    return TorrentVersion.V1 if v1 else TorrentVersion.V2 if v2 else TorrentVersion.HYBRID


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a peer command (uvloop when installed); Ctrl-C saves resume data first."""
    code = run_cancellable(coro)
    if code == INTERRUPTED:
        console.print("[yellow]interrupted; resume data saved[/]")
    return code


# -- create / info -----------------------------------------------------------------------------

@app.command()
def create(
    path: Annotated[Path, typer.Argument(help="File or folder to share.", exists=True)],
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Where to write the .torrent.")] = None,
    v1: Annotated[bool, typer.Option("--v1", help="v1-only torrent (no pad files).")] = False,
    v2: Annotated[bool, typer.Option("--v2", help="v2-only torrent (BEP 52).")] = False,
    piece_size: Annotated[int | None, typer.Option(
        "--piece-size", help="Piece size in KiB (power of two); default: automatic.")] = None,
    tracker: Annotated[list[str] | None, typer.Option(
        "--tracker", "-t", help="Tracker announce URL (repeat for backups).")] = None,
    web_seed: Annotated[list[str] | None, typer.Option(
        "--web-seed", "-w", help="BEP 19 web seed URL.")] = None,
    private: Annotated[bool, typer.Option(help="Set the BEP 27 private flag.")] = False,
    comment: Annotated[str, typer.Option(help="Free-text comment.")] = "",
) -> None:
    """Make a .torrent (hybrid v1+v2 by default) for a file or folder."""
    from swarmhub.metainfo import create_torrent, make_magnet, torrent_bytes

    start = time.perf_counter()
    try:
        meta = create_torrent(
            path, version=_version(v1, v2),
            piece_length=piece_size * 1024 if piece_size else None,
            trackers=[[t] for t in tracker or []], url_list=web_seed or [],
            private=private, comment=comment)
    except SwarmhubError as exc:
        raise _fail(str(exc)) from None
    elapsed = time.perf_counter() - start
    target = output or Path(f"{meta.name}.torrent")
    target.write_bytes(torrent_bytes(meta))
    console.print(f"hashed {meta.data_length / 1e6:.1f} MB in {elapsed:.2f} s "
                  f"({meta.data_length / 1e6 / max(elapsed, 1e-9):.0f} MB/s)")
    out.print(f"wrote {target}")
    out.print(make_magnet(meta), soft_wrap=True)


@app.command()
def info(torrent: Annotated[Path, typer.Argument(help=".torrent file", exists=True)]) -> None:
    """Show a torrent's name, files, piece size, info hashes and magnet link."""
    from swarmhub.metainfo import make_magnet, read_torrent

    try:
        meta = read_torrent(torrent)
    except SwarmhubError as exc:
        raise _fail(str(exc)) from None
    table = Table(show_header=False, box=None)
    table.add_row("name", meta.name)
    table.add_row("version", meta.version.value)
    table.add_row("size", f"{meta.data_length:,} bytes in {len(meta.data_files)} file(s)")
    table.add_row("pieces", f"{meta.num_pieces} x {meta.piece_length // 1024} KiB")
    if meta.info_hash_v1:
        table.add_row("info hash v1", meta.info_hash_v1.hex())
    if meta.info_hash_v2:
        table.add_row("info hash v2", meta.info_hash_v2.hex())
    table.add_row("private", "yes" if meta.private else "no")
    for tier in meta.trackers:
        table.add_row("tracker", " ".join(tier))
    for url in meta.url_list:
        table.add_row("web seed", url)
    if meta.comment:
        table.add_row("comment", meta.comment)
    table.add_row("magnet", make_magnet(meta))
    out.print(table)
    files = Table("size", "path")
    for f in meta.data_files:
        files.add_row(f"{f.length:,}", "/".join(f.path))
    out.print(files)


_NO_DHT = "Do not use the Mainline DHT (also SWARMHUB_DHT=0)."
_DHT_BOOT = ("DHT bootstrap nodes HOST:PORT,... (default: the public routers; turns the DHT "
             "on even under SWARMHUB_DHT=0).")
_DHT_PORT = "UDP port of the DHT node (default: the listening port, or any when that is 0)."


# -- seed / get ----------------------------------------------------------------------------------

def _load_or_create(source: Path, data: Path | None, version: TorrentVersion,
                    trackers: list[str]) -> tuple[Metainfo, Path, bool]:
    """``seed T DATA`` or ``seed PATH``: returns (metainfo, save path, freshly hashed)."""
    from swarmhub.metainfo import create_torrent, read_torrent, torrent_bytes

    if source.is_file() and source.suffix == ".torrent" and data is not None:
        meta = read_torrent(source)
        # DATA may be the content itself (./dataset) or the folder that holds it.
        save = data.parent if data.name == meta.name else data
        return meta, save, False
    if data is not None:
        raise SwarmhubError("give either a .torrent and its data, or just a file/folder to share")
    meta = create_torrent(source, version=version, trackers=[[t] for t in trackers])
    torrent_file = Path(f"{meta.name}.torrent")
    torrent_file.write_bytes(torrent_bytes(meta))
    console.print(f"wrote {torrent_file}")
    return meta, source.resolve().parent, True


def _settings(listen: str, upload_limit: int, download_limit: int) -> object:
    from swarmhub.settings import Settings

    return Settings.from_env().replace(
        upload_rate_limit=upload_limit * 1024, download_rate_limit=download_limit * 1024)


@app.command()
def seed(
    source: Annotated[Path, typer.Argument(help=".torrent file, or a file/folder to share.",
                                           exists=True)],
    data: Annotated[Path | None, typer.Argument(help="The data (when SOURCE is a .torrent).")]
    = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to accept peers on.")] = "0.0.0.0:6881",
    peer: Annotated[list[str] | None, typer.Option(help="Also connect to HOST:PORT.")] = None,
    tracker: Annotated[list[str] | None, typer.Option(help="Announce to this tracker URL.")]
    = None,
    v1: Annotated[bool, typer.Option("--v1", help="Create a v1-only torrent.")] = False,
    v2: Annotated[bool, typer.Option("--v2", help="Create a v2-only torrent.")] = False,
    upload_limit: Annotated[int, typer.Option(help="KiB/s, 0 = unlimited.")] = 0,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0 = never).")]
    = 0.0,
    trust: Annotated[bool, typer.Option(
        help="Skip checking the data against the torrent before seeding.")] = False,
    no_dht: Annotated[bool, typer.Option("--no-dht", help=_NO_DHT)] = False,
    dht_bootstrap: Annotated[str | None, typer.Option(help=_DHT_BOOT)] = None,
    dht_port: Annotated[int | None, typer.Option(help=_DHT_PORT)] = None,
    verbose: Annotated[int, typer.Option("-v", count=True, help="More logging.")] = 0,
) -> None:
    """Seed a torrent (or create one for a file/folder and seed it); prints the magnet link."""
    from swarmhub.engine.session import Session
    from swarmhub.metainfo import make_magnet

    _setup_logging(verbose)
    try:
        meta, save, fresh = _load_or_create(source, data, _version(v1, v2), tracker or [])
    except SwarmhubError as exc:
        raise _fail(str(exc)) from None
    host, port = _addr(listen)

    async def go() -> int:
        settings = _settings(listen, upload_limit, 0)
        async with Session(settings) as session, contextlib.AsyncExitStack() as stack:  # type: ignore[arg-type]
            actual = await session.listen(host, port)
            dht = await stack.enter_async_context(
                _dht(session, host, actual, no_dht, dht_bootstrap, dht_port))
            trackers = [[t] for t in tracker] if tracker else None
            t = await session.add(meta, save, seed_mode=fresh or trust,
                                  peers=[_addr(p) for p in peer or []], trackers=trackers)
            if t.num_have < meta.num_pieces:
                console.print(f"[yellow]warning:[/] only {t.num_have}/{meta.num_pieces} pieces "
                              f"of {meta.name} verified in {save}; seeding what is there")
            out.print(f"seeding {meta.name} on {host}:{actual}", highlight=False)
            out.print(make_magnet(meta), soft_wrap=True)
            print(json.dumps({"event": "listening", "port": actual,
                              "dht_port": dht.port if dht else None}), flush=True)
            deadline = time.monotonic() + duration if duration else None
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1.0 if deadline is None
                                    else max(0.0, min(1.0, deadline - time.monotonic())))
                if t.error:
                    console.print(f"[bold red]error:[/] {t.error}")
                    return 1
            return 0

    raise typer.Exit(_run(go()))


@app.command()
def get(
    torrent: Annotated[str, typer.Argument(
        help=".torrent file, magnet: link, or a hub file URL http://HUB/f/<id>")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Download folder.")]
    = Path("."),
    peer: Annotated[list[str] | None, typer.Option(help="Connect to HOST:PORT directly.")]
    = None,
    tracker: Annotated[list[str] | None, typer.Option(
        help="Use this tracker URL instead of the torrent's.")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to accept peers on (port 0: any).")]
    = "0.0.0.0:0",
    seed_after: Annotated[float, typer.Option(
        help="Keep seeding this many seconds after completing.")] = 0.0,
    timeout: Annotated[float, typer.Option(
        help="Give up after this many seconds, a magnet's metadata included (0 = never).")]
    = 0.0,
    download_limit: Annotated[int, typer.Option(help="KiB/s, 0 = unlimited.")] = 0,
    upload_limit: Annotated[int, typer.Option(help="KiB/s, 0 = unlimited.")] = 0,
    json_progress: Annotated[bool, typer.Option(
        "--json", help="Print one JSON status line per second instead of a progress bar.")]
    = False,
    mode: Annotated[str, typer.Option(
        help="For hub URLs: cs (HTTP only), p2p (peers only) or hybrid (peers first, the "
        "hub's web seed for what the swarm lacks).")] = "hybrid",
    token: Annotated[str | None, typer.Option(
        help="Hub token for private files (or SWARMHUB_TOKEN).", envvar="SWARMHUB_TOKEN")]
    = None,
    no_dht: Annotated[bool, typer.Option("--no-dht", help=_NO_DHT)] = False,
    dht_bootstrap: Annotated[str | None, typer.Option(help=_DHT_BOOT)] = None,
    dht_port: Annotated[int | None, typer.Option(help=_DHT_PORT)] = None,
    verbose: Annotated[int, typer.Option("-v", count=True, help="More logging.")] = 0,
) -> None:
    """Download a torrent; exits 0 only when every piece is verified. Ctrl-C saves resume data."""
    from swarmhub.engine.session import Session
    from swarmhub.engine.torrent import TorrentState
    from swarmhub.metainfo import parse_magnet, read_torrent
    from swarmhub.wire.messages import bitfield_from_bools

    _setup_logging(verbose)
    magnet = None
    meta: Metainfo | None = None
    hub_url = torrent.startswith(("http://", "https://"))
    if mode not in ("cs", "p2p", "hybrid"):
        raise _fail(f"--mode must be cs, p2p or hybrid, not {mode!r}", 2)
    try:
        if hub_url:
            pass
        elif torrent.startswith("magnet:"):
            magnet = parse_magnet(torrent)
        else:
            meta = read_torrent(torrent)
    except SwarmhubError as exc:
        raise _fail(str(exc)) from None
    host, port = _addr(listen)
    peers = [_addr(p) for p in peer or []]
    known_trackers = magnet.trackers if magnet else meta.trackers if meta else ()
    if magnet is not None:
        peers += [p for p in magnet.peers if p not in peers]
    if not peers and not tracker and not known_trackers and not hub_url and (
            no_dht or not (_settings_dht() or dht_bootstrap)):
        raise _fail("no way to find peers: give --peer HOST:PORT or --tracker URL", 2)

    async def go() -> int:
        nonlocal meta
        # --timeout covers the whole command, fetching a magnet's metadata included.
        cmd_deadline = time.monotonic() + timeout if timeout else None
        settings = _settings(listen, upload_limit, download_limit)
        output.mkdir(parents=True, exist_ok=True)
        async with Session(settings) as session, contextlib.AsyncExitStack() as stack:  # type: ignore[arg-type]
            actual = await session.listen(host, port)
            dht = await stack.enter_async_context(
                _dht(session, host, actual, no_dht, dht_bootstrap, dht_port))
            if hub_url:
                try:
                    meta = await _from_hub(session, torrent, mode, output, token,
                                           json_progress)
                except SwarmhubError as exc:
                    console.print(f"[bold red]error:[/] {exc}")
                    return 1
                if meta is None:
                    return 0  # done over HTTP
            elif magnet is not None:
                try:
                    meta = await _magnet_metadata(session, magnet, peers, tracker or [],
                                                  _left(cmd_deadline), dht)
                except SwarmhubError as exc:
                    console.print(f"[bold red]error:[/] {exc}")
                    return 1
                console.print(f"got the metadata of {meta.name} from peers")
            assert meta is not None
            t = await session.add(meta, output, peers=peers,
                                  trackers=[[u] for u in tracker] if tracker else None)
            start = time.monotonic()
            deadline = cmd_deadline
            progress = None if json_progress else Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[peers]} peers"), console=console, transient=False)
            task_id = None
            if progress is not None:
                progress.start()
                task_id = progress.add_task(meta.name, total=meta.total_length, peers=0)
            try:
                while not t.complete.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(t.complete.wait(), 1.0)
                    st = t.status()
                    if progress is not None and task_id is not None:
                        progress.update(task_id, completed=st.bytes_have, peers=st.peers)
                    else:
                        print(json.dumps({
                            "t": round(time.monotonic() - start, 2),
                            "progress": round(st.progress, 4), "state": st.state.value,
                            "rate_down": int(st.download_rate), "peers": st.peers,
                            "downloaded": st.downloaded, "uploaded": st.uploaded,
                            "hash_fails": st.hash_failures, "banned": st.banned,
                            "webseed": st.webseed_bytes, "have_bytes": st.bytes_have,
                            # verified pieces, so a lab can tell when peers together
                            # hold a full copy (swarmhub.lab.faults)
                            "bitfield": bitfield_from_bools(t.have).hex()}), flush=True)
                    if deadline is not None and time.monotonic() > deadline:
                        console.print(f"[bold red]error:[/] timed out after {timeout:.0f} s "
                                      f"with {st.pieces_have}/{st.num_pieces} pieces; "
                                      "run again to resume")
                        return 1
            finally:
                if progress is not None:
                    st = t.status()
                    if task_id is not None:
                        progress.update(task_id, completed=st.bytes_have, peers=st.peers)
                    progress.stop()
            if t.state is TorrentState.ERROR:
                console.print(f"[bold red]error:[/] {t.error}; verified pieces are kept, "
                              "run again to resume")
                return 1
            elapsed = time.monotonic() - start
            st = t.status()
            print(json.dumps({"event": "finished", "elapsed": round(elapsed, 3),
                              "downloaded": st.downloaded, "hash_fails": st.hash_failures,
                              "banned": st.banned, "webseed": st.webseed_bytes}), flush=True)
            console.print(f"[green]complete:[/] {meta.name} ({meta.data_length:,} bytes) "
                          f"in {elapsed:.1f} s, every piece verified")
            if seed_after:
                await asyncio.sleep(seed_after)
            return 0

    raise typer.Exit(_run(go()))


async def _from_hub(session: object, url: str, mode: str, output: Path, token: str | None,
                    json_progress: bool) -> Metainfo | None:
    """A hub file URL: download it over HTTP (cs), or return its torrent (p2p, hybrid).

    In cs mode a hub under load answers 503 with a link to the torrent: we then carry on
    from the swarm (hybrid) instead of failing.
    """
    import dataclasses

    from swarmhub.client import HubBusy, http_download, hub_file, hub_torrent, parse_hub_url
    from swarmhub.engine.session import Session
    from swarmhub.metainfo import load_torrent

    assert isinstance(session, Session)
    http = await session.http()
    base, file_id = parse_hub_url(url)
    info = await hub_file(http, base, file_id, token)
    if mode == "cs":
        start = time.monotonic()
        try:
            fetched = await http_download(http, info, output, token=token)
        except HubBusy as busy:
            console.print(f"[yellow]{busy}[/]: continuing from the swarm")
            mode = "hybrid"
        else:
            elapsed = time.monotonic() - start
            print(json.dumps({"event": "finished", "elapsed": round(elapsed, 3),
                              "downloaded": fetched, "mode": "cs"}), flush=True)
            console.print(f"[green]complete:[/] {info.name} ({info.size:,} bytes) over HTTP in "
                          f"{elapsed:.1f} s, SHA-256 verified")
            return None
    meta = load_torrent(await hub_torrent(http, info.torrent_url, token))
    if mode == "p2p":
        meta = dataclasses.replace(meta, url_list=())
    return meta


async def _magnet_metadata(session: object, magnet: object, peers: list[tuple[str, int]],
                           trackers: list[str], timeout: float | None,
                           dht: Any = None) -> Metainfo:
    """Find peers for a magnet (given, x.pe, or one tracker announce) and fetch metadata,
    all within ``timeout`` seconds (None: each peer still gets its own progress timeout)."""
    from swarmhub.discovery.tracker import AnnounceRequest, TrackerTiers
    from swarmhub.engine.metadata import fetch_metadata
    from swarmhub.engine.session import Session
    from swarmhub.errors import TrackerError
    from swarmhub.metainfo import Magnet

    assert isinstance(session, Session) and isinstance(magnet, Magnet)
    deadline = None if timeout is None else time.monotonic() + timeout
    candidates = list(peers)
    urls = trackers or list(magnet.trackers)
    if urls:
        req = AnnounceRequest(info_hash=magnet.info_hash, peer_id=session.peer_id,
                              port=session.listen_port, uploaded=0, downloaded=0, left=1,
                              event="started")
        try:
            async with asyncio.timeout(_left(deadline)):
                resp = await TrackerTiers([[u] for u in urls], rng=session.rng).announce(
                    await session.http(), req)
            candidates += [p for p in resp.peers if p not in candidates]
        except TrackerError as exc:
            console.print(f"[yellow]tracker:[/] {exc}")
        except TimeoutError:
            console.print("[yellow]tracker:[/] no answer before --timeout")
    if dht is not None and not candidates:
        from swarmhub.discovery.dht.source import magnet_peers

        hashes = [h for h in (magnet.info_hash_v1, (magnet.info_hash_v2 or b"")[:20]) if h]
        candidates += await magnet_peers(dht, hashes, timeout=_left(deadline))
        console.print(f"DHT: {len(candidates)} peers for the magnet link")
    return await fetch_metadata(magnet, candidates, session.peer_id, timeout=_left(deadline),
                                peer_timeout=session.settings.request_timeout)


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a time.monotonic() value), never negative; None: none."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _settings_dht() -> bool:
    from swarmhub.settings import Settings

    return Settings.from_env().dht


def _dht(session: Any, host: str, port: int, no_dht: bool, bootstrap: str | None,
         dht_port: int | None) -> contextlib.AbstractAsyncContextManager[Any]:
    """A DHT node for ``get``/``seed`` (or None); its table lives in the state folder."""
    from swarmhub.discovery.dht.commands import state_file
    from swarmhub.discovery.dht.source import dht_for

    return dht_for(session, session.settings, host=host, listen_port=port, no_dht=no_dht,
                   bootstrap=bootstrap, dht_port=dht_port,
                   state_file=state_file(session.state_dir))


# -- demo --------------------------------------------------------------------------------------

@app.command()
def demo(
    size: Annotated[int, typer.Option(help="MiB of sample data.")] = 64,
    workdir: Annotated[Path | None, typer.Option(help="Keep files here (default: temp).")]
    = None,
) -> None:
    """Share a sample folder between two local peers over loopback and verify the copy."""
    from swarmhub.engine.session import Session
    from swarmhub.metainfo import create_torrent, make_magnet

    async def go(base: Path) -> int:
        src = base / "seed" / "sample"
        src.mkdir(parents=True, exist_ok=True)
        rnd = os.urandom
        sizes = [size * (1 << 20) // 2, size * (1 << 20) // 3, 12345]
        for i, n in enumerate(sizes):
            with open(src / f"part-{i}.bin", "wb") as fh:
                left = n
                while left:
                    chunk = min(left, 1 << 20)
                    fh.write(rnd(chunk))
                    left -= chunk
        t0 = time.perf_counter()
        meta = create_torrent(src)
        t1 = time.perf_counter()
        out.print(f"created hybrid torrent for {meta.data_length / 2**20:.1f} MiB "
                  f"in {t1 - t0:.2f} s")
        out.print(make_magnet(meta), soft_wrap=True)
        async with Session(state_dir=base / "state-a") as seeder, \
                Session(state_dir=base / "state-b") as leecher:
            port = await seeder.listen("127.0.0.1", 0)
            await seeder.add(meta, src.parent, seed_mode=True)
            await leecher.listen("127.0.0.1", 0)
            start = time.perf_counter()
            t = await leecher.add(meta, base / "downloads", peers=[("127.0.0.1", port)])
            await asyncio.wait_for(t.complete.wait(), 600)
            elapsed = time.perf_counter() - start
        if t.error:
            console.print(f"[bold red]error:[/] {t.error}")
            return 1
        for f in meta.data_files:
            a = (src.parent / meta.name).joinpath(*f.path[0:]).read_bytes()
            b = (base / "downloads" / meta.name).joinpath(*f.path).read_bytes()
            if a != b:
                console.print(f"[bold red]error:[/] {'/'.join(f.path)} differs")
                return 1
        out.print(f"[green]ok:[/] downloaded {meta.data_length / 2**20:.1f} MiB peer-to-peer in "
                  f"{elapsed:.2f} s ({meta.data_length / 1e6 / elapsed:.0f} MB/s), "
                  "files identical")
        return 0

    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        raise typer.Exit(_run(go(workdir)))
    with tempfile.TemporaryDirectory(prefix="swarmhub-demo-") as tmp:
        code = _run(go(Path(tmp)))
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(f"swarmhub {__version__}")


def _register_subcommands() -> None:
    from swarmhub.discovery.dht.commands import register as register_dht
    from swarmhub.hub.commands import register as register_hub
    from swarmhub.lab.commands import register as register_lab

    register_hub(app)
    register_dht(app)
    register_lab(app)


_register_subcommands()


def main() -> None:
    try:
        app()
    except SwarmhubError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
