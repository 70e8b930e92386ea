"""The ``swarmhub`` command: create, inspect, seed and download torrents (and a demo)."""

# no `from __future__ import annotations`: Typer reads the commands' annotations, and as
# strings it compiles each (twice); evaluated here they cost no compile (startup-43)

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from swarmhub import __version__, ui
from swarmhub.aio import INTERRUPTED, run_cancellable
from swarmhub.discovery import dht_wanted
from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    help="Share files peer-to-peer (BitTorrent), client-server (hub) or both.",
    epilog="Exit status: 0 success, 1 failure (one line on stderr says what to do), "
    "2 usage error, 130 interrupted. -v on a command shows the traceback of a failure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# soft_wrap: a line stays one line whatever the width (paths, links, errors in pipes);
# lazy: rich is not imported before `get` dials its first peer (see ui.LazyConsole)
console = ui.LazyConsole(stderr=True, soft_wrap=True)
out = ui.LazyConsole(soft_wrap=True)

log = logging.getLogger("swarmhub")

#: ``main`` paused the garbage collector for ``get``'s start-up (see :func:`_startup_done`).
_gc_paused = False


def _startup_done() -> None:
    """``get`` has imported what it needs: resume collecting (``main`` paused it), with
    what the imports made moved out of the collector's sight (``gc.freeze``).

    Why: start-up makes a few hundred thousand objects that live until exit and are
    never garbage; collecting while importing them cost a ``get`` ~45 ms of CPU (64 MiB
    from a loopback hub: 0.39 -> 0.34 CPU-s, 8 alternating rounds at load 11-14), and
    every later full collection would walk them again."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise typer.BadParameter(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _serve_addr(text: str) -> tuple[str, int]:
    """``--serve``: HOST:PORT or just PORT; the host defaults to loopback (a local player)."""
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, port = _addr(text)
    return ("127.0.0.1" if text.startswith(":") else host), port


def _file_priorities(meta: Metainfo, specs: list[str]) -> list[int]:
    from swarmhub.engine.selection import SelectionError, file_priorities

    try:
        return file_priorities(meta, specs)
    except SelectionError as exc:
        raise ui.UserError(str(exc), ui.EXIT_USAGE) from None


def _version(v1: bool, v2: bool) -> TorrentVersion:
    if v1 and v2:
        raise typer.BadParameter("choose at most one of --v1 and --v2 (default: hybrid)")
    return TorrentVersion.V1 if v1 else TorrentVersion.V2 if v2 else TorrentVersion.HYBRID


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a peer command (uvloop when installed); Ctrl-C saves resume data first.

    The interrupt line goes out through click, not rich: the lab interrupts its 32 peers
    at once after a run, and making rich's console (its highlighter's regexes) in each
    was about a quarter of a peer's whole-life CPU samples (peercpu-22, py-spy)."""
    code = run_cancellable(coro)
    if code == INTERRUPTED:
        typer.secho("interrupted; resume data saved", fg="yellow", err=True)
    return code


# -- create / info -----------------------------------------------------------------------------

def _compat_note(meta: Metainfo) -> None:
    """Say it where a torrent is made: a hybrid one shuts out two common clients."""
    kind = {TorrentVersion.HYBRID: "hybrid (v1+v2)", TorrentVersion.V2: "v2-only"}
    if meta.version in kind:
        console.print(f"[yellow]note:[/] this torrent is {kind[meta.version]}: aria2 1.36 and "
                      "transmission 3.x cannot use it; add --v1 for one every client can use",
                      highlight=False)


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

    version = _version(v1, v2)
    if output is not None and not output.parent.is_dir():
        raise ui.UserError(f"cannot write {output}: the folder {output.parent} does not "
                           "exist; create it first or choose another -o")
    start = time.perf_counter()
    meta = create_torrent(
        path, version=version, piece_length=piece_size * 1024 if piece_size else None,
        trackers=[[t] for t in tracker or []], url_list=web_seed or [],
        private=private, comment=comment)
    elapsed = time.perf_counter() - start
    target = output or Path(f"{meta.name}.torrent")
    target.write_bytes(torrent_bytes(meta))
    console.print(f"hashed {meta.data_length / 1e6:.1f} MB in {elapsed:.2f} s "
                  f"({meta.data_length / 1e6 / max(elapsed, 1e-9):.0f} MB/s)")
    out.print(f"wrote {target}", highlight=False)
    out.print(make_magnet(meta), soft_wrap=True, highlight=False)
    _compat_note(meta)


