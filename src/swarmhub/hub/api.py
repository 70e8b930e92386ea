"""The hub's JSON API (``/api/...``) and the state it works on (:class:`HubConfig`, :class:`Hub`).

Publishing is the one involved operation. The upload streams into a staged temp file
(:mod:`swarmhub.hub.blobs`); only when the multipart body ended cleanly is the blob given
its content name and the file catalogued, so a truncated request leaves nothing behind.
The torrent is then made from a hard link ``DATA/seed/<id>/<name>`` to the blob: the
torrent's ``name`` is the published name, the embedded seeder serves that very path
(``save_path/name`` is the single-file layout), and the BEP 19 web seed URL
``/f/<id>/<name>`` *is* the file (for a single-file torrent a client fetches the URL as
is, ranges within it). The v1 torrent is the hybrid one minus its v2 keys: for a single
file both have the same SHA-1 pieces, so the data is hashed once.

Private collections hand out a .torrent per user: same info dict (hence the same swarm),
but the announce URL carries the user's passkey and the web seed URL embeds it in the
path (``/k/<passkey>/<id>/<name>``) because libtorrent refuses query strings in web seed
URLs that point at loopback hosts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from aiohttp import BodyPartReader, web

from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import MetainfoError, StorageError
from swarmhub.hub.access import SwarmAccess
from swarmhub.hub.auth import Forbidden, Role, authenticate, has_role, require
from swarmhub.hub.blobs import BlobStore, UploadStalled, UploadTooLarge, UploadTruncated
from swarmhub.hub.catalog import (
    CatalogBase,
    CollectionRecord,
    ConflictError,
    FileRecord,
    InvalidError,
    NotFoundError,
    TokenRecord,
    new_file_id,
    validate_collection_name,
    validate_file_name,
)
from swarmhub.hub.pending import PendingGets
from swarmhub.hub.swarmstate import SwarmState
from swarmhub.hub.testhooks import pause_point
from swarmhub.metainfo import Metainfo, create_torrent, load_torrent, make_magnet, torrent_bytes

if TYPE_CHECKING:
    from swarmhub.hub.udp_tracker import UdpTrackerServer

__all__ = [
    "DEFAULT_PEER_PORT",
    "HUB_KEY",
    "GiB",
    "Hub",
    "HubConfig",
    "SeederHook",
    "add_api_routes",
    "file_json",
    "json_error",
    "link_into_seed_dir",
    "peer_counts",
]

log = logging.getLogger(__name__)

GiB = 1 << 30
#: The embedded seeder's default port: not 6881, the usual port of a peer (``seed --listen``).
DEFAULT_PEER_PORT = 7881
_MAX_FIELD = 1024  # bytes of a small form field such as "collection"
_MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Everything a hub needs to run; each knob has a safe default."""

    #: Where the catalog, blobs, seed links and temp files live.
    data_dir: Path
    #: The URL clients reach the hub at; it goes into torrents and magnets.
    public_url: str = "http://127.0.0.1:8080"
    #: Largest accepted upload in bytes.
    max_upload_size: int = 64 * GiB
    #: Concurrent HTTP downloads served before 503 + Retry-After (0 = no cap).
    max_transfers: int = 0
    #: The origin's upload cap in bytes/s over all HTTP downloads (0 = none).
    upload_rate: float = 0.0
    #: Re-announce interval handed to clients, seconds.
    tracker_interval: int = 1800
    tracker_min_interval: int = 60
    #: Where the embedded seeder accepts peers; None runs the hub without it.
    peer_listen: tuple[str, int] | None = ("127.0.0.1", DEFAULT_PEER_PORT)
    #: Largest request line / header field aiohttp accepts (431 beyond).
    max_header_size: int = 8190
    #: Behind a reverse proxy: take the client's address from X-Forwarded-For and honour
    #: the tracker's ``ip=``. Off by default: any client could claim any address.
    trust_proxy: bool = False
    #: Tracker entries one address (IPv6: one /64) may hold per swarm (0 = no cap); past
    #: it a new entry replaces that address's stalest one. Loopback labs running many
    #: peers on 127.0.0.1 need 0 or a larger value.
    tracker_peers_per_ip: int = 8
    #: Announces per second one address may send (bursts of 5 s worth; 0 = no limit).
    tracker_announce_rate: float = 20.0
    #: Seconds a client has to send a complete request head (slowloris guard; 0 = none).
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open.
    keepalive_timeout: float = 60.0
    #: Seconds an upload (or JSON body) may go without a byte before it is dropped (408)
    #: and its temp file removed (0 = no limit).
    body_timeout: float = 30.0
    #: Seconds a download may wait on a client that acknowledges nothing (it stopped
    #: reading) before it is aborted and its transfer slot freed (0 = forever).
    send_timeout: float = 60.0
    #: Where the UDP tracker (BEP 15) listens; None (default): HTTP tracker only.
    udp_tracker: tuple[str, int] | None = None
    #: DHT nodes (host:port,...) the embedded seeder joins the Mainline DHT through, to
    #: announce public files there (peers then find each other with the hub gone); None
    #: (default): no DHT. Never for private files (BEP 27).
    dht_bootstrap: str | None = None
    #: The catalog: None (SQLite in ``data_dir``), ``sqlite:PATH`` or ``postgresql://...``
    #: (shared by several hub processes; see ``hub.backends``).
    db: str | None = None
    #: The tracker's swarms: None (this process's memory) or ``redis://host:port/db``
    #: (shared by several hub processes; see ``hub.swarmstate``).
    swarm_state: str | None = None
    #: A blob folder shared by several hub processes (same file system as ``data_dir``);
    #: None keeps the blobs in ``data_dir``.
    blob_dir: Path | None = None
    #: Blobs in S3 (``s3://bucket/prefix?endpoint=URL``), ``data_dir`` caching them.
    store: str | None = None
    #: With S3: answer downloads of uncached blobs with a redirect to a presigned URL.
    s3_redirect: bool = False
    #: With S3: bytes of pieces the seeder keeps from S3 (LRU; blobs this hub took the
    #: upload of are read from its local copy instead).
    s3_piece_cache: int = 64 << 20
    #: Bind HTTP with SO_REUSEPORT (``--workers``: the processes share one port).
    reuse_port: bool = False
    #: SQLite catalog shared by worker processes: seconds between checks for their writes.
    catalog_poll: float = 0.0

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/")


