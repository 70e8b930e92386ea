"""Downloading from a hub: its file URLs, the client-server path, and the way to the swarm.

``swarmhub get http://hub/f/<id>`` comes here. In ``cs`` mode the file is fetched over
HTTP with resume (a ``.part`` file continued with ``Range`` + ``If-Range``) and checked
against the catalog's SHA-256; when the hub is overloaded it answers a whole-file GET with
``503`` and a ``Link`` to the torrent, and the caller continues from the swarm instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from swarmhub.discovery.httpget import ConnectError, HttpClient, HttpError, Response
from swarmhub.errors import AuthError, SwarmhubError
from swarmhub.metainfo.paths import safe_components

__all__ = ["HubBusy", "HubFile", "http_download", "hub_file", "hub_file_torrent", "hub_torrent",
           "parse_hub_url"]

_FILE_PATH = re.compile(r"^/(?:f|t|m)/([A-Za-z0-9_-]{1,64})(?:[/.].*)?$")
CHUNK = 1 << 20
#: Largest error body read for its message.
_ERROR_BODY = 64 * 1024


class HubBusy(SwarmhubError):
    """The hub refused a whole-file download under load (503); use the torrent instead."""

    def __init__(self, retry_after: float, torrent_url: str | None) -> None:
        super().__init__(f"the hub is busy (503); retry after {retry_after:.0f} s"
                         + (f" or use the torrent {torrent_url}" if torrent_url else ""))
        self.retry_after = retry_after
        self.torrent_url = torrent_url


@dataclass(frozen=True, slots=True)
class HubFile:
    """What the hub's catalog says about one file."""

    id: str
    name: str
    size: int
    sha256: str
    url: str
    torrent_url: str
    #: asked with our peer id: the tracker's seeders, and its leechers plus the other
    #: downloads about to announce (None: not asked, or the hub did not say); a download
    #: alone may start before its own announce is answered
    swarm: tuple[int, int] | None = None


def parse_hub_url(url: str) -> tuple[str, str]:
    """``http://host:port/f/<id>[/name]`` (or /t/<id>.torrent) -> (base URL, file id)."""
    parts = urlsplit(url)
    match = _FILE_PATH.match(parts.path)
    if parts.scheme not in ("http", "https") or not parts.netloc or match is None:
        raise SwarmhubError(f"not a hub file URL: {url!r} (expected http://HOST/f/<id>)")
    return f"{parts.scheme}://{parts.netloc}", match.group(1)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _json_error(resp: Response) -> str:
    try:
        body = await resp.json(_ERROR_BODY)
        return str(body.get("error", body))
    except (ValueError, AttributeError, OSError, TimeoutError):
        return resp.reason or str(resp.status)


async def hub_file(http: HttpClient, base: str, file_id: str,
                   token: str | None, peer_id: bytes | None = None) -> HubFile:
    """The catalog entry of ``file_id`` (GET /api/files/<id>); with the ``peer_id`` we
    will announce with, also who is in its swarm or about to be (:attr:`HubFile.swarm`),
    and we count as about to be until that announce."""
    query = "" if peer_id is None else f"?peer_id={peer_id.hex()}"
    async with await http.get(f"{base}/api/files/{file_id}{query}",
                              headers=_headers(token)) as resp:
        if resp.status in (401, 403):
            raise AuthError(f"the hub refused access ({resp.status}): {await _json_error(resp)}"
                            "; give --token")
        if resp.status == 404 and not token:
            raise AuthError(f"{await _json_error(resp)} (a private file looks missing to "
                            "strangers: give --token)")
        if resp.status != 200:
            raise SwarmhubError(f"the hub answered {resp.status}: {await _json_error(resp)}")
        d: dict[str, Any] = await resp.json()
    name = safe_components([str(d["name"])], what="file name from the hub")[0]
    seeders, leechers, pending = (d.get(k) for k in ("seeders", "leechers", "pending"))
    swarm = ((seeders, leechers + pending) if isinstance(seeders, int)
             and isinstance(leechers, int) and isinstance(pending, int) else None)
    return HubFile(str(d["id"]), name, int(d["size"]), str(d["sha256"]), str(d["url"]),
                   str(d["torrent_url"]), swarm)


async def hub_torrent(http: HttpClient, torrent_url: str,
                      token: str | None) -> bytes:
    """The .torrent bytes from the hub."""
    async with await http.get(torrent_url, headers=_headers(token)) as resp:
        if resp.status in (401, 403):
            raise AuthError(f"the hub refused the torrent ({resp.status}); give --token")
        if resp.status != 200:
            raise SwarmhubError(f"could not get {torrent_url}: HTTP {resp.status}")
        return await resp.read()


