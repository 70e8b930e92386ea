"""The daemon's torrents: adding, pausing, removing, limits, the download queue, restarts.

One :class:`Manager` owns the engine :class:`~swarmhub.engine.session.Session`. A torrent
runs in the session only while it should (not paused, its turn in the queue); pausing
takes it out (peers closed, resume data saved) and resuming adds it again, which costs a
check of its resume data, not a rehash. Every change the user makes is written to the
state folder first (:mod:`.state`), so a ``kill -9`` at any moment restarts into the same
list. A scheduler task, woken by changes and every half second, starts what the queue
allows (:func:`.queue.to_start`), notices completions and errors, and emits events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmhub.aio import settle
from swarmhub.daemon.events import EventBus
from swarmhub.daemon.queue import Slot, to_start
from swarmhub.daemon.state import StateDir, TorrentRecord
from swarmhub.daemon.watch import watch_folder
from swarmhub.errors import AuthError, MetainfoError, SwarmhubError
from swarmhub.settings import Settings

if TYPE_CHECKING:
    from swarmhub.engine.session import Session
    from swarmhub.engine.torrent import Torrent, TorrentStatus
    from swarmhub.metainfo import Magnet, Metainfo

__all__ = [
    "DEFAULT_PRIORITY",
    "BadRequest",
    "Conflict",
    "Manager",
    "NotFound",
    "Upstream",
]

log = logging.getLogger(__name__)

#: File priorities run 0 (skip), 1 (normal) .. 7 (sooner): the engine's scale
#: (``Torrent.set_file_priorities``, ``swarmhub get --files``).
DEFAULT_PRIORITY = 1
MAX_PRIORITY = 7


class NotFound(SwarmhubError):
    """404: no such torrent."""


class Conflict(SwarmhubError):
    """409: the request clashes with the torrent's state (already added, no metadata yet)."""


class BadRequest(SwarmhubError):
    """400: the request itself is wrong."""


class Upstream(SwarmhubError):
    """502: a hub the daemon asked for a torrent failed or refused."""


@dataclass(eq=False)
class Entry:
    """One torrent in the daemon: its record, and what runs now."""

    record: TorrentRecord
    meta: Metainfo | None = None
    torrent: Torrent | None = None
    starting: bool = False
    #: Set while no start is under way (pause and remove wait on it).
    idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    error: str | None = None
    #: The last status while it ran (shown while paused or queued).
    last: TorrentStatus | None = None
    fetch: asyncio.Task[None] | None = field(default=None, repr=False)