@app.command()
def info(torrent: Annotated[Path, typer.Argument(help=".torrent file", exists=True)]) -> None:
    """Show a torrent's name, files, piece size, info hashes and magnet link."""
    from swarmhub.metainfo import make_magnet, read_torrent

    meta = read_torrent(torrent)
    rows = [("name", meta.name), ("version", meta.version.value),
            ("size", f"{meta.data_length:,} bytes in {len(meta.data_files)} file(s)"),
            ("pieces", f"{meta.num_pieces} x {meta.piece_length // 1024} KiB")]
    if meta.info_hash_v1:
        rows.append(("info hash v1", meta.info_hash_v1.hex()))
    if meta.info_hash_v2:
        rows.append(("info hash v2", meta.info_hash_v2.hex()))
    rows.append(("private", "yes" if meta.private else "no"))
    rows += [("tracker", " ".join(tier)) for tier in meta.trackers]
    rows += [("web seed", url) for url in meta.url_list]
    if meta.comment:
        rows.append(("comment", meta.comment))
    rows.append(("magnet", make_magnet(meta)))
    # Plain lines, never wrapped: `info x.torrent | grep magnet` gives the whole link.
    for key, value in rows:
        out.print(f"{key:<13} {value}", soft_wrap=True, highlight=False, markup=False)
    out.print("files:", highlight=False)
    width = len(f"{max((f.length for f in meta.data_files), default=0):,}")
    for i, f in enumerate(meta.data_files):
        out.print(f"{i:>4}  {f.length:>{width},}  {'/'.join(f.path)}", soft_wrap=True,
                  highlight=False, markup=False)


_NO_DHT = "Do not use the Mainline DHT (also SWARMHUB_DHT=0)."
_NO_PEX = "Do not exchange peer lists with peers (BEP 11 PEX; also SWARMHUB_PEX=0)."
_NO_LSD = ("Do not look for peers on the local network by multicast (BEP 14; also "
           "SWARMHUB_LSD=0).")
_DHT_BOOT = ("DHT bootstrap nodes HOST:PORT,... (default: the public routers; turns the DHT "
             "on even under SWARMHUB_DHT=0).")
_DHT_PORT = "UDP port of the DHT node (default: the listening port, or any when that is 0)."


# -- seed / get ----------------------------------------------------------------------------------

def _check_data(meta: Metainfo, torrent: Path, data: Path) -> Path:
    """``seed T DATA``: the folder to save into, once DATA is known to hold T's content.

    DATA may be the content itself (./dataset, ./file.iso) or the folder that holds it; a
    wrong or missing path is an error here, before anything is created on disk.
    """
    if not data.exists():
        kind = "file" if meta.single_file else "folder"
        raise ui.UserError(f"{data} does not exist: give the {kind} {meta.name!r} that "
                           f"{torrent.name} describes, or the folder that holds it")
    save = data.parent if data.name == meta.name else data
    content = save / meta.name
    if meta.single_file:
        if not content.is_file():
            raise ui.UserError(f"{torrent.name} describes one file {meta.name!r}, not found "
                               f"as {content}: give that file or the folder that holds it")
    elif not content.is_dir():
        kind = "a file" if data.is_file() else "a folder without it"
        raise ui.UserError(f"{torrent.name} describes a folder {meta.name!r} of "
                           f"{len(meta.data_files)} file(s), but {data} is {kind}: give that "
                           "folder or the folder that holds it")
    else:
        # Nothing of it there: refuse before the engine makes empty (sparse) files.
        if not any(content.joinpath(*f.path).is_file() for f in meta.data_files):
            raise ui.UserError(f"none of the {len(meta.data_files)} file(s) of "
                               f"{torrent.name} is in {content}: give the folder that holds "
                               "the data")
    return save


def _load_or_create(source: Path, data: Path | None, version: TorrentVersion,
                    trackers: list[str], force: bool) -> tuple[Metainfo, Path, bool]:
    """``seed T DATA`` or ``seed PATH``: returns (metainfo, save path, freshly hashed)."""
    from swarmhub.errors import MetainfoError
    from swarmhub.metainfo import create_torrent, read_torrent, torrent_bytes

    if source.is_file() and source.suffix == ".torrent":
        if data is None:
            raise ui.UserError(f"give the data too: swarmhub seed {source} PATH (the file or "
                               "folder it describes)", ui.EXIT_USAGE)
        meta = read_torrent(source)
        return meta, _check_data(meta, source, data), False
    if data is not None:
        raise ui.UserError("give either a .torrent and its data, or just a file/folder to "
                           "share", ui.EXIT_USAGE)
    meta = create_torrent(source, version=version, trackers=[[t] for t in trackers])
    torrent_file = Path(f"{meta.name}.torrent")
    if torrent_file.exists():
        try:
            same = read_torrent(torrent_file).info_hash == meta.info_hash
        except (MetainfoError, SwarmhubError):
            same = False
        if not same and not force:
            raise ui.UserError(f"{torrent_file} exists and describes other data; --force "
                               f"overwrites it, or seed it: swarmhub seed {torrent_file} "
                               f"{source}")
    if not torrent_file.exists() or force:
        torrent_file.write_bytes(torrent_bytes(meta))
        console.print(f"wrote {torrent_file}", highlight=False)
    _compat_note(meta)
    return meta, source.resolve().parent, True


