"""Every knob of a swarmhub peer, with a safe default and a line saying what it does.

Like libtorrent's ``settings_pack``, one table is the single source of truth: each field
of :class:`Settings` carries its doc (and its allowed range) in the field metadata, and
:meth:`Settings.describe` turns that into ``--help`` text. Settings are frozen; derive
new ones with :meth:`Settings.replace`, :meth:`Settings.from_mapping` (config files,
CLI flags) or :meth:`Settings.from_env` (``SWARMHUB_MAX_CONNECTIONS=100``). Presets:
:meth:`Settings.low_memory` and :meth:`Settings.seedbox`.

Every constructor validates, and a bad value raises :class:`ConfigError` naming the
setting and what it accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from swarmhub._records import value_methods
from swarmhub.errors import SwarmhubError

__all__ = ["ENCRYPTION_MODES", "OTHER_ENV", "USER_AGENT", "ConfigError", "Settings"]

KiB = 1024
MiB = 1024 * KiB
#: Values of ``Settings.encryption``.
ENCRYPTION_MODES = ("prefer", "require", "off")
#: The default ``Settings.user_agent`` (also what a bare tracker announce sends).
USER_AGENT = "swarmhub/0.1"


#: ``SWARMHUB_*`` variables that are not settings: other parts of swarmhub (and its tests)
#: read them, so :meth:`Settings.from_env` accepts them without complaint. Add yours here.
OTHER_ENV = frozenset({
    "STATE_DIR", "TOKEN", "STRICT", "NOSENDFILE", "HUB", "TRACEBACK", "TEST_PAUSE_AT", "CONFIG",
    "DHT_LOCAL_ONLY", "UDP_TRACKER_RETRIES", "UDP_TRACKER_TIMEOUT", "DB", "SWARM_STATE", "STORE",
    "DAEMON", "DAEMON_TOKEN", "DAEMON_STATE",  # swarmhub daemon / remote
    "LAB_GATE",  # swarmhub.lab.gate: a lab client waits for the run to start
    "LAB_TRACE",  # swarmhub.lab.runner: the clients' status lines to trace.jsonl
    "LAB_NICE", "LAB_SOURCE_NICE",  # swarmhub.lab.topology: the hosts' CPU priority
    "PURE",  # swarmhub._compiled: the pure-Python core even where a compiled one is built
    "PROFILE",  # swarmhub.cli: a cProfile dump of the command at exit
    "SIM_HUGEPAGES",  # swarmhub.lab.hugepages: lab simulate on glibc malloc + huge pages
})


class ConfigError(SwarmhubError):
    """A setting name or value that cannot be used; the message says which and why."""


def _f(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None) -> Any:
    """A field with its doc and range: the one place both are written."""
    return dataclasses.field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi})


@value_methods
@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Settings:
    """Session-wide settings; see :meth:`describe` for the list with docs."""

    # -- network
    listen_interfaces: str = _f(
        "0.0.0.0:6881", "where Session.listen() accepts peers when given no address: "
        "comma-separated host:port, port 0 = any free port (the CLI's --listen sets it)"
    )
    max_connections: int = _f(200, "peer connections for the whole session", lo=1)
    max_connections_per_torrent: int = _f(50, "peer connections per torrent", lo=1)
    peer_idle_evict: float = _f(
        60.0, "at the per-torrent cap, a new peer replaces one that has shown no interest "
        "either way and moved no data for this many seconds (idle peers cannot lock others "
        "out; keep-alives do not count)", lo=0.0,
    )
    encryption: str = _f(
        "prefer", "message stream encryption (MSE/PE): prefer (accept plain and encrypted "
        "peers, dial encrypted first and fall back to plain), require (encrypted only) or off"
    )
    # -- picking
    sequential_critical_pieces: int = _f(
        4, "sequential downloads (--sequential, --serve): this many missing pieces after "
        "the first one are fetched strictly in order", lo=1,
    )
    sequential_window_pieces: int = _f(
        32, "sequential downloads: past the critical pieces, the rarest of this many "
        "pieces from the first missing one comes next (so streaming peers still have "
        "different pieces to trade); beyond it, rarest-first as usual", lo=1,
    )
    prefer_rc4: bool = _f(
        False, "answer a peer that offers both with an RC4 payload stream rather than "
        "plaintext after the obfuscated handshake (libtorrent's prefer_rc4; RC4 in Python "
        "costs about as much CPU as the rest of a download)"
    )
    # -- choking
    unchoke_slots: int = _f(
        4, "peers we upload to at once (tit-for-tat), plus one optimistic unchoke; 0 = "
        "none at all (only BEP 6 allowed-fast pieces leave us)", lo=0
    )
    optimistic_unchoke_interval: float = _f(
        30.0, "seconds before the optimistic unchoke moves to another peer", lo=1.0
    )
    rechoke_interval: float = _f(10.0, "seconds between choke/unchoke decisions", lo=1.0)
    allowed_fast_set_size: int = _f(
        0, "BEP 6 Allowed Fast: pieces a starting peer (one holding fewer than this many) "
        "may fetch from us while we choke it, one piece's bytes each, sent once on its "
        "first Interested (the canonical set of its /24 and the info hash); 0 = send none "
        "(the default: in `lab simulate` 5, libtorrent's default, was 0.1-1.5% slower). "
        "Sets other peers grant us are used either way",
        lo=0, hi=64,
    )
    super_seeding: bool = _f(
        True, "as an initial seed (nothing downloaded this session: a finished download "
        "seeds openly), show each peer a few pieces at a time, the ones the swarm lacks "
        "most, so each piece leaves us about once (BEP 16 style; unchokes every interested "
        "peer). For an initial seed facing many leechers"
    )
    super_seed_shared: bool = _f(
        True, "super-seeding: one budget of offers (super_seed_window) across all peers, "
        "in turns, instead of a window per peer (which splits the seed's upload N ways, "
        "so that nothing finishes for seconds)"
    )
    super_seed_window: float = _f(
        0.1, "super-seeding: seconds of our upload rate kept on offer (at least 3 pieces; "
        "plus our rate times the offers' measured answer time, up to 4x the window): "
        "across all peers, in turns, so each piece leaves us fast and is traded while we "
        "send the next; per peer (x10) when super_seed_shared is off", lo=0.0,
    )
    # -- timeouts
    handshake_timeout: float = _f(10.0, "seconds to connect and finish the handshake", lo=0.1)
    peer_timeout: float = _f(120.0, "close a peer that sent nothing for this long", lo=1.0)
    keepalive_interval: float = _f(
        60.0, "send a keep-alive after this many idle seconds (below peer_timeout)", lo=1.0
    )
    request_timeout: float = _f(
        20.0, "seconds before an unanswered request goes to another peer", lo=1.0
    )
    # -- request pipelining
    request_queue_time: float = _f(
        0.25, "keep this many seconds of a peer's measured rate in requests, or 4x its "
        "round-trip time when that is longer (each request waits about this long at the "
        "peer, so every hop a new piece takes through a swarm costs this much)", lo=0.01
    )
    min_request_queue: int = _f(
        4, "fewest requests outstanding to an unchoked peer (more would only queue: in a "
        "swarm's tail, a scarce piece waits behind them at its one holder)", lo=1
    )
    max_request_queue: int = _f(
        500, "most requests outstanding to one peer (also kept below its reqq)", lo=1
    )
    max_outstanding_incoming_requests: int = _f(
        500, "requests we queue from one peer (our reqq); more are rejected", lo=1
    )
    max_incoming_request_bytes: int = _f(
        8 * MiB, "bytes of piece requests we queue from one peer (500 blocks of 16 KiB); "
        "more are rejected (BEP 6) or dropped", lo=16 * KiB
    )
    # -- memory per peer
    send_buffer_bytes: int = _f(
        4 * MiB, "bytes queued to one peer's socket before uploads to it wait (resumed at a "
        "quarter). A peer that leaves twice this (at least this + 2 MiB) unread (metadata, "
        "hashes, rejects it asks for but does not read) is not read from until it drains: "
        "that bounds the replies queued per peer (8 MiB by default, plus one reply)",
        lo=64 * KiB
    )
    upload_ahead: float = _f(
        0.02, "upload turns: seconds of our measured upload rate (at least 64 KiB) written "
        "ahead across all peers, in turn order, so the peer asking longest gets its piece "
        "whole first instead of every peer a slice at once (a piece done in 0.1 s, not "
        "0.5 s, is shareable sooner), while a piece takes at least upload_turn_piece_time "
        "to send; 0 = never (each peer fills its own send buffer)", lo=0.0
    )
    upload_turn_piece_time: float = _f(
        0.01, "upload turns apply while one piece takes at least this many seconds to send "
        "at our measured upload rate (no rate yet counts as long): 256 KiB pieces over "
        "20 mbit take 0.1 s, 32 KiB 13 ms (in turns since cliff-30: lab simulate p2p "
        "N=64/256 1.143/1.184 -> 1.111/1.157x the bound; at 0.05 the netns lab once paid "
        "peer CPU for them, N=32 p2p 1.33-1.58x vs 1.25-1.28x); 0 = always (with "
        "upload_ahead)", lo=0.0
    )
    # -- rate limits (bytes/s, 0 = unlimited)
    download_rate_limit: int = _f(0, "session download limit, bytes/s (0 = unlimited)", lo=0)
    upload_rate_limit: int = _f(0, "session upload limit, bytes/s (0 = unlimited)", lo=0)
    torrent_download_rate_limit: int = _f(
        0, "per-torrent download limit, bytes/s (0 = unlimited)", lo=0
    )
    torrent_upload_rate_limit: int = _f(
        0, "per-torrent upload limit, bytes/s (0 = unlimited)", lo=0
    )
    # -- integrity
    hash_fail_ban_threshold: int = _f(
        2, "hash failures a peer may take part in before it is banned", lo=1
    )
    # -- disk and CPU
    disk_threads: int = _f(2, "threads for disk reads and writes", lo=1, hi=256)
    hash_threads: int = _f(
        0, "threads hashing downloaded pieces and rechecking data on disk (0 = one per CPU)",
        lo=0, hi=256,
    )
    read_cache_bytes: int = _f(
        32 * MiB, "bytes of recently read pieces kept in memory for uploads", lo=0
    )
    direct_io: bool = _f(
        True, "write downloaded pieces with O_DIRECT where the file system allows it (no "
        "copy into the page cache: half a download's CPU); 0 = always through the cache"
    )
    max_unverified_bytes: int = _f(
        24 * MiB, "downloaded bytes waiting for their hash check before requests pause "
        "(bounds memory when the disk or the hashing threads fall behind)", lo=1 * MiB
    )
    resume_save_interval: float = _f(
        30.0, "seconds between saves of resume data while downloading", lo=1.0
    )
    # -- discovery
    dht: bool = _f(True, "get/seed join the Mainline DHT (BEP 5) to find and announce peers "
                   "without a tracker; never for private torrents (--no-dht)")
    dht_bootstrap: str = _f(
        "router.bittorrent.com:6881,dht.transmissionbt.com:6881,router.utorrent.com:6881",
        "DHT nodes to join through, host:port,... (tests and the lab pass local nodes)")
    pex: bool = _f(True, "exchange peer lists with connected peers (BEP 11 ut_pex), about "
                   "once a minute; never for private torrents (--no-pex)")
    lsd: bool = _f(True, "get/seed find peers on the local network by multicast (BEP 14 "
                   "local service discovery, 239.192.152.143:6771); never for private "
                   "torrents (--no-lsd)")
    # -- identity
    peer_id_prefix: str = _f("-SH0100-", "start of our 20-byte peer id (Azureus style)")
    user_agent: str = _f(USER_AGENT, "User-Agent for trackers and web seeds")
    # -- web seeds
    web_seed_request_size: int = _f(
        4 * MiB, "bytes per HTTP range request to a web seed", lo=16 * KiB
    )
    web_seed_grace: float = _f(
        0.5, "seconds a download waits for peers before its web seeds start (peers first: "
        "with leechers to trade with, a web seed only fills what the swarm lacks)",
        lo=0.0,
    )
    web_seed_batch_bytes: int = _f(
        16 * MiB, "bytes of adjacent pieces a web seed fetches in one go", lo=16 * 1024
    )

    def __post_init__(self) -> None:
        for f, kind in _fields():
            value = getattr(self, f.name)
            if kind is float and type(value) is int:
                value = float(value)
                object.__setattr__(self, f.name, value)
            if type(value) is not kind:
                raise ConfigError(f"setting {f.name} must be {kind.__name__}, got {value!r}")
            lo, hi = f.metadata["lo"], f.metadata["hi"]
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                span = f">= {lo}" if hi is None else f"between {lo} and {hi}"
                raise ConfigError(f"setting {f.name} must be {span}, got {value!r}")
        if self.min_request_queue > self.max_request_queue:
            raise ConfigError(
                f"min_request_queue ({self.min_request_queue}) exceeds max_request_queue "
                f"({self.max_request_queue})"
            )
        if self.keepalive_interval >= self.peer_timeout:
            raise ConfigError(
                f"keepalive_interval ({self.keepalive_interval}) must be below peer_timeout "
                f"({self.peer_timeout}), or idle peers time out: lower it too"
            )
        prefix = self.peer_id_prefix.encode("utf-8", "replace")
        if not self.peer_id_prefix.isascii() or len(prefix) > 12:
            raise ConfigError("peer_id_prefix must be at most 12 ASCII characters")
        _parse_interfaces(self.listen_interfaces)
        if self.encryption not in ENCRYPTION_MODES:
            raise ConfigError(f"setting encryption must be one of {', '.join(ENCRYPTION_MODES)}, "
                              f"got {self.encryption!r}")

    # -- deriving settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated; names are checked)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], base: Settings | None = None) -> Settings:
        """Settings from a config file or CLI flags: names may use ``-`` for ``_``; string
        values are converted to the field's type (``"4MiB"``, ``"yes"``, ``"2.5"``)."""
        kinds = dict((f.name, kind) for f, kind in _fields())
        changes: dict[str, Any] = {}
        for key, value in mapping.items():
            name = key.strip().lower().replace("-", "_")
            _check_names({name: value})
            changes[name] = _coerce(name, kinds[name], value)
        return (base or cls()).replace(**changes)

    @classmethod
    def from_env(
        cls,
        prefix: str = "SWARMHUB_",
        environ: Mapping[str, str] | None = None,
        base: Settings | None = None,
    ) -> Settings:
        """Settings from ``{prefix}{NAME}`` variables (``SWARMHUB_MAX_CONNECTIONS=100``).

        A variable under the prefix that names no setting is an error suggesting the
        closest name (a misspelt limit silently ignored is worse than a refusal); the
        switches other parts of swarmhub read (:data:`OTHER_ENV`) are left alone.
        """
        env = os.environ if environ is None else environ
        names = [f.name for f, _ in _fields()]
        picked: dict[str, str] = {}
        for key, value in env.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].lower()
            if name in names:
                picked[name] = value
            elif name.upper() not in OTHER_ENV:
                # Compare the names without the shared prefix, which would make every
                # name look close to every other.
                close = difflib.get_close_matches(
                    name.upper(), [n.upper() for n in names], n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
                raise ConfigError(f"unknown environment variable {key}{hint}")
        return cls.from_mapping(picked, base)

    # -- presets

    @classmethod
    def low_memory(cls, **changes: Any) -> Settings:
        """For small machines: fewer peers, shorter queues, a small read cache."""
        return cls(
            max_connections=50,
            max_connections_per_torrent=20,
            max_request_queue=64,
            max_outstanding_incoming_requests=100,
            max_incoming_request_bytes=2 * MiB,
            send_buffer_bytes=1 * MiB,
            disk_threads=1,
            hash_threads=1,
            read_cache_bytes=4 * MiB,
            web_seed_request_size=1 * MiB,
        ).replace(**changes)

    @classmethod
    def seedbox(cls, **changes: Any) -> Settings:
        """For a well-connected server that mostly uploads: many peers, deep queues."""
        return cls(
            max_connections=2000,
            max_connections_per_torrent=400,
            unchoke_slots=16,
            request_queue_time=3.0,
            max_request_queue=1500,
            max_outstanding_incoming_requests=2000,
            max_incoming_request_bytes=32 * MiB,
            disk_threads=8,
            read_cache_bytes=256 * MiB,
            web_seed_request_size=16 * MiB,
        ).replace(**changes)

    # -- documentation

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, doc)`` for every setting, in declaration order."""
        return [(f.name, f.default, f.metadata["doc"]) for f, _ in _fields()]

    def listen_addresses(self) -> list[tuple[str, int]]:
        """``listen_interfaces`` parsed into ``(host, port)`` pairs."""
        return _parse_interfaces(self.listen_interfaces)


_FIELDS: list[tuple[dataclasses.Field[Any], type]] = []
#: the annotations every field has: read by name, where ``typing.get_type_hints`` compiles
#: each of the 47 strings (~1 % of ``get``'s instructions before its first peer)
_KINDS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _fields() -> list[tuple[dataclasses.Field[Any], type]]:
    """Fields with their resolved types (annotations are strings under __future__)."""
    if not _FIELDS:
        notes = Settings.__annotations__
        hints = {n: _KINDS[t] for n, t in notes.items() if isinstance(t, str) and t in _KINDS}
        if len(hints) < len(notes):  # another kind of annotation: resolve them all
            hints = typing.get_type_hints(Settings)
        _FIELDS.extend((f, hints[f.name]) for f in dataclasses.fields(Settings))
    return _FIELDS


def _check_names(changes: Mapping[str, Any]) -> None:
    names = [f.name for f, _ in _fields()]
    for key in changes:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown setting {key!r}{hint}")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SCALE = {"": 1, "k": KiB, "m": MiB, "g": 1024 * MiB, "t": 1024 * 1024 * MiB}


def _coerce(name: str, kind: type, value: Any) -> Any:
    """Turn a string from the environment or a CLI flag into the field's type."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"setting {name} expects yes/no, true/false, on/off or 1/0: {value!r}")
    if kind is int:
        m = _SIZE_RE.match(text)
        if m is None:
            raise ConfigError(
                f"setting {name} expects a whole number (suffixes K, M, G allowed): {value!r}"
            )
        number, unit, binary, byte = m.groups()
        # K/KiB/Ki = 1024 as in aria2 and libtorrent; KB/MB = powers of 1000
        scale = _SCALE[unit.lower()]
        if unit and byte and not binary:
            scale = 1000 ** "kmgt".index(unit.lower()) * 1000
        result = float(number) * scale
        if result != int(result):
            raise ConfigError(f"setting {name} expects a whole number: {value!r}")
        return int(result)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"setting {name} expects a number: {value!r}") from None
    return value


def _parse_interfaces(text: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for part in text.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"listen_interfaces entry {part!r} is not host:port (e.g. 0.0.0.0:6881, [::]:6881)"
            )
        out.append((host, int(port)))
    return out
