"""The hub's aiohttp application: downloads, torrents, tracker, metrics and the embedded seeder.

:func:`make_hub_app` wires the pieces: the JSON API (:mod:`swarmhub.hub.api`), plain
downloads through the HTTP origin (``swarmhub.hub.origin``), per-user .torrent files and
magnets, the tracker at the *root* paths ``/announce`` and ``/scrape`` (libtorrent's
SSRF mitigation refuses a loopback tracker whose path is anything else), ``/metrics``,
and an embedded peer that seeds every catalogued file so the hub is the first seeder of
each swarm. Every error is JSON ``{"error": ...}`` — including the ones aiohttp produces
before any handler runs (oversize or malformed headers), which :class:`HubRunner` turns
into JSON too — except on the tracker, whose clients expect bencoded failure reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.resources
import ipaddress
import json
import logging
import math
import mimetypes
import os
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from swarmhub.bencode import bdecode, bencode
from swarmhub.discovery.tracker import parse_announce_response
from swarmhub.errors import AuthError, StorageError, SwarmhubError, TrackerError
from swarmhub.hub.access import SwarmAccess, normalize_ip
from swarmhub.hub.accesslog import HubAccessLogger
from swarmhub.hub.api import (
    HUB_KEY,
    Hub,
    HubConfig,
    add_api_routes,
    json_error,
    link_into_seed_dir,
    peer_counts,
)
from swarmhub.hub.auth import Role, Unauthorized, authenticate, ensure_admin_token, has_role
from swarmhub.hub.backends import open_blob_store, open_catalog
from swarmhub.hub.blobs import UploadStalled, UploadTooLarge, UploadTruncated
from swarmhub.hub.blobs_s3 import BlobPieceStorage, S3BlobStore
from swarmhub.hub.catalog import (
    CatalogError,
    ConflictError,
    FileRecord,
    NotFoundError,
)
from swarmhub.hub.connections import GuardedRequestHandler, install_fd_exhaustion_handler
from swarmhub.hub.limits import LIMITS_KEY, AnnounceRate, Limits, LoginThrottle
from swarmhub.hub.metrics import CONTENT_TYPE, MetricFamily, render
from swarmhub.hub.origin import json_errors_middleware
from swarmhub.hub.reconcile import DataDirLock, prepare_data_dir, reconcile
from swarmhub.hub.redact import redact
from swarmhub.hub.swarmstate import open_swarm_state
from swarmhub.hub.tracker import (
    AnnounceParams,
    TrackerState,
    failure_body,
    parse_announce_query,
    parse_scrape_query,
)
from swarmhub.metainfo import Metainfo, load_torrent

__all__ = [
    "HubConfig",
    "HubRunner",
    "Seeder",
    "StartupError",
    "admin_token_for_first_start",
    "make_hub_app",
    "start_hub",
]

log = logging.getLogger(__name__)

_PLAIN = "text/plain"
_ID = "{id:[A-Za-z0-9_-]{1,64}}"


class StartupError(SwarmhubError):
    """The hub cannot start (a port is taken...); no token was made, the message says why."""


def _origin() -> ModuleType | None:
    """``swarmhub.hub.origin`` (range-serving downloads) when it is installed."""
    try:
        return importlib.import_module("swarmhub.hub.origin")
    except ImportError:
        return None


# ------------------------------------------------------------------------------ seeder


#: Seconds between the seeder's checks of the catalog for files other processes changed.
_SEEDER_SYNC = 2.0
#: A file younger than this (seconds) is still being published by the process that took
#: the upload: that process starts seeding it.
_SEEDER_SYNC_AGE = 10.0


class Seeder:
    """The hub's own peer: a swarmhub Session seeding every catalogued file.

    It runs in a task of its own that owns the Session (its task group lives and dies in
    that task); the API calls :meth:`add`/:meth:`remove` from request handlers.

    It holds no passkey: it enters its swarms in the tracker in-process (and dials the
    leechers the tracker lists, which peers that only accept incoming connections need),
    and it admits a private torrent's peer only under the hub's access rule
    (:meth:`admit`, :mod:`swarmhub.hub.access`).
    """

    def __init__(self, hub: Hub, listen: tuple[str, int]) -> None:
        self.hub = hub
        self.listen = listen
        self.session: Any = None
        self.port = 0
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._failed: BaseException | None = None
        #: The address other peers dial to reach this seeder (what the tracker lists).
        self.announce_ip = "127.0.0.1"
        #: Files being seeded, by id: what :meth:`_sync` compares with the catalog.
        self._seeding: dict[str, FileRecord] = {}
        #: Files that could not be seeded (a lost blob): logged once, not retried.
        self._unseedable: set[str] = set()
        #: The seeder's DHT node (``dht_bootstrap``), once joined.
        self.dht: Any = None

    async def run(self) -> None:
        from swarmhub.engine.session import Session
        from swarmhub.settings import Settings

        # The hub's upload cap holds for its peer too, not only for HTTP: under load the
        # swarm, not the hub, must carry the traffic.
        # The shared offer budget (the default) here too: with a window per peer the hub
        # split its upload N ways and nothing finished for seconds (``lab simulate``
        # hybrid N=64: 1.89x the bound, 1.9 F from the hub; shared: 1.41x, 1.14 F).
        settings = Settings(upload_rate_limit=int(self.hub.config.upload_rate or 0))
        try:
            async with Session(settings, state_dir=self.hub.config.data_dir / "seed-state",
                               peer_filter=self.admit) as s, contextlib.AsyncExitStack() as st:
                try:
                    self.port = await s.listen(*self.listen)
                except OSError as exc:  # the hub refuses to start: no traceback for that
                    self._failed = exc
                    return
                self.announce_ip = await self._announce_ip()
                await self._join_dht(s, st)
                self.session = s
                self.ready.set()
                records = await self.hub.catalog.run(self.hub.catalog.all_files)
                for record in records:
                    await self._add_existing(record)
                period = self.hub.tracker.interval  # its tracker entry lives 2 intervals
                clock = asyncio.get_running_loop()
                register_at = clock.time() + period
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), _SEEDER_SYNC)
                    await self._sync()
                    if clock.time() >= register_at:
                        register_at = clock.time() + period
                        for torrent in list(s.torrents.values()):
                            await self._register(torrent)
                self.session = None
        except Exception as exc:
            self._failed = exc
            log.exception("the embedded seeder stopped")
        finally:
            self.ready.set()

    async def _join_dht(self, session: Any, stack: contextlib.AsyncExitStack) -> None:
        """With ``dht_bootstrap``: a DHT node on the seeder's port (UDP) announcing every
        public file, so late peers find the swarm from a magnet link even with the hub
        gone. A DHT that cannot start is logged; the hub runs on without it."""
        boot = self.hub.config.dht_bootstrap
        if boot is None:
            return
        from swarmhub.discovery.dht.source import run_dht

        try:
            self.dht = await stack.enter_async_context(run_dht(
                session, host=self.listen[0], port=self.port, bootstrap=boot,
                state_file=self.hub.config.data_dir / "seed-state" / "dht.json"))
        except Exception as exc:
            log.warning("the embedded seeder's DHT did not start: %s", exc)
            return
        log.info("embedded seeder on the DHT: UDP %s:%d", self.listen[0], self.dht.port)

    async def _sync(self) -> None:
        """Seed what other hub processes published, stop what they deleted.

        With a shared catalog the API call that publishes (or deletes) a file may reach
        another process; this one learns of it from its catalog index. A file younger than
        :data:`_SEEDER_SYNC_AGE` is left to the process that is still publishing it.
        """
        ids = self.hub.catalog.file_ids()
        for file_id in [i for i in self._seeding if i not in ids]:
            await self.remove(self._seeding[file_id])
        for file_id in ids - self._seeding.keys() - self._unseedable:
            record = await self.hub.catalog.run(self.hub.catalog.get_file, file_id)
            if record is not None and time.time() - record.created >= _SEEDER_SYNC_AGE:
                await self._add_existing(record)

    async def _add_existing(self, record: FileRecord) -> None:
        seed_path = self.hub.seed_dir(record.id) / record.name
        blob = self.hub.blobs.path_for(record.sha256)
        try:
            # With S3 the seeder reads pieces through the store (BlobPieceStorage): no
            # local copy of a blob this hub did not take the upload of.
            if not isinstance(self.hub.blobs, S3BlobStore) and not seed_path.exists():
                await asyncio.to_thread(link_into_seed_dir, blob, seed_path)
            metas = []
            for version in ("hybrid", "v1"):
                data = await self.hub.catalog.run(self.hub.catalog.get_torrent, record.id, version)
                if data is not None:
                    metas.append(load_torrent(data))
            await self.add(record, metas)
        except Exception as exc:
            self._unseedable.add(record.id)
            log.warning("cannot seed %s (%s): %s", record.id, record.name, exc)

    async def _announce_ip(self) -> str:
        """The listen address, or for a wildcard one the address of the public URL's host."""
        host = self.listen[0].strip("[]")
        if host not in ("", "0.0.0.0", "::"):
            return normalize_ip(host)
        name = urllib.parse.urlsplit(self.hub.config.public_url).hostname or "127.0.0.1"
        try:
            return normalize_ip(str(ipaddress.ip_address(name)))
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve %s for the seeder's tracker entry (%s); using "
                        "127.0.0.1", name, exc)
            return "127.0.0.1"
        return normalize_ip(str(infos[0][4][0]))

    async def _register(self, torrent: Any) -> None:
        """Enter (or refresh) the seeder in its swarms in-process, and dial their leechers."""
        meta = torrent.meta
        now = asyncio.get_running_loop().time()
        session = self.session
        if session is None:
            return
        for ih in {h[:20] for h in (meta.info_hash_v1, meta.info_hash_v2) if h}:
            params = AnnounceParams(info_hash=ih, peer_id=session.peer_id,
                                    ip=self.announce_ip, port=self.port, left=0, numwant=200)
            try:
                answer = parse_announce_response(await self.hub.tracker.announce(params, now))
            except TrackerError:  # the file was deleted meanwhile
                continue
            torrent.add_peers(answer.peers)

    def admit(
        self, info_hash: bytes, addr: tuple[str, int], peer_id: bytes, outgoing: bool = False
    ) -> str | None:
        """The seeder's peer filter: everyone for public files, proven readers for private."""
        entry = self.hub.catalog.lookup_info_hash(info_hash[:20])
        if entry is None:
            return "not a torrent of this hub"
        file_id, private = entry
        if not private:
            return None
        now = asyncio.get_running_loop().time()
        if self.hub.access.allows(file_id, addr, peer_id, now, outgoing=outgoing):
            return None
        return "private torrent: announce to the hub's tracker with a live passkey first"

    def dial(self, info_hash: bytes, addr: tuple[str, int]) -> None:
        """Connect to a peer that just proved a passkey (peers with per-connection ids, like
        libtorrent, are admitted on the connections the seeder makes to them)."""
        session = self.session
        torrent = None if session is None else session.torrent_for_hash(info_hash)
        if torrent is not None:
            torrent.add_peers([addr])

    def enforce(self) -> int:
        """Close every connection :meth:`admit` would now refuse (a revoked passkey)."""
        session = self.session
        if session is None:
            return 0
        closed = 0
        for torrent in list(session.torrents.values()):
            for peer in list(torrent.peers):
                # Either proof keeps a connection (the engine does not say who dialed whom);
                # a revoked token has neither left.
                reason = self.admit(torrent.meta.info_hash, peer.addr, peer.remote_id, True)
                if reason is not None:
                    # An "error" reason makes the engine abort: what is queued for this
                    # peer is dropped rather than flushed.
                    peer.close(f"access error: {reason}")
                    closed += 1
        return closed

    async def add(self, record: FileRecord, metas: list[Metainfo]) -> None:
        """Seed the file's hybrid and v1 torrents (two swarms over the same bytes)."""
        if self.session is None:
            return
        if record.id in self._seeding:
            return
        self._seeding[record.id] = record
        store = self.hub.blobs
        for meta in metas:
            storage = (BlobPieceStorage(meta, store, record.sha256)
                       if isinstance(store, S3BlobStore) else None)
            torrent = await self.session.add(
                meta, self.hub.seed_dir(record.id), seed_mode=True, trackers=[],
                storage=storage,
            )
            await self._register(torrent)

    async def remove(self, record: FileRecord) -> None:
        """Stop seeding a deleted file and forget its swarms, so a re-publish seeds again."""
        self._seeding.pop(record.id, None)
        if self.session is None:
            return
        for h in record.swarm_hashes:
            await self.session.remove(h)

    def uploaded(self) -> int:
        session = self.session
        if session is None:
            return 0
        return sum(int(t.uploaded) for t in list(session.torrents.values()))

    def upload_stats(self) -> dict[bytes, tuple[int, float]]:
        """Per seeded swarm: bytes uploaded and the current upload rate (bytes/s)."""
        session = self.session
        if session is None:
            return {}
        now = time.monotonic()  # the clock the engine's rate meters run on
        return {ih: (int(t.uploaded), float(t.up.rate(now))) for ih, t in session.torrents.items()}

    def peers(self) -> int:
        session = self.session
        return 0 if session is None else int(session.peer_count)

    async def close(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------ errors


def _error_response(exc: BaseException) -> web.Response | None:
    """The JSON answer for an exception a handler raised, None if it is not ours."""
    if isinstance(exc, Unauthorized):
        return json_error(401, str(exc), **{"WWW-Authenticate": 'Bearer realm="swarmhub"'})
    if isinstance(exc, AuthError):
        retry = getattr(exc, "retry_after", None)
        extra = {} if retry is None else {"Retry-After": str(retry)}
        return json_error(int(getattr(exc, "status", 403)), str(exc), **extra)
    if isinstance(exc, NotFoundError):
        return json_error(404, str(exc))
    if isinstance(exc, ConflictError):
        return json_error(409, str(exc))
    if isinstance(exc, CatalogError):
        return json_error(400, str(exc))
    if isinstance(exc, UploadTooLarge):
        return json_error(413, str(exc))
    if isinstance(exc, UploadStalled):
        stalled = json_error(408, str(exc))
        stalled.force_close()  # the rest of the body is not worth waiting for
        return stalled
    if isinstance(exc, UploadTruncated):
        return json_error(400, str(exc))
    if isinstance(exc, StorageError):
        return json_error(507, str(exc))
    return None


class _JsonErrorHandler(GuardedRequestHandler):
    """aiohttp's protocol handler (with a request-head deadline), answering unparsable
    requests with JSON errors."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and isinstance(exc, LineTooLong):
            status, message = 431, f"request header fields too large: {exc}"
        elif status == 500:
            self.log_exception("error handling request", exc_info=exc)
            message = "internal error; the hub's log has the details"
        else:
            self.logger.debug("bad request from %s: %s", request.remote, redact(str(exc)))
        body = json.dumps({"error": message or "bad request"}).encode()
        resp = web.Response(status=status, body=body, content_type="application/json")
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class HubRunner(web.AppRunner):
    """An AppRunner whose protocol errors (bad or oversize headers) are JSON too."""

    def __init__(self, app: web.Application, config: HubConfig, **kwargs: Any) -> None:
        kwargs.setdefault("access_log_class", HubAccessLogger)
        kwargs.setdefault("keepalive_timeout", config.keepalive_timeout)
        kwargs.setdefault("header_timeout", config.header_timeout)
        kwargs.setdefault("max_line_size", config.max_header_size)
        kwargs.setdefault("max_field_size", config.max_header_size)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server


# ------------------------------------------------------------------------------ downloads


async def _file_or_404(hub: Hub, file_id: str, name: str | None) -> FileRecord:
    record = await hub.catalog.run(hub.catalog.get_file, file_id)
    if record is None or (name is not None and name != record.name):
        raise NotFoundError(f"no file {file_id}/{name or ''} on this hub")
    return record


class _PerFileLimiter:
    """The origin's limiter as one download sees it: bytes sent count for the file too.

    The origin adds each chunk it sends to ``limiter.bytes_served``; routing that through
    this property gives the per-file figure the admin page shows, with no change to the
    origin and no second hook on its hot path. Everything else is the shared limiter.
    """

    __slots__ = ("_counts", "_file_id", "_inner")

    def __init__(self, inner: Any, counts: Counter[str], file_id: str) -> None:
        self._inner = inner
        self._counts = counts
        self._file_id = file_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def bytes_served(self) -> int:
        return int(self._inner.bytes_served)

    @bytes_served.setter
    def bytes_served(self, value: int) -> None:
        self._counts[self._file_id] += value - self._inner.bytes_served
        self._inner.bytes_served = value


async def _serve(request: web.Request, hub: Hub, record: FileRecord) -> web.StreamResponse:
    origin = _origin()
    if origin is None:
        raise web.HTTPNotImplemented(reason="this hub was built without its HTTP origin")
    content_type = mimetypes.guess_type(record.name)[0] or "application/octet-stream"
    path = hub.blobs.path_for(record.sha256)
    limiter = (None if hub.limiter is None
               else _PerFileLimiter(hub.limiter, hub.http_bytes, record.id))
    etag = importlib.import_module("swarmhub.hub.ranges").content_etag(record.sha256)
    torrent_url = f"{hub.config.base_url}/t/{record.id}.torrent"
    if isinstance(hub.blobs, S3BlobStore) and not path.is_file():
        # Not cached here: S3 serves it, through us or by a presigned redirect.
        if hub.blobs.redirect and request.method in ("GET", "HEAD"):
            url = await hub.blobs.presigned_url(record.sha256, filename=record.name)
            raise web.HTTPTemporaryRedirect(url, headers={"Cache-Control": "no-store"})
        sha = record.sha256
        blobs = hub.blobs
        streamed: web.StreamResponse = await origin.serve_stream(
            request, lambda start, end: blobs.read_span(sha, start, end),
            size=record.size, mtime=record.created, etag=etag, content_type=content_type,
            filename=record.name, limiter=limiter, torrent_url=torrent_url,
            label=f"blob {sha} in S3")
        return streamed
    response: web.StreamResponse = await origin.serve_file(
        request,
        path,
        etag=etag,
        content_type=content_type,
        filename=record.name,
        limiter=limiter,
        torrent_url=torrent_url,
    )
    return response


async def _check_read(request: web.Request, hub: Hub, record: FileRecord) -> None:
    """Private files need a reader token (header or ?token=); the one rule for HTTP."""
    if record.private:
        token = await authenticate(request, hub.catalog, allow_query=True)
        if not has_role(token, Role.READER):
            raise Unauthorized("this file is private: pass a token (Bearer header or ?token=)")


async def download(request: web.Request) -> web.StreamResponse:
    """``GET|HEAD /f/{id}/{name}``: private files need a reader token (header or ?token=)."""
    hub = request.app[HUB_KEY]
    record = await _file_or_404(hub, request.match_info["id"], request.match_info["name"])
    await _check_read(request, hub, record)
    return await _serve(request, hub, record)


async def download_with_passkey(request: web.Request) -> web.StreamResponse:
    """``/k/{passkey}/{id}/{name}``: the web seed URL inside a user's private torrent."""
    hub = request.app[HUB_KEY]
    # The passkey first: without a live one, nothing (not even whether the file exists).
    if not hub.catalog.passkey_is_live(request.match_info["passkey"]):
        raise web.HTTPForbidden(reason="unknown or revoked passkey")
    record = await _file_or_404(hub, request.match_info["id"], request.match_info["name"])
    return await _serve(request, hub, record)


async def download_short(request: web.Request) -> web.StreamResponse:
    """``/f/{id}``: redirect to the canonical URL that carries the file name.

    Access is checked first: the Location header names the file.
    """
    hub = request.app[HUB_KEY]
    record = await _file_or_404(hub, request.match_info["id"], None)
    await _check_read(request, hub, record)
    target = hub.file_url(record)
    if request.query_string:
        target += "?" + request.query_string
    raise web.HTTPPermanentRedirect(target)


async def _torrent_passkey(request: web.Request, hub: Hub, record: FileRecord) -> str | None:
    if not record.private:
        return None
    token = await authenticate(request, hub.catalog, allow_query=True)
    if token is None:
        raise Unauthorized("this torrent is private: pass a token (Bearer header or ?token=)")
    return token.passkey


async def get_torrent(request: web.Request) -> web.Response:
    """``/t/{id}.torrent`` (hybrid) and ``/t/{id}.v1.torrent``; private: per-user passkey."""
    hub = request.app[HUB_KEY]
    record = await _file_or_404(hub, request.match_info["id"], None)
    version = "v1" if request.path.endswith(".v1.torrent") else "hybrid"
    passkey = await _torrent_passkey(request, hub, record)
    data, meta = await hub.torrent_for(record, version, passkey)
    if request.query.get("piece_layers") == "0" and meta.piece_layers:
        # Asked by our own client only (swarmhub.client.hub_file_torrent): the same info
        # dict, so the same swarm, without the piece layers (32 bytes a piece: 60% of a
        # 32 MiB file's torrent, sent to every client at once as a swarm starts). It checks
        # pieces by SHA-1 and derives a layer from the data when a peer asks for it.
        data = hub.short_torrent(record, version, data, meta)
    suffix = ".v1.torrent" if version == "v1" else ".torrent"
    disposition = "attachment; filename*=UTF-8''" + urllib.parse.quote(record.name + suffix)
    return web.Response(
        body=data,
        content_type="application/x-bittorrent",
        headers={"Content-Disposition": disposition, "Cache-Control": "private, no-store"},
    )


async def get_magnet(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    record = await _file_or_404(hub, request.match_info["id"], None)
    passkey = await _torrent_passkey(request, hub, record)
    _, meta = await hub.torrent_for(record, "hybrid", passkey)
    return web.Response(text=hub.magnet_for(meta) + "\n", content_type=_PLAIN)


# ------------------------------------------------------------------------------ tracker


def _passkey(raw_query: str) -> str | None:
    for key, value in urllib.parse.parse_qsl(raw_query, errors="replace"):
        if key == "passkey":
            return value
    return None


def _passkey_ok(hub: Hub, passkey: str | None) -> bool:
    return passkey is not None and hub.catalog.passkey_is_live(passkey)


def _bencoded(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=_PLAIN)


def _from_our_seeder(request: web.Request, hub: Hub, params: AnnounceParams) -> bool:
    """Whether the embedded seeder sent this announce (it is exempt from the rate limit:
    it announces every file at once when the hub starts).

    Its peer id and port are public, so the connection must also come from this very
    host: a socket whose peer address is its own local address.
    """
    seeder = hub.seeder
    if not isinstance(seeder, Seeder) or seeder.session is None:
        return False
    if params.peer_id != seeder.session.peer_id or params.port != seeder.port:
        return False
    transport = request.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    if not local:
        return False
    return bool(request.remote == local[0])


async def announce(request: web.Request) -> web.Response:
    """BEP 3 announce with the catalog as whitelist and passkeys for private torrents."""
    hub = request.app[HUB_KEY]
    raw = request.raw_path.partition("?")[2]
    limits = request.app[LIMITS_KEY]
    source = limits.source(request)
    now = asyncio.get_running_loop().time()
    try:
        params: AnnounceParams | None = parse_announce_query(
            raw, source, trust_ip=limits.trust_proxy
        )
        error = ""
    except TrackerError as exc:
        params, error = None, str(exc)
    if params is None or not _from_our_seeder(request, hub, params):
        wait = limits.announces.take(source, now)
        if wait > 0:
            hub.announce_failures += 1
            return _bencoded(
                failure_body(
                    f"too many announces from {source}: at most "
                    f"{limits.announces.rate:g} per second; retry in {math.ceil(wait)} s"
                )
            )
    if params is None:
        hub.announce_failures += 1
        return _bencoded(failure_body(error))
    entry = hub.catalog.lookup_info_hash(params.info_hash)
    if entry is None:
        hub.announce_failures += 1
        return _bencoded(failure_body("unregistered torrent: this hub does not track it"))
    owner: str | None = None
    if entry[1]:
        passkey = _passkey(raw)
        if not passkey:
            hub.announce_failures += 1
            return _bencoded(
                failure_body(
                    "private torrent: announce with your passkey (download the .torrent again)"
                )
            )
        owner = hub.catalog.passkey_owner(passkey)
        if owner is None:
            hub.announce_failures += 1
            return _bencoded(failure_body("unknown or revoked passkey"))
    hub.announces += 1
    pending = 0 if params.event == "stopped" else hub.pending_gets.others(
        entry[0], params.peer_id, now)
    body = await hub.tracker.announce(params, now)
    hub.pending_gets.announced(entry[0], params.peer_id)
    swarms = hub.catalog.swarms_of(params.info_hash)
    counts = None
    if len(swarms) > 1 and params.event != "stopped":
        counts = (await hub.tracker.file_stats_many([swarms]))[0]
    if counts is not None or pending:
        body = _with_counts(body, counts, pending)
    if owner is not None and params.event != "stopped":
        # The proof the seeder admits private peers by: this peer id, from this address
        # (the connection's, or a trusted proxy's word; never a claimed ip=), holds a live
        # passkey for this file.
        remote = normalize_ip(source)
        hub.access.record(
            file_id=entry[0], ip=remote, port=params.port, peer_id=params.peer_id,
            token_id=owner, entry=(params.info_hash, params.ip, params.port, params.peer_id),
            now=now,
        )
        await hub.tracker.share_access({
            "kind": "record", "file_id": entry[0], "ip": remote, "port": params.port,
            "peer_id": params.peer_id.hex(), "token_id": owner,
            "entry": [params.info_hash.hex(), params.ip, params.port, params.peer_id.hex()],
        })
        if isinstance(hub.seeder, Seeder):
            hub.seeder.dial(params.info_hash, (remote, params.port))
    return _bencoded(body)


def _with_counts(body: bytes, counts: tuple[int, int] | None, pending: int) -> bytes:
    """An announce answer that counts the file: ``counts`` (seeders, leechers) are its
    peers over all of its swarms, each once (a hybrid client announces two hashes; the
    hub's seeder sits in the hybrid and the v1 swarm; None: the answer's own), and the
    leechers include ``pending`` gets that read the file's info and have not announced
    yet (hub.pending): a crowd starting at once counts as one from the first answer on,
    so its first announcer does not take itself for the only leecher and fetch over HTTP
    what the crowd will trade."""
    answer = bdecode(body)
    if not isinstance(answer, dict) or not isinstance(answer.get(b"incomplete"), int):
        return body  # a failure, or no count to change
    seeders, leechers = counts or (answer.get(b"complete", 0), answer[b"incomplete"])
    fresh = {b"complete": seeders, b"incomplete": leechers + pending}
    if all(answer.get(k) == v for k, v in fresh.items()):
        return body
    answer.update(fresh)
    return bencode(answer)


async def scrape(request: web.Request) -> web.Response:
    """BEP 48 scrape; private torrents only for a valid passkey, none means all public."""
    hub = request.app[HUB_KEY]
    raw = request.raw_path.partition("?")[2]
    limits = request.app[LIMITS_KEY]
    source = limits.source(request)
    if limits.announces.take(source, asyncio.get_running_loop().time()) > 0:
        return _bencoded(failure_body(f"too many requests from {source}: slow down"))
    try:
        hashes = parse_scrape_query(raw)
    except TrackerError as exc:
        return _bencoded(failure_body(str(exc)))
    hub.scrapes += 1
    private_ok = _passkey_ok(hub, _passkey(raw))
    if not hashes:
        hashes = hub.catalog.info_hashes(include_private=private_ok)
    shown = []
    for ih in hashes:
        entry = hub.catalog.lookup_info_hash(ih)
        if entry is None or (entry[1] and not private_ok):
            continue
        shown.append(ih)
    files: dict[bytes, dict[bytes, int]] = {}
    for ih, (complete, downloaded, incomplete) in zip(
            shown, await hub.tracker.stats_many(shown), strict=True):
        files[ih] = {b"complete": complete, b"downloaded": downloaded, b"incomplete": incomplete}
    return _bencoded(bencode({b"files": files}))


# ------------------------------------------------------------------------------ metrics


async def metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    stats = await hub.catalog.run(hub.catalog.stats)
    records = await hub.catalog.run(hub.catalog.all_files)
    lim = hub.limiter
    fams = [
        MetricFamily("swarmhub_files", "gauge", "Files in the catalog.").add(stats["files"]),
        MetricFamily("swarmhub_bytes_stored", "gauge", "Bytes of distinct blobs stored.").add(
            stats["blob_bytes"]
        ),
        MetricFamily(
            "swarmhub_http_bytes_served_total", "counter", "Bytes sent by the HTTP origin."
        ).add(getattr(lim, "bytes_served", 0)),
        MetricFamily("swarmhub_http_transfers_active", "gauge", "HTTP downloads in progress.").add(
            getattr(lim, "transfers_active", 0)
        ),
        MetricFamily("swarmhub_http_transfers_total", "counter", "HTTP downloads started.").add(
            getattr(lim, "transfers_total", 0)
        ),
        MetricFamily(
            "swarmhub_http_transfers_rejected_total",
            "counter",
            "HTTP downloads refused with 503 (overload).",
        ).add(getattr(lim, "rejected_total", 0)),
        MetricFamily(
            "swarmhub_tracker_announces_total", "counter", "Announces answered with peers."
        ).add(hub.announces),
        MetricFamily(
            "swarmhub_tracker_announce_failures_total",
            "counter",
            "Announces refused with a failure reason.",
        ).add(hub.announce_failures),
        MetricFamily("swarmhub_tracker_scrapes_total", "counter", "Scrapes answered.").add(
            hub.scrapes
        ),
        MetricFamily(
            "swarmhub_seeder_uploaded_bytes_total",
            "counter",
            "Bytes uploaded to peers by the hub's embedded seeder.",
        ).add(hub.seeder.uploaded() if isinstance(hub.seeder, Seeder) else 0),
        MetricFamily(
            "swarmhub_seeder_peers", "gauge", "Peers connected to the embedded seeder."
        ).add(hub.seeder.peers() if isinstance(hub.seeder, Seeder) else 0),
    ]
    seeders = MetricFamily(
        "swarmhub_torrent_seeders", "gauge", "Seeders per public file (tracker).")
    leechers = MetricFamily(
        "swarmhub_torrent_leechers", "gauge", "Leechers per public file (tracker).")
    private_seeders = private_leechers = 0
    for record, (complete, incomplete) in zip(
            records, await peer_counts(hub.tracker, records), strict=True):
        # Peers of the hybrid and the v1 swarm, each once (a hybrid client, the hub's seeder)
        if record.private:  # /metrics is public: no id, name or hash of a private file
            private_seeders += complete
            private_leechers += incomplete
            continue
        labels = {"file": record.id, "name": record.name}
        seeders.add(complete, labels)
        leechers.add(incomplete, labels)
    fams += [
        seeders,
        leechers,
        MetricFamily("swarmhub_private_seeders", "gauge",
                     "Seeders of all private files together (tracker).").add(private_seeders),
        MetricFamily("swarmhub_private_leechers", "gauge",
                     "Leechers of all private files together (tracker).").add(private_leechers),
    ]
    if hub.udp_tracker is not None:
        fams.append(hub.udp_tracker.metrics())
    return web.Response(body=render(fams).encode(), headers={"Content-Type": CONTENT_TYPE})


# ------------------------------------------------------------------------------ misc routes


def _resource(name: str) -> bytes | None:
    try:
        return importlib.resources.files("swarmhub.hub").joinpath(name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


async def openapi(request: web.Request) -> web.Response:
    data = _resource("openapi.yaml")
    if data is None:
        raise NotFoundError("openapi.yaml is missing from this installation")
    return web.Response(body=data, content_type="application/yaml")


#: The admin page loads only its own script and style and talks only to this hub.
_ADMIN_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def root_redirect(request: web.Request) -> web.Response:
    """``/`` -> ``/admin/``: a browser pointed at the hub lands on its admin page."""
    raise web.HTTPFound("admin/")  # relative, like admin_redirect; 302: / may serve more later


async def admin_redirect(request: web.Request) -> web.Response:
    """``/admin`` -> ``/admin/``: the page's relative URLs (``admin.js``, ``../api``) need it."""
    raise web.HTTPPermanentRedirect("admin/")  # relative: works behind a path prefix


async def admin_page(request: web.Request) -> web.Response:
    data = _resource("static/admin.html")
    if data is None:
        raise NotFoundError("the admin page is not installed on this hub")
    return web.Response(
        body=data, content_type="text/html", charset="utf-8", headers=_ADMIN_HEADERS
    )


async def admin_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    data = _resource(f"static/{name}") if "/" not in name and not name.startswith(".") else None
    if data is None:
        raise NotFoundError(f"no asset {name!r}")
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("javascript") else None
    return web.Response(body=data, content_type=ctype, charset=charset, headers=_ADMIN_HEADERS)


# ------------------------------------------------------------------------------ the app


def admin_token_for_first_start(config: HubConfig) -> str | None:
    """Create the first admin token of a new hub (None when the hub has tokens already)."""
    prepare_data_dir(config.data_dir)
    catalog = open_catalog(config.db, config.data_dir)
    try:
        return ensure_admin_token(catalog)
    finally:
        catalog.close()


def make_hub_app(config: HubConfig) -> web.Application:
    """The whole hub as one aiohttp application (serve it with :class:`HubRunner`)."""
    prepare_data_dir(config.data_dir)
    catalog = open_catalog(config.db, config.data_dir, poll=config.catalog_poll)
    blobs = open_blob_store(config)
    tracker = open_swarm_state(config.swarm_state, TrackerState(
        interval=config.tracker_interval,
        min_interval=config.tracker_min_interval,
        allowed=lambda ih: catalog.lookup_info_hash(ih) is not None,
        max_peers_per_ip=config.tracker_peers_per_ip,
    ))
    origin = _origin()
    limiter = None
    if origin is not None:
        limiter = origin.OriginLimiter(
            max_transfers=config.max_transfers,
            upload_rate=config.upload_rate,
            stall_timeout=config.send_timeout,
        )
    access = SwarmAccess(ttl=config.tracker_interval + config.tracker_min_interval)
    hub = Hub(config, catalog, blobs, tracker, limiter, access=access)
    app = web.Application(middlewares=[json_errors_middleware(_error_response)],
                          client_max_size=1 << 20)
    app[HUB_KEY] = hub
    app[LIMITS_KEY] = Limits(
        trust_proxy=config.trust_proxy,
        announces=AnnounceRate(config.tracker_announce_rate),
        logins=LoginThrottle(),
    )
    add_api_routes(app)
    r = app.router
    r.add_get("/f/" + _ID + "/{name}", download)  # GET also answers HEAD
    r.add_get("/f/" + _ID, download_short)
    r.add_get("/k/{passkey:[0-9a-f]{1,64}}/" + _ID + "/{name}", download_with_passkey)
    r.add_get("/t/" + _ID + ".v1.torrent", get_torrent)
    r.add_get("/t/" + _ID + ".torrent", get_torrent)
    r.add_get("/m/" + _ID, get_magnet)
    r.add_get("/announce", announce)
    r.add_get("/scrape", scrape)
    r.add_get("/metrics", metrics)
    r.add_get("/api/openapi.yaml", openapi)
    r.add_get("/", root_redirect)
    r.add_get("/admin", admin_redirect)
    r.add_get("/admin/", admin_page)
    r.add_get("/admin/{name}", admin_asset)
    app.cleanup_ctx.append(_data_dir_lock)
    app.cleanup_ctx.append(_background)
    return app


async def _data_dir_lock(app: web.Application) -> AsyncIterator[None]:
    """One hub per data folder: the storage check would sweep another hub's uploads."""
    hub = app[HUB_KEY]
    lock = DataDirLock(hub.config.data_dir)
    try:
        lock.acquire()
    except BaseException:
        hub.catalog.close()
        raise
    try:
        yield
    finally:
        lock.release()


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Storage check, the tracker's peer purge and the embedded seeder, for the app's life."""
    hub = app[HUB_KEY]
    ping = getattr(hub.tracker, "ping", None)
    if ping is not None:  # a shared swarm state: fail at start, not at the first announce
        try:
            await asyncio.wait_for(ping(), 15)
        except Exception as exc:  # redis.exceptions.ConnectionError is not an OSError
            hub.catalog.close()
            where = urllib.parse.urlsplit(hub.config.swarm_state or "")
            host = where.hostname or "?"  # never the URL's password
            raise StartupError(f"cannot reach the swarm state (Redis at {host}:"
                               f"{where.port or 6379}): {exc or type(exc).__name__}") from None
    in_store = hub.blobs.exists if hub.config.store else None
    report = await asyncio.to_thread(reconcile, hub.config.data_dir, hub.catalog,
                                     blob_root=hub.config.blob_dir, in_store=in_store)
    hub.missing_blobs = set(report.missing)
    if report.removed or report.missing or report.restored_blobs or report.permissions_fixed:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    if hub.config.udp_tracker is not None:
        from swarmhub.hub.udp_tracker import start_hub_udp_tracker

        try:
            hub.udp_tracker = await start_hub_udp_tracker(
                hub, app[LIMITS_KEY].announces, *hub.config.udp_tracker)
        except OSError as exc:
            hub.catalog.close()
            raise StartupError(_bind_failure("the UDP tracker", hub.config.udp_tracker, exc,
                                             "--udp-tracker HOST:PORT")) from None
    seeder: Seeder | None = None
    seeder_task: asyncio.Task[None] | None = None
    if hub.config.peer_listen is not None:
        seeder = Seeder(hub, hub.config.peer_listen)
        seeder_task = asyncio.create_task(seeder.run(), name="hub-seeder")
        await asyncio.wait_for(seeder.ready.wait(), 30)
        if seeder.session is None:
            await seeder_task
            if hub.udp_tracker is not None:
                hub.udp_tracker.close()
            hub.catalog.close()
            raise StartupError(_bind_failure("the embedded seeder", hub.config.peer_listen,
                                             seeder._failed, "--peer-listen HOST:PORT or 'off'"))
        hub.seeder = seeder
        log.info("embedded seeder listening on %s:%d", hub.config.peer_listen[0], seeder.port)

    async def purge() -> None:
        """Every ``min_interval``: drop silent peers; one failed round (Redis away for a
        moment) is logged and the next round tries again, instead of ending the loop."""
        clock = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(hub.tracker.min_interval)
            try:
                await hub.tracker.purge(clock.time())
            except Exception as exc:  # redis.exceptions.ConnectionError is not an OSError
                log.warning("tracker purge failed (next try in %d s): %s",
                            hub.tracker.min_interval, exc or type(exc).__name__)
            # Peers that stopped announcing lose their proof, and then their connections.
            if hub.access.expire(clock.time()) and hub.seeder is not None:
                hub.seeder.enforce()

    async def sweep_stalled() -> None:
        """Free the transfer slots of clients that stopped reading (origin docstring)."""
        clock = asyncio.get_running_loop()
        limiter = hub.limiter
        while limiter is not None and limiter.stall_timeout > 0:
            await asyncio.sleep(min(5.0, limiter.stall_timeout / 4))
            limiter.sweep(clock.time())

    async def follow_access() -> None:
        """Admission proofs and revocations other hub processes saw (``hub.access``)."""
        clock = asyncio.get_running_loop()
        async for event in hub.tracker.access_events():
            try:
                if event["kind"] == "record":
                    ih, eip, eport, epid = event["entry"]
                    entry = (bytes.fromhex(ih), str(eip), int(eport), bytes.fromhex(epid))
                    hub.access.record(
                        file_id=str(event["file_id"]), ip=str(event["ip"]),
                        port=int(event["port"]), peer_id=bytes.fromhex(event["peer_id"]),
                        token_id=str(event["token_id"]), entry=entry, now=clock.time())
                    if isinstance(hub.seeder, Seeder):
                        hub.seeder.dial(entry[0], (str(event["ip"]), int(event["port"])))
                elif event["kind"] == "revoke":
                    hub.access.revoke(str(event["token_id"]))
                    if hub.seeder is not None:
                        hub.seeder.enforce()
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("ignored a malformed access event: %s", exc)

    purger = asyncio.create_task(purge(), name="hub-tracker-purge")
    sweeper = asyncio.create_task(sweep_stalled(), name="hub-stalled-downloads")
    follower = asyncio.create_task(follow_access(), name="hub-access-events")
    try:
        yield
    finally:
        for task in (purger, sweeper, follower):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        hub.seeder = None
        if hub.udp_tracker is not None:
            hub.udp_tracker.close()
            hub.udp_tracker = None
        if seeder is not None and seeder_task is not None:
            await seeder.close()
            try:
                await asyncio.wait_for(seeder_task, 20)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("the embedded seeder did not stop in time")
        hub.catalog.close()
        await hub.tracker.close()
        await asyncio.to_thread(hub.blobs.close)


async def start_hub(config: HubConfig, host: str, port: int) -> HubRunner:
    """Start the hub on ``host:port``; stop it with ``await runner.cleanup()``."""
    install_fd_exhaustion_handler(asyncio.get_running_loop())
    runner = HubRunner(make_hub_app(config), config)
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()  # ends the start-up contexts that did start (the lock...)
        raise
    try:
        await web.TCPSite(runner, host, port, reuse_port=config.reuse_port or None).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(_bind_failure("HTTP", (host, port), exc, "--listen HOST:PORT")) from None
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _bind_failure(
    what: str, addr: tuple[str, int], exc: BaseException | None, option: str
) -> str:
    """One line an operator can act on: what could not listen where, why, which flag."""
    if isinstance(exc, OSError) and exc.errno:
        reason = os.strerror(exc.errno).lower()  # aiohttp's own strerror repeats the address
    else:
        reason = str(exc or "unknown error")
    return f"cannot listen for {what} on {addr[0]}:{addr[1]} ({reason}); choose another {option}"
