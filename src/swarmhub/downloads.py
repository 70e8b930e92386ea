"""Downloading from a script: :func:`download` (blocking) and :func:`fetch` (async).

Both take what ``swarmhub get`` takes (a .torrent path, a magnet link or a hub file URL)
and return a :class:`DownloadResult` once every piece (or, over HTTP, the whole file's
SHA-256) is verified; failures raise :class:`~swarmhub.errors.SwarmhubError` subclasses
with a message a user can act on. They drive the same engine as the CLI::

    result = swarmhub.download("dataset.torrent", "downloads",
                               peers=[("127.0.0.1", 6881)])
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from swarmhub.errors import SwarmhubError, TrackerError
from swarmhub.settings import Settings

if TYPE_CHECKING:
    from swarmhub.client import HubFile
    from swarmhub.engine.session import Session
    from swarmhub.metainfo import Magnet, Metainfo

__all__ = ["DownloadResult", "Progress", "download", "fetch"]

log = logging.getLogger(__name__)

Mode = Literal["cs", "p2p", "hybrid"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Handed to ``on_progress`` about once a second."""

    have_bytes: int
    total_bytes: int
    download_rate: float
    peers: int


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """What a finished download produced and where its bytes came from."""

    #: The file or folder written (``dest / name``).
    path: Path
    name: str
    size: int
    elapsed: float
    #: Bytes received in this run (peers, web seed or HTTP), not counting what was on disk.
    downloaded: int
    #: Of ``downloaded``, bytes from the hub (web seed or plain HTTP).
    from_hub: int
    #: ``"cs"`` when the file came over plain HTTP, else ``"p2p"``/``"hybrid"``.
    mode: str


async def fetch(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str] = ".",
    *,
    peers: Sequence[tuple[str, int]] = (),
    trackers: Sequence[str] = (),
    mode: Mode = "hybrid",
    token: str | None = None,
    timeout: float | None = None,
    settings: Settings | None = None,
    state_dir: Path | None = None,
    listen: tuple[str, int] = ("0.0.0.0", 0),
    on_progress: Callable[[Progress], None] | None = None,
    files: Sequence[str] = (),
    sequential: bool = False,
) -> DownloadResult:
    """Download ``src`` into the folder ``dest``; see the module docstring.

    ``files``: only these (indices as ``swarmhub info`` numbers them, or globs on the path
    inside the torrent), as ``get --files``; ``sequential``: in order, as ``--sequential``.

    ``mode`` matters for hub URLs only: ``cs`` is plain HTTP, ``p2p`` peers only, ``hybrid``
    peers first and the hub's web seed for the rest. ``timeout`` (seconds) bounds the
    whole download, a magnet's metadata included; on expiry :class:`TimeoutError` is
    raised and verified pieces stay on disk for the next call.
    """
    from swarmhub.engine.session import Session

    if mode not in ("cs", "p2p", "hybrid"):
        raise SwarmhubError(f"mode must be cs, p2p or hybrid, not {mode!r}")
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    text = os.fspath(src)
    async with asyncio.timeout(timeout):
        async with Session(settings or Settings.from_env(), state_dir=state_dir) as session:
            await session.listen(*listen)
            return await _fetch(session, text, out, list(peers), list(trackers), mode, token,
                                on_progress, list(files), sequential)