def _settings(upload_limit: int | None, download_limit: int | None,
              encryption: str | None = None) -> Settings:
    """Engine settings: flags over the environment over the config file over defaults."""
    from swarmhub.config import load_settings

    flags = {"upload_rate_limit": upload_limit, "download_rate_limit": download_limit}
    extra = {"encryption": encryption} if encryption else {}
    return load_settings().replace(
        **{k: v * 1024 for k, v in flags.items() if v is not None}, **extra)


def _encryption(mode: str | None) -> str | None:
    from swarmhub.settings import ENCRYPTION_MODES

    if mode is not None and mode not in ENCRYPTION_MODES:
        raise ui.UserError(f"--encryption must be prefer, require or off, not {mode!r}", 2)
    return mode


_ENCRYPTION_HELP = ("Message stream encryption: prefer (accept both, dial encrypted first), "
                    "require (refuse plaintext peers) or off \\[default: prefer, or "
                    "SWARMHUB_ENCRYPTION].")


def _listen(flag: str | None, command_default: str) -> tuple[str, int]:
    """--listen, else listen_interfaces from the environment or config file, else the
    command's own default (``get`` listens on any free port, ``seed`` on 6881)."""
    if flag is not None:
        return _addr(flag)
    from swarmhub.config import effective

    row = next(r for r in effective() if r.name == "listen_interfaces")
    return _addr(str(row.value).split(",")[0] if row.source != "default" else command_default)