class Manager:
    """See the module docstring. Use as ``async with Manager(...) as m``."""

    def __init__(self, state: StateDir, settings: Settings, *, download_dir: Path,
                 peer_listen: tuple[str, int] = ("0.0.0.0", 6881), max_active: int = 3,
                 watch: Path | None = None, stats_interval: float = 2.0) -> None:
        self.state = state
        self.settings = settings
        self.download_dir = download_dir
        self.peer_listen = peer_listen
        self.max_active = max_active
        self.watch = watch
        self.stats_interval = stats_interval
        self.events = EventBus()
        self.entries: dict[str, Entry] = {}
        self._session: Session | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    @property
    def session(self) -> Session:
        assert self._session is not None, "use the Manager as 'async with'"
        return self._session

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Manager:
        from swarmhub.engine.session import Session

        self.state.prepare()
        saved = self.state.load_settings()
        limits = {k: int(saved[k]) for k in ("download_rate_limit", "upload_rate_limit")
                  if isinstance(saved.get(k), int)}
        self.settings = self.settings.replace(**limits)
        async with contextlib.AsyncExitStack() as stack:
            self._session = await stack.enter_async_context(
                Session(self.settings, state_dir=self.state.resume))
            try:
                await self.session.listen(*self.peer_listen)
            except OSError as exc:
                host, port = self.peer_listen
                raise SwarmhubError(
                    f"cannot listen for peers on {host}:{port} ({exc.strerror}); choose "
                    "another with --peer-listen HOST:PORT (port 0 picks a free one)") from None
            for record in self.state.records():
                self._restore(record)
            self._tasks.append(asyncio.create_task(self._guard(self._scheduler)))
            if self.watch is not None:
                self.watch.mkdir(parents=True, exist_ok=True)
                self._tasks.append(asyncio.create_task(
                    self._guard(functools.partial(watch_folder, self, self.watch))))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await settle(task)
        for entry in self.entries.values():
            if entry.fetch is not None:
                entry.fetch.cancel()
        await self._stack.aclose()  # the session saves every torrent's resume data

    async def _guard(self, job: Any) -> None:
        """Run a loop; should it ever fail, the log says so (it is not silently gone)."""
        try:
            await job()
        except Exception:
            log.exception("daemon job %s failed", getattr(job, "__name__", job))

    def _restore(self, record: TorrentRecord) -> None:
        from swarmhub.metainfo import load_torrent, parse_magnet

        entry = self._entry(record)
        data = self.state.load_torrent(record.id)
        try:
            if data is not None:
                entry.meta = load_torrent(data, require_piece_layers=False)
            elif record.kind == "magnet":
                self.entries[record.id] = entry
                self._start_fetch(entry, parse_magnet(record.source))
                return
            else:
                entry.error = "its .torrent is missing from the state folder; remove and add it"
        except (MetainfoError, SwarmhubError) as exc:
            entry.error = f"cannot restore: {exc}"
        self.entries[record.id] = entry

    # -- adding ----------------------------------------------------------------------------
    async def add(self, *, torrent: bytes | None = None, source: str | None = None,
                  save_path: str | None = None, paused: bool = False,
                  peers: list[str] | None = None, trackers: list[str] | None = None,
                  hub_token: str | None = None, filename: str = "") -> Entry:
        """Add from .torrent bytes, a magnet link or a hub file URL (its torrent is fetched
        now, so a wrong URL fails this call rather than later)."""
        from swarmhub.metainfo import load_torrent, parse_magnet

        peers = [_check_peer(p) for p in peers or []]
        trackers = list(trackers or [])
        meta: Metainfo | None = None
        magnet: Magnet | None = None
        data: bytes | None = None
        try:
            if torrent is not None:
                kind, data = "torrent", torrent
                meta = load_torrent(data)
                text = filename or f"{meta.name}.torrent"
            elif source is not None and source.startswith("magnet:"):
                kind, text = "magnet", source
                magnet = parse_magnet(source)
                peers += [f"{h}:{p}" for h, p in magnet.peers if f"{h}:{p}" not in peers]
            elif source is not None and source.startswith(("http://", "https://")):
                kind, text = "hub", source
                data = await self._hub_torrent(source, hub_token)
                meta = load_torrent(data)
            else:
                raise BadRequest("give a .torrent file, or a source: a magnet link or a hub "
                                 "file URL (http://HUB/f/<id>)")
        except MetainfoError as exc:
            raise BadRequest(str(exc)) from None
        if meta is not None:
            tid, name = meta.info_hash.hex(), meta.name
        else:
            assert magnet is not None
            tid, name = magnet.info_hash.hex(), magnet.name or ""
        async with self._lock:
            if tid in self.entries:
                raise Conflict(f"torrent {tid} is already in the daemon")
            record = TorrentRecord(
                id=tid, kind=kind, source=text, save_path=str(self._save_path(save_path)),
                name=name,
                paused=paused, order=1 + max((e.record.order for e in self.entries.values()),
                                             default=0),
                peers=peers, trackers=trackers, hub_token=hub_token, added=time.time())
            if data is not None:
                self.state.save_torrent(tid, data)
            self.state.save(record)
            entry = self._entry(record, meta)
            self.entries[tid] = entry
            if magnet is not None:
                self._start_fetch(entry, magnet)
        log.info("added %s (%s)", record.name or tid, kind)
        self.events.emit("added", **self.view(entry))
        self._wake.set()
        return entry

    @staticmethod
    def _entry(record: TorrentRecord, meta: Metainfo | None = None) -> Entry:
        entry = Entry(record, meta)
        entry.idle.set()
        return entry

    def _save_path(self, text: str | None) -> Path:
        if not text:
            return self.download_dir.resolve()
        path = Path(text).expanduser()
        return (path if path.is_absolute() else self.download_dir / path).resolve()

    async def _hub_torrent(self, url: str, token: str | None) -> bytes:
        from swarmhub.client import hub_file_torrent, parse_hub_url
        from swarmhub.discovery.httpget import HttpError

        try:
            base, file_id = parse_hub_url(url)
        except SwarmhubError as exc:
            raise BadRequest(str(exc)) from None
        try:
            http = await self.session.http()
            return (await hub_file_torrent(http, base, file_id, token))[1]
        except (AuthError, HttpError, OSError, TimeoutError) as exc:
            raise Upstream(f"the hub at {base}: {exc or type(exc).__name__}") from None
        except SwarmhubError as exc:
            raise Upstream(str(exc)) from None

    def _start_fetch(self, entry: Entry, magnet: Magnet) -> None:
        entry.fetch = asyncio.create_task(self._fetch_metadata(entry, magnet))

    async def _fetch_metadata(self, entry: Entry, magnet: Magnet) -> None:
        """A magnet's metadata from its peers; saved as a .torrent so a restart skips this."""
        from swarmhub.downloads import _magnet_metadata
        from swarmhub.metainfo import torrent_bytes

        rec = entry.record
        peers = [_check_peer(p) for p in rec.peers]
        addrs = [(h, int(p)) for h, _, p in (x.rpartition(":") for x in peers)]
        try:
            meta = await _magnet_metadata(self.session, magnet, addrs, rec.trackers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            entry.error = f"no metadata: {exc}"
            self.events.emit("error", id=rec.id, name=rec.name, error=entry.error)
            return
        self.state.save_torrent(rec.id, torrent_bytes(meta))
        entry.meta = meta
        rec.name = meta.name
        self.state.save(rec)
        self._wake.set()

    # -- changing torrents -------------------------------------------------------------------
    def get(self, tid: str) -> Entry:
        entry = self.entries.get(tid.lower())
        if entry is None:
            raise NotFound(f"no torrent {tid} in the daemon")
        return entry

    async def pause(self, tid: str) -> Entry:
        async with self._lock:
            entry = self.get(tid)
            if not entry.record.paused:
                entry.record.paused = True
                await self._stop(entry)
                self.state.save(entry.record)
                self.events.emit("paused", id=entry.record.id, name=entry.record.name)
        self._wake.set()
        return entry

    async def resume(self, tid: str) -> Entry:
        async with self._lock:
            entry = self.get(tid)
            if entry.record.paused or entry.error:
                entry.record.paused = False
                if entry.torrent is None:
                    entry.error = None
                if entry.meta is None and (entry.fetch is None or entry.fetch.done()):
                    from swarmhub.metainfo import parse_magnet

                    self._start_fetch(entry, parse_magnet(entry.record.source))  # retry
                self.state.save(entry.record)
                self.events.emit("resumed", id=entry.record.id, name=entry.record.name)
        self._wake.set()
        return entry

    async def remove(self, tid: str, delete_data: bool) -> None:
        async with self._lock:
            entry = self.get(tid)
            del self.entries[entry.record.id]
            if entry.fetch is not None:
                entry.fetch.cancel()
            await self._stop(entry)
            self.state.forget(entry.record.id)
            resume = self.state.resume
            for p in resume.glob(f"{entry.record.id}*.resume"):
                with contextlib.suppress(OSError):
                    p.unlink()
            if delete_data and entry.meta is not None:
                meta, save = entry.meta, Path(entry.record.save_path)
                await asyncio.get_running_loop().run_in_executor(
                    None, _delete_data, meta, save)
        log.info("removed %s%s", entry.record.name or tid, " and its data" if delete_data else "")
        self.events.emit("removed", id=entry.record.id, name=entry.record.name,
                         deleted_data=delete_data)
        self._wake.set()

    async def set_limits(self, tid: str, download: int, upload: int) -> Entry:
        entry = self.get(tid)
        entry.record.download_limit, entry.record.upload_limit = download, upload
        self.state.save(entry.record)
        if entry.torrent is not None:
            entry.torrent.set_rate_limits(download, upload)
        return entry

    def set_global_limits(self, download: int, upload: int) -> None:
        self.session.set_rate_limits(download, upload)
        saved = self.state.load_settings()
        saved.update(download_rate_limit=download, upload_rate_limit=upload)
        self.state.save_settings(saved)

    def global_limits(self) -> tuple[int, int]:
        s = self.session.settings
        return s.download_rate_limit, s.upload_rate_limit

    async def set_priorities(self, tid: str, priorities: list[int]) -> Entry:
        """File priorities (0 skip, 1 normal .. 7 sooner), one per data file."""
        entry = self.get(tid)
        if entry.meta is None:
            raise Conflict("the torrent's metadata is not known yet (magnet); try again soon")
        n = len(entry.meta.data_files)
        if len(priorities) != n:
            raise BadRequest(f"give {n} priorities, one per file (got {len(priorities)})")
        if any(not 0 <= p <= MAX_PRIORITY for p in priorities):
            raise BadRequest(f"priorities run from 0 (skip) to {MAX_PRIORITY}")
        entry.record.priorities = None if all(p == DEFAULT_PRIORITY for p in priorities) \
            else list(priorities)
        self.state.save(entry.record)
        if entry.torrent is not None:
            await _apply_priorities(entry.torrent, priorities)
        return entry

    async def _stop(self, entry: Entry) -> None:
        """Take a torrent out of the session (resume data saved); its record stays, with
        the bytes verified so far (shown while it is paused, across restarts too)."""
        await entry.idle.wait()  # a start under way finishes first
        t = entry.torrent
        if t is None:
            return
        entry.last = t.status()
        entry.record.name = entry.record.name or t.meta.name
        entry.record.have_bytes = entry.last.bytes_have
        entry.torrent = None
        await self.session.remove(t.meta.info_hash)

    # -- the scheduler -----------------------------------------------------------------------
    async def _scheduler(self) -> None:
        next_stats = time.monotonic() + self.stats_interval
        while True:
            try:
                await self._tick()
            except Exception:  # one bad tick must not stop the queue for good
                log.exception("daemon scheduler")
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.stats_interval
                self.events.emit("stats", **self.stats())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
            self._wake.clear()

    async def _tick(self) -> None:
        async with self._lock:
            for entry in list(self.entries.values()):
                t = entry.torrent
                if t is None:
                    continue
                if t.error:
                    entry.error = t.error
                    self.events.emit("error", id=entry.record.id, name=entry.record.name,
                                     error=t.error)
                    await self._stop(entry)
                elif t.complete.is_set() and not entry.record.complete:
                    entry.record.complete = True
                    self.state.save(entry.record)
                    log.info("completed %s", entry.record.name)
                    self.events.emit("completed", **self.view(entry))
            slots = [Slot(e.record.id, runnable=e.meta is not None and not e.record.paused
                          and e.error is None, running=e.torrent is not None or e.starting,
                          complete=e.record.complete)
                     for e in sorted(self.entries.values(), key=lambda e: e.record.order)]
            starts = [self.entries[tid] for tid in to_start(slots, self.max_active)]
            for entry in starts:
                entry.starting = True
                entry.idle.clear()
        # Outside the lock: checking a large torrent's data must not hold up the API.
        for entry in starts:
            await self._start(entry)

    async def _start(self, entry: Entry) -> None:
        rec, meta = entry.record, entry.meta
        assert meta is not None
        try:
            addrs = [(h, int(p)) for h, _, p in (x.rpartition(":") for x in rec.peers)]
            t = await self.session.add(meta, Path(rec.save_path), peers=addrs,
                                       trackers=[[u] for u in rec.trackers] or None)
            entry.torrent = t
        except (SwarmhubError, OSError) as exc:
            entry.error = str(exc)
            log.error("%s: cannot start: %s", rec.name, exc)
            self.events.emit("error", id=rec.id, name=rec.name, error=entry.error)
            return
        finally:
            entry.starting = False
            entry.idle.set()
        if rec.download_limit or rec.upload_limit:
            t.set_rate_limits(rec.download_limit, rec.upload_limit)
        if rec.priorities:
            await _apply_priorities(t, rec.priorities)
        self.events.emit("started", id=rec.id, name=rec.name)

    # -- views -----------------------------------------------------------------------------
    def state_of(self, entry: Entry) -> str:
        if entry.error:
            return "error"
        if entry.record.paused:
            return "paused"
        if entry.meta is None:
            return "metadata"
        if entry.starting:
            return "checking"
        if entry.torrent is not None:
            return entry.torrent.state.value
        return "queued"

    def view(self, entry: Entry) -> dict[str, Any]:
        """The API's description of one torrent (the ``Torrent`` schema)."""
        rec, meta = entry.record, entry.meta
        st = entry.torrent.status() if entry.torrent is not None else entry.last
        size = meta.total_length if meta is not None else 0
        have = st.bytes_have if st is not None else size if rec.complete else rec.have_bytes
        running = entry.torrent is not None
        return {
            "id": rec.id, "name": rec.name, "state": self.state_of(entry),
            "progress": round(have / size, 4) if size else 0.0,
            "size": size, "have_bytes": have,
            "download_rate": int(st.download_rate) if st is not None and running else 0,
            "upload_rate": int(st.upload_rate) if st is not None and running else 0,
            "downloaded": st.downloaded if st is not None else 0,
            "uploaded": st.uploaded if st is not None else 0,
            "peers": st.peers if st is not None and running else 0,
            "save_path": rec.save_path, "kind": rec.kind, "source": rec.source,
            "paused": rec.paused, "complete": rec.complete, "queue_position": rec.order,
            "download_limit": rec.download_limit, "upload_limit": rec.upload_limit,
            "priorities": rec.priorities, "error": entry.error, "added": rec.added,
        }

    def views(self) -> list[dict[str, Any]]:
        return [self.view(e) for e in sorted(self.entries.values(), key=lambda e: e.record.order)]

    def files(self, tid: str) -> list[dict[str, Any]]:
        entry = self.get(tid)
        if entry.meta is None:
            raise Conflict("the torrent's metadata is not known yet (magnet); try again soon")
        prios = entry.record.priorities or [DEFAULT_PRIORITY] * len(entry.meta.data_files)
        return [{"index": i, "path": "/".join(f.path), "size": f.length, "priority": p}
                for i, (f, p) in enumerate(zip(entry.meta.data_files, prios, strict=True))]

    def stats(self) -> dict[str, Any]:
        running = [e.torrent.status() for e in self.entries.values() if e.torrent is not None]
        down, up = self.global_limits()
        return {
            "torrents": len(self.entries),
            "running": len(running),
            "queued": sum(1 for e in self.entries.values() if self.state_of(e) == "queued"),
            "download_rate": int(sum(s.download_rate for s in running)),
            "upload_rate": int(sum(s.upload_rate for s in running)),
            "peers": self.session.peer_count,
            "download_limit": down, "upload_limit": up,
            "max_active_downloads": self.max_active,
            "peer_port": self.session.listen_port,
            "items": [{k: v[k] for k in ("id", "state", "progress", "have_bytes",
                                         "download_rate", "upload_rate", "peers")}
                      for v in self.views()],
        }


async def _apply_priorities(torrent: Torrent, priorities: list[int]) -> None:
    """One priority per data file (0 skip, 1 normal .. 7 sooner) into the engine."""
    await torrent.set_file_priorities(list(priorities))


def _check_peer(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"a peer is HOST:PORT, not {text!r}")
    return f"{host.strip('[]')}:{int(port)}"


def _delete_data(meta: Metainfo, save: Path) -> None:
    """Delete the torrent's files under ``save`` and the folders that become empty."""
    root = save / meta.name
    for f in meta.files:
        path = root if meta.single_file else root.joinpath(*f.path)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()
    if not meta.single_file and root.is_dir():
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def decode_torrent_field(text: str) -> bytes:
    """A .torrent sent in JSON as base64."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise BadRequest("'torrent' must be the .torrent file in base64") from None