class SeederHook(Protocol):
    """What the API needs from the embedded seeder."""

    async def add(self, record: FileRecord, metas: list[Metainfo]) -> None: ...

    async def remove(self, record: FileRecord) -> None: ...

    def enforce(self) -> int:
        """Close connections the access rule no longer admits; returns how many."""
        ...

    def upload_stats(self) -> dict[bytes, tuple[int, float]]:
        """Per swarm (info hash): bytes uploaded so far and the upload rate now (bytes/s)."""
        ...


#: Stored torrents a hub keeps parsed (:meth:`Hub.stored_torrent`): an entry holds ~2.5x
#: its torrent's bytes (them, parsed, the short form): ~130 KiB for a 32 MiB file's (1,024
#: pieces), ~0.8 MiB for a 100 GiB one's; a crowd asks for one file, or a few.
_PARSED_MAX = 32


@dataclass(slots=True)
class _Parsed:
    """A stored .torrent: its bytes, parsed, and its short form's bytes once made."""

    data: bytes
    meta: Metainfo
    #: the same without piece layers (``?piece_layers=0``), made at the first ask
    short: bytes | None = None


def _parsed_key(record: FileRecord, version: str) -> tuple[str, str, bytes | None, bytes | None]:
    return record.id, version, record.info_hash_v1, record.info_hash_v2