@app.command()
def seed(
    source: Annotated[Path, typer.Argument(help=".torrent file, or a file/folder to share.",
                                           exists=True)],
    data: Annotated[Path | None, typer.Argument(help="The data (when SOURCE is a .torrent).")]
    = None,
    listen: Annotated[str | None, typer.Option(
        help="HOST:PORT to accept peers on \\[default: listen_interfaces, 0.0.0.0:6881].")]
    = None,
    peer: Annotated[list[str] | None, typer.Option(help="Also connect to HOST:PORT.")] = None,
    tracker: Annotated[list[str] | None, typer.Option(help="Announce to this tracker URL.")]
    = None,
    v1: Annotated[bool, typer.Option("--v1", help="Create a v1-only torrent.")] = False,
    v2: Annotated[bool, typer.Option("--v2", help="Create a v2-only torrent.")] = False,
    upload_limit: Annotated[int | None, typer.Option(
        help="KiB/s, 0 = unlimited \\[default: upload_rate_limit].")] = None,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0 = never).")]
    = 0.0,
    trust: Annotated[bool, typer.Option(
        help="Skip checking the data against the torrent before seeding.")] = False,
    encryption: Annotated[str | None, typer.Option(help=_ENCRYPTION_HELP)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing NAME.torrent that describes other data.")]
    = False,
    json_lines: Annotated[bool, typer.Option(
        "--json", help="One JSON status line per second on stdout (the default when stdout "
        "is not a terminal) instead of a live line.")] = False,
    no_dht: Annotated[bool, typer.Option("--no-dht", help=_NO_DHT)] = False,
    no_pex: Annotated[bool, typer.Option("--no-pex", help=_NO_PEX)] = False,
    no_lsd: Annotated[bool, typer.Option("--no-lsd", help=_NO_LSD)] = False,
    dht_bootstrap: Annotated[str | None, typer.Option(help=_DHT_BOOT)] = None,
    dht_port: Annotated[int | None, typer.Option(help=_DHT_PORT)] = None,
    verbose: Annotated[int, typer.Option("-v", count=True, help="More logging.")] = 0,
) -> None:
    """Seed a torrent (or create one for a file/folder and seed it); prints the magnet link."""
    from swarmhub.engine.session import Session
    from swarmhub.metainfo import make_magnet
    from swarmhub.progress import SeedView, emit_json, reachable_address

    ui.setup_logging(verbose)
    encryption = _encryption(encryption)
    host, port = _listen(listen, "0.0.0.0:6881")
    settings = _settings(upload_limit, None, encryption)
    if no_pex:
        settings = settings.replace(pex=False)
    meta, save, fresh = _load_or_create(source, data, _version(v1, v2), tracker or [], force)

    async def go() -> int:
        async with Session(settings) as session, contextlib.AsyncExitStack() as stack:
            actual = await session.listen(host, port)
            trackers = [[t] for t in tracker] if tracker else None
            t = await session.add(meta, save, seed_mode=fresh or trust,
                                  peers=[_addr(p) for p in peer or []], trackers=trackers)
            if t.num_have == 0 and meta.num_pieces:
                raise ui.UserError(f"no piece of {meta.name} in {save} matches the torrent: "
                                   "give the folder that holds the data")
            # after the torrent, as in get: peers that dial in are served while the DHT
            # still resolves its bootstrap routers
            dht = await stack.enter_async_context(
                _dht(session, host, actual, no_dht, dht_bootstrap, dht_port))
            await stack.enter_async_context(_lsd(session, host, no_lsd))
            if t.num_have < meta.num_pieces:
                console.print(f"[yellow]warning:[/] only {t.num_have}/{meta.num_pieces} pieces "
                              f"of {meta.name} verified in {save}; seeding what is there")
            view = SeedView(meta.name, meta.data_length, json_lines=json_lines, console=console)
            magnet = make_magnet(meta, trackers=[u for tier in t.tracker_tiers for u in tier],
                                 peers=[(reachable_address(host), actual)])
            out.print(f"seeding {meta.name} on {host}:{actual}", highlight=False)
            out.print(magnet, soft_wrap=True, highlight=False)
            if view.json_lines:
                emit_json({"event": "listening", "port": actual,
                           "dht_port": dht.port if dht else None})
            deadline = time.monotonic() + duration if duration else None
            with view:
                while deadline is None or time.monotonic() < deadline:
                    await asyncio.sleep(1.0 if deadline is None
                                        else max(0.0, min(1.0, deadline - time.monotonic())))
                    if t.error:
                        raise SwarmhubError(t.error)
                    st = t.status()
                    view.update(peers=st.peers, upload_rate=st.upload_rate,
                                uploaded=st.uploaded, pieces=st.pieces_have,
                                num_pieces=st.num_pieces)
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
    listen: Annotated[str | None, typer.Option(
        help="HOST:PORT to accept peers on \\[default: listen_interfaces if set, else "
        "0.0.0.0:0, any free port].")] = None,
    seed_after: Annotated[float, typer.Option(
        help="Keep seeding this many seconds after completing.")] = 0.0,
    timeout: Annotated[float, typer.Option(
        help="Give up after this many seconds, a magnet's metadata included (0 = never).")]
    = 0.0,
    download_limit: Annotated[int | None, typer.Option(
        help="KiB/s, 0 = unlimited, in every mode \\[default: download_rate_limit].")] = None,
    upload_limit: Annotated[int | None, typer.Option(
        help="KiB/s, 0 = unlimited \\[default: upload_rate_limit].")] = None,
    json_progress: Annotated[bool, typer.Option(
        "--json", help="Print one JSON status line per second (and a last 'finished' line) "
        "on stdout instead of a progress bar.")] = False,
    mode: Annotated[str, typer.Option(
        help="For hub URLs: cs (HTTP only), p2p (peers only) or hybrid (peers first, the "
        "hub's web seed for what the swarm lacks).")] = "hybrid",
    token: Annotated[str | None, typer.Option(
        help="Hub token for private files (or SWARMHUB_TOKEN).", envvar="SWARMHUB_TOKEN")]
    = None,
    encryption: Annotated[str | None, typer.Option(help=_ENCRYPTION_HELP)] = None,
    no_dht: Annotated[bool, typer.Option("--no-dht", help=_NO_DHT + " A hub URL leaves it "
        "off unless --dht-bootstrap or --dht-port asks for it (the hub's tracker and web "
        "seed find the file; joining costs start-up time).")] = False,
    no_pex: Annotated[bool, typer.Option("--no-pex", help=_NO_PEX)] = False,
    no_lsd: Annotated[bool, typer.Option("--no-lsd", help=_NO_LSD)] = False,
    dht_bootstrap: Annotated[str | None, typer.Option(help=_DHT_BOOT)] = None,
    dht_port: Annotated[int | None, typer.Option(help=_DHT_PORT)] = None,
    files: Annotated[list[str] | None, typer.Option(
        "--files", metavar="INDEX|GLOB", help="Only these files: an index as `swarmhub "
        "info` numbers them, or a glob on the path inside the torrent ('docs/*'); "
        "repeatable. Bytes of other files that share a piece are kept in "
        "OUTPUT/.swarmhub.parts, never in files you did not ask for; a later get with more "
        "files (or none) fetches the rest.")] = None,
    sequential: Annotated[bool, typer.Option(
        "--sequential", help="Download in order (the next pieces first, rarest-first "
        "within a read-ahead window), for playing while downloading.")] = False,
    serve: Annotated[str | None, typer.Option(
        "--serve", metavar="[HOST:]PORT", help="Serve the growing files over HTTP with ranges to a "
        "local player; reads wait for verified bytes and pull their pieces forward "
        "(implies --sequential; bind loopback unless you mean it).")] = None,
    verbose: Annotated[int, typer.Option("-v", count=True, help="More logging.")] = 0,
) -> None:
    """Download a torrent; exits 0 only when every chosen piece is verified. Ctrl-C saves
    resume data."""
    from swarmhub.engine.session import Session
    from swarmhub.engine.torrent import Torrent, TorrentState
    from swarmhub.metainfo import parse_magnet, read_torrent
    from swarmhub.progress import DownloadView, Sources
    from swarmhub.wire.messages import bitfield_from_bools

    ui.setup_logging(verbose)
    encryption = _encryption(encryption)
    magnet = None
    meta: Metainfo | None = None
    hub_url = torrent.startswith(("http://", "https://"))
    if mode not in ("cs", "p2p", "hybrid"):
        raise ui.UserError(f"--mode must be cs, p2p or hybrid, not {mode!r}", ui.EXIT_USAGE)
    if hub_url:
        pass
    elif torrent.startswith("magnet:"):
        magnet = parse_magnet(torrent)
    else:
        meta = read_torrent(torrent)
    if meta is not None and files:
        _file_priorities(meta, files)  # a typo is a usage error before anything starts
    serve_addr = _serve_addr(serve) if serve else None
    host, port = _listen(listen, "0.0.0.0:0")
    settings = _settings(upload_limit, download_limit, encryption)
    if no_pex:
        settings = settings.replace(pex=False)
    peers = [_addr(p) for p in peer or []]
    if hub_url and dht_bootstrap is None and dht_port is None:
        no_dht = True  # see --no-dht: the hub's tracker and web seed are enough
    known_trackers = magnet.trackers if magnet else meta.trackers if meta else ()
    if magnet is not None:
        peers += [p for p in magnet.peers if p not in peers]
    lsd_only = (magnet is not None or (meta is not None and not meta.private)) and \
        settings.lsd and not no_lsd
    if not peers and not tracker and not known_trackers and not hub_url and not lsd_only and (
            not dht_wanted(settings, no_dht=no_dht, bootstrap=dht_bootstrap)):
        raise ui.UserError("no way to find peers: give --peer HOST:PORT or --tracker URL, "
                           "or leave the DHT on", ui.EXIT_USAGE)

    async def go() -> int:
        nonlocal meta
        # A lab run (swarmhub.lab.gate.GATE_ENV): wait until every peer is up.
        if gate := os.environ.get("SWARMHUB_LAB_GATE"):
            from swarmhub.lab.gate import wait_gate  # imported only then (start-up cost)

            # What the run imports after the gate (listed by a lab peer's sys.modules; rich
            # only for a bar: with --json nothing imports it; idna: the first dial's name)
            warm = ["swarmhub.discovery.tracker", "swarmhub.discovery.lsd", "encodings.idna",
                    *([] if json_progress else ["rich.console"]),
                    *(["swarmhub.client", "swarmhub.downloads"] if hub_url else []),
                    *(["swarmhub.engine.webseed"] if hub_url and mode == "hybrid" else [])]
            await wait_gate(Path(gate), timeout or 600.0, warm)
        # --timeout covers the whole command, fetching a magnet's metadata included.
        cmd_deadline = time.monotonic() + timeout if timeout else None
        output.mkdir(parents=True, exist_ok=True)
        async with Session(settings) as session, contextlib.AsyncExitStack() as stack:
            actual = await session.listen(host, port)

            async def add(m: Metainfo) -> tuple[Torrent, list[int]]:
                prios = _file_priorities(m, files or [])
                return await session.add(
                    m, output, peers=peers, trackers=[[u] for u in tracker] if tracker
                    else None, file_priorities=prios,
                    sequential=sequential or bool(serve)), prios

            # A .torrent's peers and trackers are dialled before the DHT and LSD start: the
            # DHT resolves its bootstrap routers by DNS first (seconds on a slow resolver),
            # and both find torrents added before them (they poll session.torrents).
            added = await add(meta) if meta is not None else None
            dht = await stack.enter_async_context(
                _dht(session, host, actual, no_dht, dht_bootstrap, dht_port))
            lsd = await stack.enter_async_context(_lsd(session, host, no_lsd))
            if hub_url:
                import swarmhub.client  # noqa: F401  (imported before start-up ends)
            _startup_done()
            if hub_url:
                meta = await _from_hub(session, torrent, mode, output, token, json_progress,
                                       settings.download_rate_limit)
                if meta is None:
                    return 0  # done over HTTP
            elif magnet is not None:
                meta = await _magnet_metadata(session, magnet, peers, tracker or [],
                                              cmd_deadline, timeout or None, dht, lsd)
                console.print(f"got the metadata of {meta.name} from peers")
            assert meta is not None
            t, prios = added or await add(meta)
            # exiting at completion: the hub's tracker counts our "stopped" as completed
            t.tracker.completed_at_stop = hub_url and not tracker and not seed_after \
                and not serve
            st = t.status()
            had = st.wanted_have
            deadline = cmd_deadline
            server = None
            if serve:
                from swarmhub.serve import StreamServer

                assert serve_addr is not None
                server = StreamServer(t, *serve_addr)
                await server.start()
                console.print(f"serving {meta.name} at {server.url}")
            with DownloadView(meta.name, st.wanted_bytes, json_lines=json_progress,
                              console=console) as view:
                while not t.complete.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(t.complete.wait(), 1.0)
                    st = t.status()
                    view.update(st.wanted_have, peers=st.peers, fields={
                        "progress": round(st.progress, 4), "state": st.state.value,
                        "rate_down": int(st.download_rate), "peers": st.peers,
                        "downloaded": st.downloaded, "uploaded": st.uploaded,
                        "hash_fails": st.hash_failures, "banned": st.banned,
                        "webseed": st.webseed_bytes, "have_bytes": st.bytes_have,
                        # verified pieces, so a lab can tell when peers together
                        # hold a full copy (swarmhub.lab.faults)
                        "bitfield": bitfield_from_bools(t.have).hex()})
                    if deadline is not None and time.monotonic() > deadline:
                        why = f" ({st.stalled})" if st.stalled else ""
                        raise SwarmhubError(
                            f"timed out after {timeout:.0f} s with {st.pieces_have}/"
                            f"{st.num_pieces} pieces{why}; run again to resume (verified "
                            "pieces are kept)")
            if t.state is TorrentState.ERROR:
                raise SwarmhubError(f"{t.error}; verified pieces are kept, run again to resume")
            st = t.status()
            sources = Sources(peers_bytes=max(0, st.downloaded - st.webseed_bytes),
                              webseed_bytes=st.webseed_bytes, already_had=had,
                              max_peers=view.max_peers)
            chosen = sum(f.length for f, p in zip(meta.data_files, prios, strict=True) if p)
            what = "every piece" if all(prios) else \
                f"{sum(map(bool, prios))} of {len(prios)} files"
            view.finished(f"{meta.name}, {what} verified", chosen, sources,
                          json_fields={"downloaded": st.downloaded,
                                       "hash_fails": st.hash_failures, "banned": st.banned,
                                       "webseed": st.webseed_bytes,
                                       "churn": t.swarm.churn()})
            if server is not None and not seed_after:
                console.print(f"still serving at {server.url} (Ctrl-C to stop)")
                await asyncio.Event().wait()
            if seed_after:
                await asyncio.sleep(seed_after)
            if server is not None:
                await server.stop()
            return 0

    raise typer.Exit(_run(go()))


