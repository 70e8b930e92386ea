"""HTTP tracker client: announce (BEP 3, 7, 23), scrape (BEP 48) and tiers (BEP 12).

The pure half (:func:`build_announce_url`, :func:`parse_announce_response`,
:func:`scrape_url`, :func:`parse_scrape_response`) never touches the network, so every
quirk of real trackers is a plain unit test. The async half (:func:`announce`,
:func:`scrape`, :class:`TrackerTiers`) only moves bytes (one GET each, with
:mod:`swarmhub.discovery.httpget`: no aiohttp, whose import cost a ``get`` ~0.1 CPU-s
before its first peer) and turns every failure — HTTP status, timeout, refused
connection, junk body — into a :class:`~swarmhub.errors.TrackerError` naming the
tracker, so a session can log it and try the next tracker instead of crashing.

``udp://`` URLs (BEP 15) go to :class:`~swarmhub.discovery.udp_tracker.UdpTrackerClient`:
:func:`announce` and :func:`scrape` dispatch on the scheme, and each :class:`TrackerTiers`
keeps one UDP client so its connection ids are reused between announces.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmhub.bencode import bdecode
from swarmhub.discovery import httpget
from swarmhub.errors import BencodeError, TrackerError
from swarmhub.settings import USER_AGENT

if TYPE_CHECKING:
    from swarmhub.discovery.udp_tracker import UdpTrackerClient

__all__ = [
    "DEFAULT_INTERVAL",
    "EVENTS",
    "AnnounceRequest",
    "AnnounceResponse",
    "Announcer",
    "TrackerTiers",
    "announce",
    "build_announce_url",
    "build_scrape_url",
    "parse_announce_response",
    "parse_scrape_response",
    "scrape",
    "scrape_url",
]

log = logging.getLogger(__name__)

#: Events a client may send; ``None`` is a regular (periodic) announce.
EVENTS = frozenset({"started", "completed", "stopped"})
#: Re-announce interval used when a tracker forgets to send one (libtorrent does the same).
DEFAULT_INTERVAL = 1800
#: A tracker body larger than this is refused: 200 dict-form peers fit in ~20 KiB.
MAX_BODY = 4 * 1024 * 1024

_COMPACT4 = struct.Struct("!4sH")
_COMPACT6 = struct.Struct("!16sH")


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    """What a client tells a tracker about one torrent (BEP 3 request parameters).

    ``info_hash`` and ``peer_id`` are the raw 20 bytes; ``tracker_id`` is the value a
    tracker handed out earlier and wants back; ``ip`` is an optional address override.
    """

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str | None = None
    numwant: int = 50
    compact: bool = True
    key: str | None = None
    tracker_id: bytes | None = None
    ip: str | None = None

    def __post_init__(self) -> None:
        # Catch caller bugs here rather than as a confusing tracker failure later.
        if len(self.info_hash) != 20:
            raise TrackerError(f"info_hash must be 20 bytes, got {len(self.info_hash)}")
        if len(self.peer_id) != 20:
            raise TrackerError(f"peer_id must be 20 bytes, got {len(self.peer_id)}")
        if not 0 <= self.port <= 0xFFFF:
            raise TrackerError(f"port {self.port} is outside 0..65535")
        for name in ("uploaded", "downloaded", "left", "numwant"):
            if getattr(self, name) < 0:
                raise TrackerError(f"{name} must not be negative")
        if self.event is not None and self.event not in EVENTS:
            raise TrackerError(f"unknown announce event {self.event!r}")


@dataclass(frozen=True, slots=True)
class AnnounceResponse:
    """A successful tracker answer.

    ``peers`` holds IPv4 and IPv6 (``peers6``, BEP 7) addresses alike as ``(host, port)``;
    ``warning`` is the tracker's ``warning message`` — show it, the announce still worked.
    """

    interval: int
    min_interval: int | None
    peers: list[tuple[str, int]]
    complete: int | None
    incomplete: int | None
    warning: str | None
    tracker_id: bytes | None


# --------------------------------------------------------------------------- pure: URLs


def _quote(raw: bytes) -> str:
    # BEP 3: everything outside 0-9a-zA-Z.-_~ is %nn, byte by byte.
    return urllib.parse.quote_from_bytes(raw, safe="")


def _join_query(base_url: str, pairs: Iterable[tuple[str, str]]) -> str:
    """Append already-encoded ``pairs`` to ``base_url``, keeping its query (a passkey)."""
    base, _, _fragment = base_url.partition("#")
    extra = "&".join(f"{k}={v}" for k, v in pairs)
    if "?" not in base:
        return f"{base}?{extra}"
    if base.endswith(("?", "&")):
        return base + extra
    return f"{base}&{extra}"


def build_announce_url(base_url: str, req: AnnounceRequest) -> str:
    """The full GET URL of an announce; binary fields are percent-encoded byte-exact."""
    pairs = [
        ("info_hash", _quote(req.info_hash)),
        ("peer_id", _quote(req.peer_id)),
        ("port", str(req.port)),
        ("uploaded", str(req.uploaded)),
        ("downloaded", str(req.downloaded)),
        ("left", str(req.left)),
        ("compact", "1" if req.compact else "0"),
        ("numwant", str(req.numwant)),
    ]
    if req.compact:
        pairs.append(("no_peer_id", "1"))
    if req.event is not None:
        pairs.append(("event", req.event))
    if req.key is not None:
        pairs.append(("key", urllib.parse.quote(req.key, safe="")))
    if req.tracker_id is not None:
        pairs.append(("trackerid", _quote(req.tracker_id)))
    if req.ip is not None:
        pairs.append(("ip", urllib.parse.quote(req.ip, safe="")))
    return _join_query(base_url, pairs)


def scrape_url(announce_url: str) -> str | None:
    """The BEP 48 scrape URL of an HTTP tracker, or ``None`` when it has none.

    By convention only a last path segment starting with ``announce`` can be turned into
    ``scrape`` (``/x/announce.php?pk=1`` -> ``/x/scrape.php?pk=1``).
    """
    parts = urllib.parse.urlsplit(announce_url)
    if parts.scheme not in ("http", "https"):
        return None
    head, sep, last = parts.path.rpartition("/")
    if not sep or not last.startswith("announce"):
        return None
    path = f"{head}/scrape{last[len('announce') :]}"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def build_scrape_url(scrape_base: str, info_hashes: Iterable[bytes]) -> str:
    """``scrape_base`` with one ``info_hash`` parameter per hash (BEP 48)."""
    return _join_query(scrape_base, [("info_hash", _quote(ih)) for ih in info_hashes])


# ---------------------------------------------------------------- pure: response bodies


def _decode_dict(body: bytes) -> dict[bytes, Any]:
    try:
        value = bdecode(body)
    except BencodeError as exc:
        raise TrackerError(f"tracker sent a body that is not bencode ({exc})") from None
    if not isinstance(value, dict):
        raise TrackerError("tracker sent a bencoded value that is not a dictionary")
    failure = value.get(b"failure reason")
    if failure is not None:
        text = _text(failure) if isinstance(failure, bytes) else repr(failure)
        raise TrackerError(f"tracker refused the request: {text}")
    return value


def _failure_reason(body: bytes) -> str | None:
    try:
        value = bdecode(body)
    except BencodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get(b"failure reason"), bytes):
        return _text(value[b"failure reason"])
    return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _opt_int(d: Mapping[bytes, Any], key: bytes) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or value < 0:
        raise TrackerError(f"tracker field {key.decode()!r} is not a non-negative integer")
    return value


def _compact_peers(blob: bytes, *, v6: bool) -> list[tuple[str, int]]:
    fmt = _COMPACT6 if v6 else _COMPACT4
    if len(blob) % fmt.size:
        field = "peers6" if v6 else "peers"
        raise TrackerError(f"compact {field} length {len(blob)} is not a multiple of {fmt.size}")
    peers = []
    for raw_ip, port in fmt.iter_unpack(blob):
        if port == 0:
            continue  # unconnectable; libtorrent skips these as well
        ip = ipaddress.IPv6Address(raw_ip) if v6 else ipaddress.IPv4Address(raw_ip)
        peers.append((str(ip), port))
    return peers


def _dict_peers(items: list[Any]) -> list[tuple[str, int]]:
    peers = []
    for item in items:
        if not isinstance(item, dict):
            raise TrackerError("tracker peer list entry is not a dictionary")
        ip, port = item.get(b"ip"), item.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int):
            raise TrackerError("tracker peer entry lacks a string 'ip' or an integer 'port'")
        if not 0 < port <= 0xFFFF:
            continue
        try:
            host = ip.decode("ascii")
        except UnicodeDecodeError:
            raise TrackerError("tracker peer 'ip' is not an ASCII address or name") from None
        peers.append((host, port))
    return peers


def parse_announce_response(body: bytes) -> AnnounceResponse:
    """Decode an announce answer; anything but a usable answer raises ``TrackerError``."""
    d = _decode_dict(body)
    interval = _opt_int(d, b"interval")
    peers: list[tuple[str, int]] = []
    raw_peers = d.get(b"peers")
    if isinstance(raw_peers, bytes):
        peers += _compact_peers(raw_peers, v6=False)
    elif isinstance(raw_peers, list):
        peers += _dict_peers(raw_peers)
    elif raw_peers is not None:
        raise TrackerError("tracker 'peers' is neither a string nor a list")
    raw_peers6 = d.get(b"peers6")
    if isinstance(raw_peers6, bytes):
        peers += _compact_peers(raw_peers6, v6=True)
    elif raw_peers6 is not None:
        raise TrackerError("tracker 'peers6' is not a string")
    warning = d.get(b"warning message")
    tracker_id = d.get(b"tracker id")
    return AnnounceResponse(
        interval=DEFAULT_INTERVAL if interval is None else interval,
        min_interval=_opt_int(d, b"min interval"),
        peers=peers,
        complete=_opt_int(d, b"complete"),
        incomplete=_opt_int(d, b"incomplete"),
        warning=_text(warning) if isinstance(warning, bytes) else None,
        tracker_id=tracker_id if isinstance(tracker_id, bytes) else None,
    )


def parse_scrape_response(body: bytes) -> dict[bytes, tuple[int, int, int]]:
    """Decode a scrape answer into ``{info_hash: (complete, downloaded, incomplete)}``."""
    files = _decode_dict(body).get(b"files", {})
    if not isinstance(files, dict):
        raise TrackerError("tracker scrape 'files' is not a dictionary")
    out = {}
    for info_hash, stats in files.items():
        if len(info_hash) != 20 or not isinstance(stats, dict):
            raise TrackerError("tracker scrape entry is not a 20-byte hash with a dictionary")
        out[info_hash] = (
            _opt_int(stats, b"complete") or 0,
            _opt_int(stats, b"downloaded") or 0,
            _opt_int(stats, b"incomplete") or 0,
        )
    return out


# ------------------------------------------------------------------------------ async I/O


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise TrackerError(f"{url}: unsupported tracker URL scheme {scheme!r}")


def _udp_client(url: str, udp: UdpTrackerClient | None) -> UdpTrackerClient | None:
    """The UDP client for a ``udp://`` URL (``udp`` or a new one), else ``None``."""
    if urllib.parse.urlsplit(url).scheme.lower() != "udp":
        return None
    if udp is not None:
        return udp
    from swarmhub.discovery.udp_tracker import UdpTrackerClient

    return UdpTrackerClient()