@dataclass(slots=True)
class Hub:
    """The running hub: configuration plus the objects every handler shares."""

    config: HubConfig
    catalog: CatalogBase
    blobs: BlobStore
    tracker: SwarmState
    #: The origin's transfer limiter (``swarmhub.hub.origin.OriginLimiter``) when available.
    limiter: Any = None
    seeder: SeederHook | None = None
    #: Peers that proved a live passkey by announcing (the seeder's admission rule).
    access: SwarmAccess = field(default_factory=SwarmAccess)
    announces: int = 0
    announce_failures: int = 0
    scrapes: int = 0
    #: Names this hub's publishes pin blobs under (``pin_holder``): unique across hubs.
    pin_prefix: str = field(default_factory=lambda: secrets.token_hex(6))
    pins_made: int = 0
    #: File bytes the HTTP origin sent, per file id (the admin page's "served over HTTP").
    http_bytes: Counter[str] = field(default_factory=Counter)
    #: Ids of catalogued files whose blob was missing at start-up (``hub.reconcile``).
    missing_blobs: set[str] = field(default_factory=set)
    #: The running UDP tracker when ``config.udp_tracker`` is set.
    udp_tracker: UdpTrackerServer | None = None
    #: gets between their file info and their announce (this worker's)
    pending_gets: PendingGets = field(default_factory=PendingGets)
    #: Stored torrents parsed, most recent last (:meth:`stored_torrent`), with the short
    #: form's bytes once asked for (:meth:`short_torrent`).
    _parsed: OrderedDict[tuple[str, str, bytes | None, bytes | None], _Parsed] = field(
        default_factory=OrderedDict)

    def pin_holder(self) -> str:
        """A holder name for one publish's blob pin (``CatalogBase.pin_blob``)."""
        self.pins_made += 1
        return f"{self.pin_prefix}-{self.pins_made}"

    # -- URLs ------------------------------------------------------------------------------

    def announce_url(self, passkey: str | None = None) -> str:
        url = self.config.base_url + "/announce"
        return url if passkey is None else f"{url}?passkey={passkey}"

    def udp_announce_url(self, passkey: str | None = None) -> str | None:
        """``udp://PUBLIC-HOST:PORT/announce`` when the UDP tracker is on; the path and
        passkey reach it as BEP 41 URL data."""
        if self.config.udp_tracker is None:
            return None
        port = self.config.udp_tracker[1]
        if self.udp_tracker is not None:
            port = self.udp_tracker.address[1]  # the real one when configured as port 0
        host = urlsplit(self.config.base_url).hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        url = f"udp://{host}:{port}/announce"
        return url if passkey is None else f"{url}?passkey={passkey}"

    def announce_tiers(self, passkey: str | None = None) -> tuple[tuple[str, ...], ...]:
        """BEP 12 tiers of the hub's torrents: HTTP first, UDP (when on) as the fallback."""
        udp = self.udp_announce_url(passkey)
        http = (self.announce_url(passkey),)
        return (http,) if udp is None else (http, (udp,))

    def file_url(self, record: FileRecord, passkey: str | None = None) -> str:
        name = quote(record.name, safe="")
        if passkey is None:
            return f"{self.config.base_url}/f/{record.id}/{name}"
        return f"{self.config.base_url}/k/{passkey}/{record.id}/{name}"

    def seed_dir(self, file_id: str) -> Path:
        return self.config.data_dir / "seed" / file_id

    async def end_swarm_access(self, token_id: str) -> int:
        """A revoked token's BitTorrent access ends now, not at the next announce.

        Its peers leave the tracker (nobody is sent to them any more) and the seeder closes
        its connections to them; returns how many connections were closed.
        """
        for info_hash, ip, port, peer_id in self.access.revoke(token_id):
            await self.tracker.drop(info_hash, ip, port, peer_id)
        await self.tracker.share_access({"kind": "revoke", "token_id": token_id})
        return self.seeder.enforce() if self.seeder is not None else 0

    # -- torrents --------------------------------------------------------------------------

    async def stored_torrent(self, record: FileRecord, version: str) -> _Parsed:
        """The stored .torrent of ``record`` (``"hybrid"`` or ``"v1"``), parsed once.

        Why: every hub ``get`` asks for it twice (its file info carries the magnet, then
        the .torrent itself), and parsing checks the piece layers against their roots
        (~1.2 ms for 1,024 pieces): a crowd of 32 starting at once cost the hub ~90 ms of
        CPU, and a catalog thread hop each, when the swarm's first pieces must leave it.
        A stored torrent never changes; the key holds the info hashes all the same, so a
        file id published again with other contents is parsed anew."""
        key = _parsed_key(record, version)
        hit = self._parsed.get(key)
        if hit is not None:
            self._parsed.move_to_end(key)
            return hit
        data = await self.catalog.run(self.catalog.get_torrent, record.id, version)
        if data is None:
            raise NotFoundError(f"no file with id {record.id!r}")
        parsed = _Parsed(data, load_torrent(data))
        self._parsed[key] = parsed
        while len(self._parsed) > _PARSED_MAX:
            self._parsed.popitem(last=False)
        return parsed

    def short_torrent(self, record: FileRecord, version: str, data: bytes,
                      meta: Metainfo) -> bytes:
        """``data`` (parsed: ``meta``) without its piece layers; made once for the stored
        torrent itself (a public file's), anew for one made for a user (a passkey)."""
        stored = self._parsed.get(_parsed_key(record, version))
        if stored is not None and stored.data is data:
            if stored.short is None:
                stored.short = torrent_bytes(dataclasses.replace(meta, piece_layers={}))
            return stored.short
        return torrent_bytes(dataclasses.replace(meta, piece_layers={}))

    async def torrent_for(
        self, record: FileRecord, version: str, passkey: str | None
    ) -> tuple[bytes, Metainfo]:
        """The .torrent for a user: the stored one, or for private files with their passkey."""
        stored = await self.stored_torrent(record, version)
        data, meta = stored.data, stored.meta
        if not record.private:
            if self.config.udp_tracker is None:
                return data, meta
            meta = dataclasses.replace(meta, trackers=self.announce_tiers())
            return torrent_bytes(meta), meta
        meta = dataclasses.replace(
            meta,
            trackers=self.announce_tiers(passkey),
            url_list=(self.file_url(record, passkey),),
        )
        return torrent_bytes(meta), meta

    def magnet_for(self, meta: Metainfo) -> str:
        return make_magnet(meta)