async def _from_hub(session: object, url: str, mode: str, output: Path, token: str | None,
                    json_progress: bool, rate_limit: int) -> Metainfo | None:
    """A hub file URL: download it over HTTP (cs), or return its torrent (p2p, hybrid);
    :func:`swarmhub.downloads.hub_meta` with the CLI's progress view.

    In cs mode a hub under load answers 503 with a link to the torrent: we then carry on
    from the swarm (hybrid) instead of failing.
    """
    from swarmhub.client import HubBusy, HubFile, http_download
    from swarmhub.downloads import hub_meta
    from swarmhub.engine.session import Session
    from swarmhub.progress import DownloadView, Sources

    assert isinstance(session, Session)

    async def over_http(info: HubFile) -> bool:
        http = await session.http()
        with DownloadView(info.name, info.size, json_lines=json_progress,
                          console=console) as view:
            first: list[int] = []
            last = [0.0]

            def progress(have: int) -> None:
                if not first:
                    first.append(have)
                now = time.monotonic()
                if now - last[0] >= 1.0 or have == info.size:
                    last[0] = now
                    view.update(have, fields={"progress": round(have / max(info.size, 1), 4),
                                              "have_bytes": have, "mode": "cs"})

            try:
                fetched = await http_download(http, info, output, token=token,
                                              progress=progress, rate_limit=rate_limit)
            except HubBusy as busy:
                console.print(f"[yellow]{busy}[/]: continuing from the swarm")
                return False
            sources = Sources(http_bytes=fetched, already_had=first[0] if first else 0)
            view.finished(f"{info.name} over HTTP, SHA-256 verified", info.size, sources,
                          json_fields={"downloaded": fetched, "mode": "cs"})
            return True

    return await hub_meta(session, url, mode, token, over_http)