async def hub_file_torrent(http: HttpClient, base: str, file_id: str,
                           token: str | None, peer_id: bytes | None = None,
                           piece_layers: bool = True) -> tuple[HubFile, bytes]:
    """The catalog entry of ``file_id`` (see :func:`hub_file`) and its .torrent, asked
    for at once.

    Why: a swarm or hybrid download needs the .torrent before anything else, and asking
    for it only once the entry (its ``torrent_url``) is here cost a round trip more than a
    cs download waits. The hub serves every file's torrent at ``/t/<id>.torrent`` too, so
    that goes out beside the entry request; should it fail (a proxy that maps only some
    paths, say), the entry's own ``torrent_url`` is fetched as before, and its error is
    the one raised.

    ``piece_layers=False`` asks this hub for its short form (the same info dict, without
    the v2 piece layers: a third of the bytes for a hybrid torrent); parse it with
    ``load_torrent(..., require_piece_layers=False)``. A hub that does not know the
    question sends the whole torrent, as does the fallback."""
    query = "" if piece_layers else "?piece_layers=0"
    early = asyncio.ensure_future(hub_torrent(http, f"{base}/t/{file_id}.torrent{query}",
                                              token))
    try:
        info = await hub_file(http, base, file_id, token, peer_id)
    except asyncio.CancelledError:
        early.cancel()
        await asyncio.gather(early, return_exceptions=True)
        raise
    except BaseException:
        # the entry's error is the one raised, once the torrent request (to the same server,
        # bounded by the same timeouts) has ended too. Not cancelled: uvloop's TLS connect,
        # cancelled while its handshake is under way, leaves the handshake's failure in a
        # future nobody reads, and the user saw a traceback above the one-line error.
        await asyncio.gather(early, return_exceptions=True)
        raise
    try:
        return info, await early
    except (SwarmhubError, HttpError, OSError, TimeoutError):
        return info, await hub_torrent(http, info.torrent_url, token)


def _link_torrent(resp: Response) -> str | None:
    for link in resp.getall("Link"):
        m = re.match(r"\s*<([^>]+)>", link)
        if m and "bittorrent" in link:
            return m.group(1)
    return None


def _hash_file(path: Path) -> tuple[Any, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 4):
            h.update(chunk)
            n += len(chunk)
    return h, n


async def http_download(http: HttpClient, info: HubFile, dest_dir: Path, *,
                        token: str | None = None,
                        progress: Callable[[int], None] | None = None,
                        rate_limit: int = 0) -> int:
    """Fetch ``info`` into ``dest_dir`` over HTTP, resuming a ``.part``; returns bytes fetched.

    The result is renamed into place only once its SHA-256 matches the catalog's.
    ``rate_limit`` (bytes/s, 0 = none) paces the reads, so TCP slows the sender down.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / info.name
    part = dest_dir / f"{info.name}.part"
    loop = asyncio.get_running_loop()
    hasher, have = (await loop.run_in_executor(None, _hash_file, part)) if part.exists() \
        else (hashlib.sha256(), 0)
    if have > info.size:
        part.unlink()
        hasher, have = hashlib.sha256(), 0
    headers = _headers(token)
    if have:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = f'"sha256-{info.sha256[:32]}"'
    try:
        return await _fetch(http, info, part, final, headers, hasher, have, progress,
                            rate_limit)
    except (HttpError, ConnectionError, ConnectError, TimeoutError) as exc:
        raise SwarmhubError(f"cannot download {info.url}: {type(exc).__name__}: {exc}; "
                            "run again to resume") from None


async def _fetch(http: HttpClient, info: HubFile, part: Path, final: Path,
                 headers: dict[str, str], hasher: Any, have: int,
                 progress: Callable[[int], None] | None, rate_limit: int = 0) -> int:
    fetched = 0
    # Limited: small reads, each followed by the sleep that keeps the average at the limit.
    chunk_size = min(CHUNK, max(16 * 1024, rate_limit // 8)) if rate_limit else CHUNK
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with await http.get(info.url, headers=headers) as resp:
        if resp.status == 503:
            retry = float(resp.headers.get("retry-after", "10") or 10)
            raise HubBusy(retry, _link_torrent(resp) or info.torrent_url)
        if resp.status in (401, 403):
            raise AuthError(f"the hub refused the download ({resp.status}); give --token")
        if resp.status == 200 and have:  # the file changed: If-Range sent it whole
            hasher, have = hashlib.sha256(), 0
        elif resp.status not in (200, 206):
            raise SwarmhubError(f"download failed: HTTP {resp.status}: "
                                f"{await _json_error(resp)}")
        if progress is not None:
            progress(have)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        buf = memoryview(bytearray(chunk_size))
        try:
            os.ftruncate(fd, have)
            offset = have
            # bounded: each read fills some of buf from the body, or the body ends (0)
            while n := await resp.readinto(buf):
                chunk = buf[:n]
                hasher.update(chunk)
                try:
                    os.pwrite(fd, chunk, offset)
                except OSError as exc:
                    raise SwarmhubError(f"cannot write {part}: {exc.strerror}; the part file "
                                        "is kept and the next run resumes it") from None
                offset += n
                fetched += n
                if progress is not None:
                    progress(offset)
                if rate_limit:
                    ahead = fetched / rate_limit - (loop.time() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except (HttpError, ConnectionError, ConnectError, TimeoutError) as exc:
            raise SwarmhubError(f"download interrupted after {have + fetched:,} bytes "
                                f"({type(exc).__name__}: {exc}); the part file is kept, run "
                                "again to resume") from None
        finally:
            os.close(fd)
    size = have + fetched
    if size != info.size:
        raise SwarmhubError(f"download stopped at {size:,} of {info.size:,} bytes; "
                            "run again to resume")
    if hasher.hexdigest() != info.sha256:
        part.unlink()
        raise SwarmhubError(f"{info.name}: SHA-256 does not match the catalog; "
                            "the corrupt copy was removed")
    os.replace(part, final)
    return fetched
