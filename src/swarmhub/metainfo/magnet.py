"""Magnet links (BEP 9, with the BEP 52 ``btmh`` form for v2 and hybrid torrents).

``xt=urn:btih:`` carries the v1 info hash (40 hex digits, or 32 base32 letters in old
links); ``xt=urn:btmh:1220…`` the SHA-256 v2 info hash as a multihash. A hybrid link
carries both. ``dn`` names the torrent, ``tr`` lists trackers, ``ws`` web seeds (BEP 19)
and ``x.pe`` peers to dial directly.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from swarmhub._records import value_methods
from swarmhub.errors import MetainfoError
from swarmhub.metainfo.model import Metainfo, wire_info_hash

__all__ = ["Magnet", "make_magnet", "parse_magnet"]

#: Multihash prefix of a 32-byte SHA-256 digest (code 0x12, length 0x20).
_SHA256_MULTIHASH = "1220"
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_B32 = re.compile(r"[A-Za-z2-7]{32}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_MAX_LENGTH = 64 * 1024


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Magnet:
    """What a magnet link says about a torrent; the metadata itself comes from peers."""

    info_hash_v1: bytes | None
    info_hash_v2: bytes | None
    name: str | None = None
    trackers: tuple[str, ...] = ()
    web_seeds: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()

    @property
    def info_hash(self) -> bytes:
        """The 20-byte hash for handshakes and announces (v1, else v2 truncated, BEP 52)."""
        return wire_info_hash(self.info_hash_v1, self.info_hash_v2)


def make_magnet(
    meta: Metainfo,
    *,
    trackers: Sequence[str] | None = None,
    web_seeds: Sequence[str] | None = None,
    peers: Sequence[tuple[str, int]] = (),
) -> str:
    """A magnet link for ``meta``; trackers and web seeds default to the torrent's own.

    ``peers`` become BEP 9 ``x.pe`` entries: with one, the link works without a tracker.
    """
    if trackers is None:
        trackers = [url for tier in meta.trackers for url in tier]
    if web_seeds is None:
        web_seeds = meta.url_list
    params: list[tuple[str, str]] = []
    if meta.info_hash_v1 is not None:
        params.append(("xt", "urn:btih:" + meta.info_hash_v1.hex()))
    if meta.info_hash_v2 is not None:
        params.append(("xt", "urn:btmh:" + _SHA256_MULTIHASH + meta.info_hash_v2.hex()))
    params.append(("dn", meta.name))
    params.extend(("tr", url) for url in dict.fromkeys(trackers))
    params.extend(("ws", url) for url in dict.fromkeys(web_seeds))
    params.extend(("x.pe", f"[{h}]:{p}" if ":" in h else f"{h}:{p}") for h, p in peers)
    return "magnet:?" + "&".join(f"{k}={quote(v, safe=':')}" for k, v in params)


def _btih(value: str) -> bytes:
    if _HEX40.fullmatch(value):
        return bytes.fromhex(value)
    if _B32.fullmatch(value):
        try:
            return base64.b32decode(value.upper())
        except (binascii.Error, ValueError):  # pragma: no cover - the regex admits only valid
            pass
    raise MetainfoError(f"magnet: btih must be 40 hex digits or 32 base32 letters: {value!r:.80}")


def _btmh(value: str) -> bytes:
    if not value.startswith(_SHA256_MULTIHASH) or not _HEX64.fullmatch(value[4:]):
        raise MetainfoError(
            f"magnet: btmh must be a SHA-256 multihash ('1220' + 64 hex digits): {value!r:.80}"
        )
    return bytes.fromhex(value[4:])


def _peer(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address must be bracketed
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MetainfoError(f"magnet: x.pe must be host:port or [v6]:port, got {value!r:.80}")
    return host, int(port_text)


def _set_once(current: bytes | None, new: bytes, what: str) -> bytes:
    if current is not None and current != new:
        raise MetainfoError(f"magnet: two different {what} info hashes")
    return new


def parse_magnet(uri: str) -> Magnet:
    """Parse a magnet URI; raise :class:`MetainfoError` for anything malformed."""
    if not isinstance(uri, str):
        raise MetainfoError(f"a magnet link must be a string, not {type(uri).__name__}")
    if len(uri) > _MAX_LENGTH:
        raise MetainfoError(f"magnet link is longer than {_MAX_LENGTH} characters")
    if not uri[:8].lower() == "magnet:?":
        raise MetainfoError(f"not a magnet link (must start with 'magnet:?'): {uri!r:.80}")
    try:
        fields = parse_qsl(uri[8:], keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise MetainfoError(f"magnet: malformed query: {exc}") from None
    v1: bytes | None = None
    v2: bytes | None = None
    name: str | None = None
    trackers: list[str] = []
    seeds: list[str] = []
    peers: list[tuple[str, int]] = []
    for key, value in fields:
        # BEP 9 allows numbered keys ("xt.1", "tr.2") for lists.
        base = key.split(".", 1)[0] if key != "x.pe" else key
        if base == "xt":
            lowered = value.lower()
            if lowered.startswith("urn:btih:"):
                v1 = _set_once(v1, _btih(value[9:]), "v1")
            elif lowered.startswith("urn:btmh:"):
                v2 = _set_once(v2, _btmh(value[9:].lower()), "v2")
        elif base == "dn":
            name = value
        elif base == "tr" and value:
            trackers.append(value)
        elif base == "ws" and value:
            seeds.append(value)
        elif base == "x.pe":
            peers.append(_peer(value))
    if v1 is None and v2 is None:
        raise MetainfoError("magnet: no BitTorrent info hash (xt=urn:btih: or urn:btmh:)")
    return Magnet(
        info_hash_v1=v1,
        info_hash_v2=v2,
        name=name,
        trackers=tuple(dict.fromkeys(trackers)),
        web_seeds=tuple(dict.fromkeys(seeds)),
        peers=tuple(dict.fromkeys(peers)),
    )