async def _magnet_metadata(session: object, magnet: object, peers: list[tuple[str, int]],
                           trackers: list[str], deadline: float | None,
                           timeout: float | None, dht: Any = None,
                           lsd: Any = None) -> Metainfo:
    """Find peers for a magnet (given, x.pe, or one tracker announce) and fetch metadata,
    all before ``deadline`` (time.monotonic(); None: each peer still gets its own progress
    timeout). ``timeout`` is the command's --timeout, named when it expires: what is left of
    it here is less, by however long start-up took on a busy machine."""
    from swarmhub.engine.metadata import fetch_metadata
    from swarmhub.engine.session import Session
    from swarmhub.errors import TrackerError
    from swarmhub.metainfo import Magnet

    assert isinstance(session, Session) and isinstance(magnet, Magnet)
    candidates = list(peers)
    urls = trackers or list(magnet.trackers)
    if urls:
        from swarmhub.discovery.tracker import AnnounceRequest, TrackerTiers

        req = AnnounceRequest(info_hash=magnet.info_hash, peer_id=session.peer_id,
                              port=session.listen_port, uploaded=0, downloaded=0, left=1,
                              event="started")
        try:
            async with asyncio.timeout(_left(deadline)):
                resp = await TrackerTiers([[u] for u in urls], rng=session.rng,
                                          user_agent=session.settings.user_agent).announce(req)
            candidates += [p for p in resp.peers if p not in candidates]
        except TrackerError as exc:
            console.print(f"[yellow]tracker:[/] {exc}")
        except TimeoutError:
            console.print("[yellow]tracker:[/] no answer before --timeout")
    hashes = [h for h in (magnet.info_hash_v1, (magnet.info_hash_v2 or b"")[:20]) if h]
    if lsd is not None and not candidates:
        # on a LAN the swarm answers at once; with the DHT on too, do not wait long for it
        wait = 3.0 if dht is not None else 60.0
        left = _left(deadline)
        candidates += await lsd.peers_for(hashes, wait if left is None else min(wait, left))
        if candidates:
            console.print(f"LSD: {len(candidates)} peers for the magnet link")
            # they announce every 5 min only: the download dials them too (``peers`` is
            # the caller's list, given to session.add once the metadata is here)
            peers.extend(p for p in candidates if p not in peers)
    if dht is not None and not candidates:
        from swarmhub.discovery.dht.source import magnet_peers

        candidates += await magnet_peers(dht, hashes, timeout=_left(deadline))
        console.print(f"DHT: {len(candidates)} peers for the magnet link")
        # the download dials them at once, not after its own DHT lookup (6 s of no peers
        # in the lab's late joiners)
        peers.extend(p for p in candidates if p not in peers)
    return await fetch_metadata(magnet, candidates, session.peer_id, timeout=_left(deadline),
                                peer_timeout=session.settings.request_timeout,
                                encryption=session.settings.encryption, stated_timeout=timeout)


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a time.monotonic() value), never negative; None: none."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _dht(session: Any, host: str, port: int, no_dht: bool, bootstrap: str | None,
         dht_port: int | None) -> contextlib.AbstractAsyncContextManager[Any]:
    """A DHT node for ``get``/``seed`` (or None); its table lives in the state folder."""
    if not dht_wanted(session.settings, no_dht=no_dht, bootstrap=bootstrap):
        return contextlib.nullcontext(None)
    from swarmhub.discovery.dht.commands import state_file
    from swarmhub.discovery.dht.source import dht_for

    return dht_for(session, session.settings, host=host, listen_port=port, no_dht=no_dht,
                   bootstrap=bootstrap, dht_port=dht_port,
                   state_file=state_file(session.state_dir))