async def _get(url: str, full_url: str, timeout: float, user_agent: str) -> bytes:
    """GET ``full_url`` and return the body; every failure is a ``TrackerError`` on ``url``."""
    try:
        # full_url is sent as it is: our percent-encoding of binary hashes stays untouched
        resp = await httpget.get(full_url, timeout=timeout, user_agent=user_agent,
                                 max_body=MAX_BODY)
    except TimeoutError:
        raise TrackerError(f"{url}: tracker did not answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        if "larger than" in str(exc):
            raise TrackerError(f"{url}: tracker answer is larger than {MAX_BODY} bytes") from None
        raise TrackerError(f"{url}: cannot reach tracker ({exc or type(exc).__name__})") from None
    body = resp.body
    if resp.status != 200:
        # Some trackers send their failure reason with a 4xx; prefer that text.
        reason = _failure_reason(body)
        if reason is not None:
            raise TrackerError(f"{url}: tracker refused the request: {reason}")
        raise TrackerError(f"{url}: tracker answered HTTP {resp.status} {resp.reason}")
    return body


async def announce(
    url: str,
    req: AnnounceRequest,
    *,
    timeout: float = 15.0,
    udp: UdpTrackerClient | None = None,
    user_agent: str = USER_AGENT,
) -> AnnounceResponse:
    """Announce ``req`` to the tracker at ``url``; raise ``TrackerError`` naming ``url``.

    ``udp://`` URLs go through ``udp`` (or a new client), whose BEP 15 retry schedule
    replaces ``timeout``.
    """
    client = _udp_client(url, udp)
    if client is not None:
        return await client.announce(url, req)
    _check_scheme(url)
    body = await _get(url, build_announce_url(url, req), timeout, user_agent)
    try:
        return parse_announce_response(body)
    except TrackerError as exc:
        raise TrackerError(f"{url}: {exc}") from None


async def scrape(
    url: str,
    info_hashes: Sequence[bytes],
    *,
    timeout: float = 15.0,
    udp: UdpTrackerClient | None = None,
    user_agent: str = USER_AGENT,
) -> dict[bytes, tuple[int, int, int]]:
    """Scrape ``info_hashes`` -> ``{info_hash: (complete, downloaded, incomplete)}``.

    ``url`` is a scrape URL; an announce URL is converted with :func:`scrape_url`. A
    ``udp://`` URL is scraped over BEP 15 (at most 74 hashes).
    """
    client = _udp_client(url, udp)
    if client is not None:
        return await client.scrape(url, info_hashes)
    _check_scheme(url)
    if any(len(ih) != 20 for ih in info_hashes):
        raise TrackerError("every info hash to scrape must be 20 bytes")
    base = url
    if urllib.parse.urlsplit(url).path.rpartition("/")[2].startswith("announce"):
        converted = scrape_url(url)
        if converted is None:  # pragma: no cover - startswith("announce") always converts
            raise TrackerError(f"{url}: tracker has no scrape URL")
        base = converted
    body = await _get(url, build_scrape_url(base, info_hashes), timeout, user_agent)
    try:
        return parse_scrape_response(body)
    except TrackerError as exc:
        raise TrackerError(f"{url}: {exc}") from None


Announcer = Callable[[str, AnnounceRequest], Awaitable[AnnounceResponse]]


class TrackerTiers:
    """BEP 12 multitracker: tiers tried in order, URLs in a tier in shuffled order.

    Each tier is shuffled once, here. An announce walks tier by tier, URL by URL, and
    stops at the first tracker that answers; that tracker moves to the front of its tier
    so the next announce goes to it first. A ``tracker id`` a tracker hands out is sent
    back to that same tracker on later announces (BEP 3).
    """

    def __init__(
        self,
        tiers: Sequence[Sequence[str]],
        rng: random.Random,
        *,
        announcer: Announcer | None = None,
        timeout: float = 15.0,
        udp: UdpTrackerClient | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._user_agent = user_agent
        self._tiers: list[list[str]] = []
        for tier in tiers:
            urls = list(dict.fromkeys(tier))  # drop duplicates, keep order
            if urls:
                rng.shuffle(urls)
                self._tiers.append(urls)
        self._timeout = timeout
        self._announcer: Announcer = announcer or self._default_announcer
        self._tracker_ids: dict[str, bytes] = {}
        self._udp = udp

    async def _default_announcer(self, url: str, req: AnnounceRequest) -> AnnounceResponse:
        if self._udp is None and urllib.parse.urlsplit(url).scheme.lower() == "udp":
            self._udp = _udp_client(url, None)  # one per tiers: its connection ids persist
        return await announce(url, req, timeout=self._timeout, udp=self._udp,
                              user_agent=self._user_agent)

    @property
    def tiers(self) -> list[list[str]]:
        """The current order (a copy): shuffled, with working trackers promoted."""
        return [list(t) for t in self._tiers]

    async def announce(self, req: AnnounceRequest) -> AnnounceResponse:
        """Announce to the first tracker that works; ``TrackerError`` lists every failure."""
        errors: list[str] = []
        for tier in self._tiers:
            for index, url in enumerate(list(tier)):
                tid = self._tracker_ids.get(url)
                this_req = req
                if req.tracker_id is None and tid is not None:
                    this_req = dataclasses.replace(req, tracker_id=tid)
                try:
                    resp = await self._announcer(url, this_req)
                except TrackerError as exc:
                    log.debug("tracker %s failed: %s", url, exc)
                    errors.append(str(exc) if url in str(exc) else f"{url}: {exc}")
                    continue
                if resp.tracker_id is not None:
                    self._tracker_ids[url] = resp.tracker_id
                if index:
                    del tier[index]
                    tier.insert(0, url)
                return resp
        if not errors:
            raise TrackerError("the torrent lists no trackers")
        raise TrackerError("every tracker failed: " + "; ".join(errors))