HUB_KEY = web.AppKey("hub", Hub)


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _ts(value: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat().replace("+00:00", "Z")


def file_json(hub: Hub, record: FileRecord) -> dict[str, Any]:
    """The API's view of a file (URLs are the public ones; private ones need a token)."""
    base = hub.config.base_url
    return {
        "id": record.id,
        "name": record.name,
        "size": record.size,
        "sha256": record.sha256,
        "collection": record.collection,
        "private": record.private,
        "created": _ts(record.created),
        "info_hash_v1": record.info_hash_v1.hex() if record.info_hash_v1 else None,
        "info_hash_v2": record.info_hash_v2.hex() if record.info_hash_v2 else None,
        "info_hash_v1_torrent": (
            record.info_hash_v1_torrent.hex() if record.info_hash_v1_torrent else None
        ),
        "piece_length": record.piece_length,
        "published_by": record.published_by,
        "url": hub.file_url(record),
        "torrent_url": f"{base}/t/{record.id}.torrent",
        "torrent_v1_url": f"{base}/t/{record.id}.v1.torrent",
        "magnet_url": f"{base}/m/{record.id}",
    }


def _collection_json(c: CollectionRecord) -> dict[str, Any]:
    return {"name": c.name, "private": c.private, "created": _ts(c.created), "files": c.files}


def _token_json(t: TokenRecord) -> dict[str, Any]:
    return {
        "id": t.id,
        "role": t.role,
        "label": t.label,
        "passkey": t.passkey,
        "created": _ts(t.created),
        "revoked_at": None if t.revoked_at is None else _ts(t.revoked_at),
    }


def _hub(request: web.Request) -> Hub:
    return request.app[HUB_KEY]


# ------------------------------------------------------------------------------ publishing


def _make_torrents(path: Path, hub: Hub, private: bool, web_seed: str) -> tuple[Metainfo, Metainfo]:
    """Hash the file once: the hybrid torrent and the v1 one derived from it."""
    hybrid = create_torrent(
        path, trackers=[[hub.announce_url()]], url_list=[web_seed], private=private
    )
    info = bdecode(hybrid.info_bytes)
    info.pop(b"meta version", None)
    info.pop(b"file tree", None)
    outer = bdecode(torrent_bytes(hybrid))
    outer[b"info"] = info
    outer.pop(b"piece layers", None)
    return hybrid, load_torrent(bencode(outer))  # parsing validates what we hand out


def link_into_seed_dir(blob: Path, target: Path) -> None:
    """``DATA/seed/<id>/<name>``: the blob under its published name, for torrent and seeder."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.link(blob, target)
    except OSError as exc:
        log.warning("cannot hard-link %s (%s); copying instead", blob, exc.strerror)
        shutil.copyfile(blob, target)


async def _read_field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(_MAX_FIELD):
        data += chunk
        if len(data) > _MAX_FIELD:
            raise InvalidError(f"form field {part.name!r} is longer than {_MAX_FIELD} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidError(f"form field {part.name!r} is not UTF-8") from None


async def post_file(request: web.Request) -> web.Response:
    """``POST /api/files`` (multipart: ``file``, optional ``collection`` and ``name``).

    ``name`` overrides the part's filename as the published name. Publisher role or above.
    """
    hub = _hub(request)
    token = await require(request, hub.catalog, Role.PUBLISHER)
    limit = hub.config.max_upload_size
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise UploadTooLarge(f"upload is larger than the hub's limit of {limit} bytes")
    if not request.content_type.startswith("multipart/"):
        raise InvalidError("send the file as multipart/form-data with a 'file' field")
    try:
        reader = await request.multipart()
    except ValueError as exc:  # no boundary in the Content-Type, for instance
        raise InvalidError(f"malformed multipart request: {exc}") from None
    stall = hub.config.body_timeout or None
    collection: str | None = None
    staged = None
    name_field: str | None = None
    filename = ""
    try:
        try:
            while True:
                async with asyncio.timeout(stall):
                    part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    raise InvalidError("nested multipart bodies are not accepted")
                if part.name == "collection":
                    async with asyncio.timeout(stall):
                        collection = (await _read_field(part)).strip() or None
                    if collection is not None:
                        validate_collection_name(collection)
                elif part.name == "name":
                    async with asyncio.timeout(stall):
                        name_field = await _read_field(part)
                elif part.name == "file":
                    if staged is not None:
                        raise InvalidError("send one 'file' field per request")
                    # aiohttp and browsers percent-encode unusual bytes in filename="".
                    filename = unquote(part.filename or "")
                    if name_field is None:
                        validate_file_name(filename)  # refuse before reading the body
                    staged = await hub.blobs.stage(part, limit, progress_timeout=stall)
                else:
                    async with asyncio.timeout(stall):
                        await part.release()
        except (StorageError, InvalidError, asyncio.CancelledError):
            raise
        except TimeoutError:
            raise UploadStalled(f"no upload progress for {stall:g} s; dropped it") from None
        except Exception as exc:  # malformed or truncated multipart framing
            raise UploadTruncated(f"the upload ended early or is malformed: {exc}") from None
        if staged is None:
            raise InvalidError("the form has no 'file' field")
        if staged.size == 0:
            raise InvalidError("the file is empty: there is nothing to share")
        name = validate_file_name(name_field if name_field is not None else filename)
        private = False
        if collection is not None:
            coll = await hub.catalog.run(hub.catalog.get_collection, collection)
            if coll is None:
                raise NotFoundError(
                    f"no collection named {collection!r}; an admin creates it with "
                    "POST /api/collections"
                )
            private = coll.private
        same = await hub.catalog.run(hub.catalog.find_same, staged.sha256, name, private)
        if same is not None:
            if same.collection != collection:
                raise ConflictError(
                    f"the same file is already published as {same.id} in collection "
                    f"{same.collection!r}"
                )
            hub.blobs.discard(staged)
            return web.json_response(file_json(hub, same), status=200)
        sha = staged.sha256
        # Before the blob is looked for (commit dedups onto an existing one): a delete
        # through any hub sharing the store now leaves it alone (CatalogBase.pin_blob).
        holder = hub.pin_holder()
        await hub.catalog.run(hub.catalog.pin_blob, sha, holder)
    except BaseException:
        if staged is not None:
            hub.blobs.discard(staged)
        raise
    try:
        blob = await asyncio.to_thread(hub.blobs.commit, staged)
        try:
            record = await _catalogue(
                hub, blob.path, blob.sha256, blob.size, name, collection, private, token
            )
        except ConflictError:
            # The same upload raced this one to the catalog: the API answers 200 with
            # the entry it made, as for a duplicate that came second.
            same = await hub.catalog.run(hub.catalog.find_same, sha, name, private)
            if same is None or same.collection != collection:
                raise
            return web.json_response(file_json(hub, same), status=200)
    finally:
        # Shielded: a client gone mid-publish must not leave the pin (or an unreferenced
        # blob) behind until the pin expires.
        await asyncio.shield(_unpin(hub, sha, holder))
    log.info("published %s as %s (%d bytes)", name, record.id, record.size)
    return web.json_response(file_json(hub, record), status=201)


async def _catalogue(
    hub: Hub,
    blob: Path,
    sha: str,
    size: int,
    name: str,
    collection: str | None,
    private: bool,
    token: TokenRecord,
) -> FileRecord:
    file_id = new_file_id()
    seed_path = hub.seed_dir(file_id) / name
    stub = FileRecord(file_id, name, size, sha, collection, private, 0.0, None, None, None, 0, None)
    try:
        await asyncio.to_thread(link_into_seed_dir, blob, seed_path)
        await pause_point("hashing")
        try:
            hybrid, v1 = await asyncio.to_thread(
                _make_torrents, seed_path, hub, private, hub.file_url(stub)
            )
        except MetainfoError as exc:  # the message names the server path: log it only
            log.info("cannot make a torrent of %s: %s", name, exc)
            raise InvalidError(f"cannot make a torrent of {name!r}") from None
        await pause_point("torrent")
        record = await hub.catalog.run(
            hub.catalog.add_file,
            file_id=file_id,
            name=name,
            size=size,
            sha256=sha,
            collection=collection,
            info_hash_v1=hybrid.info_hash_v1,
            info_hash_v2=hybrid.info_hash_v2,
            piece_length=hybrid.piece_length,
            torrent_hybrid=torrent_bytes(hybrid),
            torrent_v1=torrent_bytes(v1),
            info_hash_v1_torrent=v1.info_hash_v1,
            published_by=token.id,
        )
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, hub.seed_dir(file_id), True)
        raise
    await pause_point("catalog")
    if hub.seeder is not None:
        try:
            await hub.seeder.add(record, [hybrid, v1])
        except Exception:
            log.exception("the embedded seeder could not add %s", record.id)
    await pause_point("seeding")
    return record


async def _unpin(hub: Hub, sha: str, holder: str) -> None:
    await hub.catalog.run(hub.catalog.unpin_blob, sha, holder)
    await _collect_garbage(hub, sha)  # the publish failed: its blob may be nobody's


async def _collect_garbage(hub: Hub, sha: str) -> None:
    """Delete a blob no file references and no publish pins, on whichever hub."""
    await hub.catalog.run(hub.catalog.collect_blob, sha, hub.blobs.delete)


# ------------------------------------------------------------------------------ files


async def _visible_file(request: web.Request) -> tuple[Hub, FileRecord, TokenRecord | None]:
    hub = _hub(request)
    token = await authenticate(request, hub.catalog)
    record = await hub.catalog.run(hub.catalog.get_file, request.match_info["id"])
    if record is None or (record.private and not has_role(token, Role.READER)):
        # A private file is not acknowledged to strangers (404, not 401).
        raise NotFoundError(f"no file with id {request.match_info['id']!r}")
    return hub, record, token


def _page(request: web.Request, name: str, default: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # isdigit() alone accepts "²" and other digits int() refuses: ASCII only, and short.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or int(raw) > hi:
        raise InvalidError(f"{name} must be an integer from 0 to {hi}")
    return int(raw)


async def list_files(request: web.Request) -> web.Response:
    """``GET /api/files?collection=&q=&limit=&offset=``: private files need a token."""
    hub = _hub(request)
    token = await authenticate(request, hub.catalog)
    files, total = await hub.catalog.run(
        hub.catalog.list_files,
        collection=request.query.get("collection") or None,
        query=request.query.get("q") or None,
        include_private=has_role(token, Role.READER),
        limit=_page(request, "limit", 100, _MAX_PAGE),
        offset=_page(request, "offset", 0, 2**62),
    )
    return web.json_response({"files": [file_json(hub, f) for f in files], "total": total})


async def get_file(request: web.Request) -> web.Response:
    hub, record, token = await _visible_file(request)
    body = file_json(hub, record)
    if not record.private or token is not None:
        _, meta = await hub.torrent_for(record, "hybrid", token.passkey if token else None)
        body["magnet"] = hub.magnet_for(meta)
    peer_id = _peer_id_param(request)
    if peer_id is not None:  # a get about to join the swarm: who else is in or coming
        now = asyncio.get_running_loop().time()
        body["pending"] = hub.pending_gets.arrive(record.id, peer_id, now)
        (body["seeders"], body["leechers"]), = await peer_counts(hub.tracker, [record])
    return web.json_response(body)


def _peer_id_param(request: web.Request) -> bytes | None:
    """``?peer_id=`` (40 hex digits): the BitTorrent peer id a get will announce with."""
    text = request.query.get("peer_id")
    if text is None:
        return None
    try:
        peer_id = bytes.fromhex(text)
    except ValueError:
        peer_id = b""
    if len(peer_id) != 20:
        raise InvalidError("peer_id must be 40 hex digits")
    return peer_id


async def delete_file(request: web.Request) -> web.Response:
    """``DELETE /api/files/{id}``: admins, or the publisher who uploaded it."""
    hub = _hub(request)
    token = await require(request, hub.catalog, Role.PUBLISHER)
    file_id = request.match_info["id"]
    record = await hub.catalog.run(hub.catalog.get_file, file_id)
    if record is None:
        raise NotFoundError(f"no file with id {file_id!r}")
    if not has_role(token, Role.ADMIN) and record.published_by != token.id:
        raise Forbidden("only an admin or the file's publisher may delete it")
    removed, _ = await hub.catalog.run(hub.catalog.delete_file, file_id)
    record = removed
    if hub.seeder is not None:
        try:
            await hub.seeder.remove(record)
        except Exception:
            log.exception("the embedded seeder could not drop %s", record.id)
    await asyncio.to_thread(shutil.rmtree, hub.seed_dir(record.id), True)
    await _collect_garbage(hub, record.sha256)
    hub.http_bytes.pop(record.id, None)
    hub.missing_blobs.discard(record.id)
    log.info("deleted %s (%s)", record.id, record.name)
    return web.json_response({"deleted": record.id})


# ------------------------------------------------------------------------------ collections


async def list_collections(request: web.Request) -> web.Response:
    """``GET /api/collections``: private collections (names, sizes) only for readers."""
    hub = _hub(request)
    token = await authenticate(request, hub.catalog)
    items = await hub.catalog.run(hub.catalog.list_collections)
    if not has_role(token, Role.READER):
        items = [c for c in items if not c.private]
    return web.json_response({"collections": [_collection_json(c) for c in items]})


async def _json_body(request: web.Request) -> dict[str, Any]:
    stall = _hub(request).config.body_timeout or None
    try:
        async with asyncio.timeout(stall):  # at most 1 MiB (client_max_size)
            body = await request.json()
    except TimeoutError:
        raise UploadStalled(f"the request body did not arrive within {stall:g} s") from None
    except ValueError:
        raise InvalidError("the request body must be a JSON object") from None
    except RecursionError:  # json.loads of "[[[[...": deeper than the parser's stack
        raise InvalidError("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidError("the request body must be a JSON object")
    return body


async def post_collection(request: web.Request) -> web.Response:
    """``POST /api/collections {"name", "private"}``: admin."""
    hub = _hub(request)
    await require(request, hub.catalog, Role.ADMIN)
    body = await _json_body(request)
    name, private = body.get("name"), body.get("private", False)
    if not isinstance(name, str) or not isinstance(private, bool):
        raise InvalidError('expected {"name": string, "private": boolean}')
    created = await hub.catalog.run(hub.catalog.add_collection, name, private)
    return web.json_response(_collection_json(created), status=201)


async def delete_collection(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require(request, hub.catalog, Role.ADMIN)
    name = request.match_info["name"]
    await hub.catalog.run(hub.catalog.delete_collection, name)
    return web.json_response({"deleted": name})


# ------------------------------------------------------------------------------ tokens


async def list_tokens(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require(request, hub.catalog, Role.ADMIN)
    items = await hub.catalog.run(hub.catalog.list_tokens)
    return web.json_response({"tokens": [_token_json(t) for t in items]})


async def post_token(request: web.Request) -> web.Response:
    """``POST /api/tokens {"role", "label"}``: admin; the secret is in this answer only."""
    hub = _hub(request)
    await require(request, hub.catalog, Role.ADMIN)
    body = await _json_body(request)
    role, label = body.get("role"), body.get("label", "")
    if not isinstance(role, str) or not isinstance(label, str):
        raise InvalidError('expected {"role": "admin"|"publisher"|"reader", "label": string}')
    secret, record = await hub.catalog.run(hub.catalog.add_token, role, label)
    return web.json_response({**_token_json(record), "token": secret}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require(request, hub.catalog, Role.ADMIN)
    record = await hub.catalog.run(hub.catalog.revoke_token, request.match_info["id"])
    closed = await hub.end_swarm_access(record.id)
    log.info("revoked token %s; closed %d seeder connection(s)", record.id, closed)
    return web.json_response(_token_json(record))


async def whoami(request: web.Request) -> web.Response:
    """``GET /api/me``: the caller's token (role, passkey), for clients and the admin page."""
    hub = _hub(request)
    token = await require(request, hub.catalog, Role.READER)
    return web.json_response(_token_json(token))


async def get_stats(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require(request, hub.catalog, Role.ADMIN)
    stats: dict[str, Any] = await hub.catalog.run(hub.catalog.stats)
    stats["missing_blobs"] = len(hub.missing_blobs)
    return web.json_response(stats)


async def peer_counts(
    tracker: SwarmState, records: Sequence[FileRecord]
) -> list[tuple[int, int]]:
    """Seeders and leechers of each file over its swarms (hybrid v1, v2 truncated, v1-only),
    each peer counted once (:meth:`SwarmState.file_stats_many`): a hybrid client announces
    under two hashes, and the hub's own seeder sits in the hybrid and the v1 swarm. All
    files at once (one Redis round trip)."""
    return await tracker.file_stats_many([r.swarm_hashes for r in records])


async def get_live(request: web.Request) -> web.Response:
    """``GET /api/live``: per file peers (tracker) and bytes out by HTTP and by the seeder.

    What the admin page polls every two seconds; cheap by design (one catalog read, the
    rest are in-memory counters). The tracker's seeder count includes the hub's own peer.
    """
    hub = _hub(request)
    await require(request, hub.catalog, Role.READER)
    records = await hub.catalog.run(hub.catalog.all_files)
    swarms = hub.seeder.upload_stats() if hub.seeder is not None else {}
    files = []
    for record, (seeders, leechers) in zip(
            records, await peer_counts(hub.tracker, records), strict=True):
        uploaded, rate = 0, 0.0
        for ih in record.swarm_hashes:
            up, up_rate = swarms.get(ih, (0, 0.0))
            uploaded, rate = uploaded + up, rate + up_rate
        files.append(
            {
                "id": record.id,
                "seeders": seeders,
                "leechers": leechers,
                "http_bytes": hub.http_bytes.get(record.id, 0),
                "seeder_uploaded": uploaded,
                "seeder_upload_rate": round(rate, 1),
            }
        )
    lim = hub.limiter
    totals = {
        "http_bytes_served": int(getattr(lim, "bytes_served", 0)),
        "http_active_transfers": int(getattr(lim, "transfers_active", 0)),
        "http_rejected": int(getattr(lim, "rejected_total", 0)),
        "seeder_uploaded": sum(up for up, _ in swarms.values()),
        "seeder_upload_rate": round(sum(r for _, r in swarms.values()), 1),
    }
    return web.json_response({"files": files, "totals": totals})


def add_api_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/files", list_files)
    r.add_post("/api/files", post_file)
    r.add_get("/api/files/{id}", get_file)
    r.add_delete("/api/files/{id}", delete_file)
    r.add_get("/api/collections", list_collections)
    r.add_post("/api/collections", post_collection)
    r.add_delete("/api/collections/{name}", delete_collection)
    r.add_get("/api/tokens", list_tokens)
    r.add_post("/api/tokens", post_token)
    r.add_post("/api/tokens/{id}/revoke", revoke_token)
    r.add_get("/api/me", whoami)
    r.add_get("/api/stats", get_stats)
    r.add_get("/api/live", get_live)