def _lsd(session: Any, host: str, no_lsd: bool) -> contextlib.AbstractAsyncContextManager[Any]:
    """BEP 14 local service discovery for ``get``/``seed`` (or None)."""
    from swarmhub.discovery.lsd import lsd_for

    return lsd_for(session, session.settings, host=host, no_lsd=no_lsd)


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
    import tempfile  # here: it imports shutil, and shutil bz2 and lzma (~6 ms for `get`)

    with tempfile.TemporaryDirectory(prefix="swarmhub-demo-") as tmp:
        code = _run(go(Path(tmp)))
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(f"swarmhub {__version__}")


def _command_name(argv: list[str]) -> str | None:
    """The command a command line names (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _register_subcommands(argv: list[str]) -> None:
    """Add the hub, lab and config command groups, unless the command line names one of
    this module's commands: then only that one runs, and ``swarmhub get`` need not import
    the lab and hub modules (and what they pull in) before it dials its first peer, nor
    have Typer read the signatures of the other commands (~6 ms)."""
    first = _command_name(argv)

    def name(c: Any) -> str:
        return str(c.name or c.callback.__name__).replace("_", "-")

    if first in {name(c) for c in app.registered_commands if c.callback is not None} and \
            not any(a.startswith("--show-completion") or a == "--help"
                    for a in argv[:argv.index(first)]):
        app.registered_commands[:] = [c for c in app.registered_commands if name(c) == first]
        return
    from swarmhub.config_commands import register as register_config
    from swarmhub.daemon.commands import register as register_daemon
    from swarmhub.discovery.dht.commands import register as register_dht
    from swarmhub.hub.commands import register as register_hub
    from swarmhub.lab.commands import register as register_lab

    register_hub(app)
    register_dht(app)
    register_lab(app)
    register_config(app)
    register_daemon(app)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"swarmhub {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True,
        callback=_print_version)] = False,
) -> None:
    """Share files peer-to-peer (BitTorrent), client-server (hub) or both."""
    from swarmhub.config import apply_environment_defaults

    apply_environment_defaults()  # state_dir, hub, token from the config file


_register_subcommands(sys.argv[1:])
# Last: every command registered above (here or by register()) gets the error boundary.
ui.install(app)


#: ``SWARMHUB_PROFILE=PATH``: write a cProfile dump of the whole command to PATH at exit
#: (``{pid}`` in PATH becomes the process id: a lab run's peers inherit one setting).
#: Why: the netns lab's peers are real processes started by the lab, not by a profiler.
#: Times are the main thread's CPU time: in a lab of 33 processes on 2 cores, wall time
#: charged other processes' turns to whatever function was running.
PROFILE_ENV = "SWARMHUB_PROFILE"


def _profiled(path: str) -> int:
    """Run the command, under cProfile when ``path`` is set (see :data:`PROFILE_ENV`)."""
    if not path:
        return ui.run(app)
    import cProfile

    prof = cProfile.Profile(time.thread_time)
    try:
        return prof.runcall(ui.run, app)
    finally:
        prof.dump_stats(path.replace("{pid}", str(os.getpid())))


def main() -> None:
    """The ``swarmhub`` console script: exit status as documented in :mod:`swarmhub.ui`.

    ``get`` starts with the garbage collector paused (see :func:`_startup_done`). Once
    the command has returned (files closed, resume data saved, output flushed by then),
    nothing it made needs collecting: the interpreter's exit would walk every object
    in one last collection (~90 ms of a ``get``'s CPU), so they are frozen first.

    ``lab simulate`` first re-executes itself on glibc's malloc with transparent huge
    pages where that helps (:mod:`swarmhub.lab.hugepages`): only the console script may
    replace its process, so the check is here and not in the Typer command."""
    global _gc_paused
    words = [a for a in sys.argv[1:] if not a.startswith("-")]  # the command's name first
    if words[:2] == ["lab", "simulate"]:
        from swarmhub.lab.hugepages import maybe_reexec

        maybe_reexec()  # returns unless huge pages need another allocator: see there
    if words[:1] == ["get"]:
        gc.disable()
        _gc_paused = True
    code = _profiled(os.environ.get(PROFILE_ENV, ""))
    gc.disable()
    gc.freeze()
    sys.exit(code)