def download(src: str | os.PathLike[str], dest: str | os.PathLike[str] = ".",
             **options: object) -> DownloadResult:
    """Blocking :func:`fetch` for scripts without an event loop (same arguments)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SwarmhubError("swarmhub.download() blocks: inside async code, await "
                            "swarmhub.fetch() instead")
    return asyncio.run(fetch(src, dest, **options))  # type: ignore[arg-type]


async def _fetch(session: Session, src: str, dest: Path, peers: list[tuple[str, int]],
                 trackers: list[str], mode: Mode, token: str | None,
                 on_progress: Callable[[Progress], None] | None,
                 files: list[str] | None = None, sequential: bool = False) -> DownloadResult:
    from swarmhub.metainfo import parse_magnet, read_torrent

    start = time.monotonic()
    meta: Metainfo
    if src.startswith(("http://", "https://")):
        got = await _from_hub(session, src, dest, mode, token, on_progress, start)
        if isinstance(got, DownloadResult):
            return got
        meta = got
    elif src.startswith("magnet:"):
        magnet = parse_magnet(src)
        peers += [p for p in magnet.peers if p not in peers]
        meta = await _magnet_metadata(session, magnet, peers, trackers)
    else:
        meta = read_torrent(src)
    if not peers and not trackers and not meta.trackers and not meta.url_list:
        raise SwarmhubError("no way to find peers: give peers=[(host, port)] or trackers=[url]")
    from swarmhub.engine.selection import file_priorities

    t = await session.add(meta, dest, peers=peers,
                          trackers=[[u] for u in trackers] if trackers else None,
                          file_priorities=file_priorities(meta, files or []),
                          sequential=sequential)
    # stops at completion: a hub's tracker counts our "stopped" as the completed download
    t.tracker.completed_at_stop = src.startswith(("http://", "https://")) and not trackers
    while not t.complete.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(t.complete.wait(), 1.0)
        if t.error:
            break
        if on_progress is not None:
            st = t.status()
            on_progress(Progress(st.wanted_have, st.wanted_bytes, st.download_rate, st.peers))
    if t.error:
        raise SwarmhubError(f"{t.error}; verified pieces are kept, run again to resume")
    st = t.status()
    return DownloadResult(dest / meta.name, meta.name, meta.data_length,
                          time.monotonic() - start, st.downloaded, st.webseed_bytes,
                          "p2p" if not meta.url_list else "hybrid")


async def _from_hub(session: Session, url: str, dest: Path, mode: Mode, token: str | None,
                    on_progress: Callable[[Progress], None] | None,
                    start: float) -> DownloadResult | Metainfo:
    from swarmhub import client

    done: list[DownloadResult] = []

    async def over_http(info: client.HubFile) -> bool:
        def progress(have: int) -> None:
            if on_progress is not None:
                on_progress(Progress(have, info.size, 0.0, 0))

        http = await session.http()
        try:
            fetched = await client.http_download(
                http, info, dest, token=token, progress=progress,
                rate_limit=session.settings.download_rate_limit)
        except client.HubBusy as busy:
            log.warning("%s: continuing from the swarm", busy)
            return False
        done.append(DownloadResult(dest / info.name, info.name, info.size,
                                   time.monotonic() - start, fetched, fetched, "cs"))
        return True

    meta = await hub_meta(session, url, mode, token, over_http)
    return meta if meta is not None else done[0]


async def hub_meta(session: Session, url: str, mode: str, token: str | None,
                   over_http: Callable[[HubFile], Awaitable[bool]]) -> Metainfo | None:
    """A hub file URL's torrent (p2p: without its web seed), or None once ``over_http``
    fetched the file (cs mode). The one path of ``swarmhub get`` and :func:`fetch`.

    A swarm download sends the hub its peer id with the file info request: the hub
    counts it as about to join until it announces, and answers who is in the swarm or
    about to be; with nobody, the web seed starts without waiting for our announce's
    answer (:meth:`Session.expect_swarm`), and a crowd starting at once does not all
    take that shortcut to HTTP. It takes the hub's short torrent (no piece layers: a
    third of the bytes, and a crowd starting at once waits for them on the hub's uplink)
    and checks pieces by SHA-1; see :meth:`swarmhub.engine.pieces.Pieces.hashes_for`.

    ``over_http(info)`` downloads the file over HTTP, showing it its own way (the CLI's
    view, a script's callback); False when the hub was busy (503): the download then
    carries on from the swarm (hybrid) instead of failing.
    """
    from swarmhub import client
    from swarmhub.metainfo import load_torrent

    http = await session.http()
    base, file_id = client.parse_hub_url(url)
    if mode != "cs":
        fetch = asyncio.ensure_future(client.hub_file_torrent(
            http, base, file_id, token, session.peer_id, piece_layers=False))
        try:
            # the tracker client and the web seed, needed right after the answer: imported
            # while the hub answers, once the requests are out, not on the way to the
            # first range
            await _import_while(fetch, ("swarmhub.discovery.tracker", *(
                ("swarmhub.engine.webseed",) if mode == "hybrid" else ())))
            info, torrent = await fetch
        except BaseException:
            fetch.cancel()
            raise
    else:
        info = await client.hub_file(http, base, file_id, token)
        if await over_http(info):
            return None
        torrent = await client.hub_torrent(http, info.torrent_url, token)
    meta = load_torrent(torrent, require_piece_layers=False)
    if info.swarm is not None:  # alone: the web seed need not wait for our announce
        session.expect_swarm(meta.info_hash, *info.swarm)
    if mode == "p2p":
        meta = dataclasses.replace(meta, url_list=())
    return meta


#: Loop turns :func:`_import_while` lets its request take first: connect (loopback: one
#: turn for the connect, one for the send) and the request written, on either connection.
_REQUEST_TURNS = 4


async def _import_while(fut: asyncio.Future[Any], names: Sequence[str]) -> None:
    """Import ``names`` (on the loop) while ``fut`` waits for a server's answer, after
    letting it send its request (a few loop turns); a failure is left to the real import.

    Why: a hybrid get imported the tracker client and the web seed (~4 ms of CPU each,
    more at load) after the hub's file info came, between adding the torrent and asking
    for its first range; while the hub answers, the process only waits. At worst (the
    answer here first) the imports come where they came before."""
    import importlib

    for _ in range(_REQUEST_TURNS):
        if fut.done():
            break
        await asyncio.sleep(0)
    for name in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


async def _magnet_metadata(session: Session, magnet: Magnet, peers: list[tuple[str, int]],
                           trackers: list[str]) -> Metainfo:
    """Peers for a magnet (given, x.pe, one tracker announce), then its metadata."""
    from swarmhub.discovery.tracker import AnnounceRequest, TrackerTiers
    from swarmhub.engine.metadata import fetch_metadata

    candidates = list(peers)
    urls = trackers or list(magnet.trackers)
    if urls:
        req = AnnounceRequest(info_hash=magnet.info_hash, peer_id=session.peer_id,
                              port=session.listen_port, uploaded=0, downloaded=0, left=1,
                              event="started")
        try:
            resp = await TrackerTiers([[u] for u in urls], rng=session.rng,
                                      user_agent=session.settings.user_agent).announce(req)
            candidates += [p for p in resp.peers if p not in candidates]
        except TrackerError as exc:
            log.warning("tracker: %s", exc)
    return await fetch_metadata(magnet, candidates, session.peer_id, timeout=None,
                                peer_timeout=session.settings.request_timeout)
