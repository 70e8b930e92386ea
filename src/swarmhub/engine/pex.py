"""BEP 11 peer exchange (ut_pex): what we tell one peer and what we take from one.

Pure and clock-driven (``now`` is passed in), so tests step time by hand. The driver keeps
one :class:`PexPeer` per connected peer that advertised ``ut_pex``; on each tick it asks
:meth:`PexPeer.poll` for a message, given the listen addresses of our connected peers.
Private torrents (BEP 27) never get here: the driver neither advertises ut_pex nor reads it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Final, cast

from swarmhub.engine.peerstate import PeerState
from swarmhub.wire.extensions import PexMessage

__all__ = ["FLAG_REACHABLE", "FLAG_SEED", "MAX_ADDED", "MAX_DROPPED", "PexPeer",
           "listen_addrs"]

Addr = tuple[str, int]

MAX_ADDED = 50  # per message, as libtorrent (BEP 11 asks for at most 50)
MAX_DROPPED = 50
FLAG_SEED = 0x02  # BEP 11: the peer is a seed (upload only): a seed need not dial it
FLAG_REACHABLE = 0x10  # BEP 11: the peer accepts incoming connections (we dialled it)
FIRST_DELAY = 2.0  # seconds from the peer's extension handshake to our first message
INTERVAL = 60.0  # then about once a minute
MIN_RECEIVE_GAP = 20.0  # messages from one peer closer than this are ignored (BEP 11: 1/min)


def _dialable(host: str) -> bool:
    """Whether ``host`` (an IP address as text) may be dialled. An invalid address raises
    ValueError."""
    ip = ipaddress.ip_address(host)
    return not (ip.is_unspecified or ip.is_multicast)


#: :func:`_dialable`'s answers by host: parsing was most of :meth:`PexPeer.received`, and
#: a swarm keeps telling us about the same peers (``lab simulate`` at N=1,000: 4% of the
#: run). A dict read compiled, not an ``lru_cache`` call (~500 instructions an address);
#: emptied when full, so a long session holds at most this many (~6 MB). Above the hosts
#: of the largest swarm ``lab simulate`` runs (10,000, one process for all): at 4,096 the
#: cache was emptied every ~4,000 new hosts there and most addresses parsed again.
_DIALABLE: Final[dict[str, bool]] = {}
_DIALABLE_MAX: Final = 65536


def listen_addrs(peers: Iterable[PeerState]) -> dict[Addr, int]:
    """What :meth:`PexPeer.poll` tells about our connected peers: each one's listen
    address with its BEP 11 flags (reachable when we dialled it; seed when it holds every
    piece, as libtorrent flags them: a recipient that is a seed leaves it undialled).
    BEP 11's added peers are where a peer accepts connections, never the ephemeral port
    one dialled us from: a peer whose listen address we do not know is left out.

    Addresses pass through here and :class:`PexPeer` typed ``object``: compiled (mypyc),
    a ``tuple[str, int]`` is unboxed and boxed anew, another tuple wherever it is stored,
    and each one the books hold should be the peer's own."""
    out: dict[object, int] = {}
    for ps in peers:
        addr: object = ps.listen_addr
        if addr is not None and not ps.closed:
            flags = FLAG_REACHABLE if ps.outgoing else 0
            out[addr] = flags | FLAG_SEED if ps.upload_only or ps.is_seed else flags
    return cast("dict[Addr, int]", out)


class PexPeer:
    """PEX with one peer: the addresses we have told it about, and when it last told us.

    Slotted, and what we told it is a tuple rebuilt on each message (about once a
    minute): a connection keeps one of these for its life, and ``lab simulate`` keeps
    one per connection end (500,000 at N=10,000), where a dict of 50 addresses cost
    ~2.5 KB against the tuple's ~0.45 KB (PEX was a third of the run's memory)."""

    __slots__ = ("due", "interval", "last_received", "sent")

    def __init__(self, now: float, *, first_delay: float = FIRST_DELAY,
                 interval: float = INTERVAL) -> None:
        self.interval = interval
        self.due = now + first_delay
        self.sent: tuple[Addr, ...] = ()  # in the order we told it
        self.last_received: float | None = None

    def poll(self, now: float, current: Mapping[Addr, int], *,
             exclude: Collection[Addr] = ()) -> PexMessage | None:
        """The message to send now, or None (not due, or nothing changed).

        ``current`` maps our connected peers' listen addresses to their BEP 11 flags;
        ``exclude`` is never advertised (the recipient itself). At most
        :data:`MAX_ADDED` added and :data:`MAX_DROPPED` dropped entries per message; the
        rest go out in later messages.
        """
        if now < self.due:
            return None
        self.due = now + self.interval
        sent: tuple[object, ...] = self.sent  # object: see listen_addrs
        # A dict walked natively (items, no look-up per address), the flags taken as
        # the addresses are, the first MAX_ADDED: compiled, the comprehensions over a
        # Mapping were generic iteration and look-ups (~1,100 instructions an address).
        flags = cast("dict[object, int]", current if isinstance(current, dict)
                     else dict(current))
        skip = cast("Collection[object]", exclude)
        added: list[object] = []
        added_flags: list[int] = []
        told = set(sent) if sent else None
        for a, flag in flags.items():
            if (told is None or a not in told) and a not in skip:
                added.append(a)
                added_flags.append(flag & 0xFF)
                if len(added) == MAX_ADDED:
                    break
        dropped: list[object] = []
        for a in sent:
            if a not in flags or a in skip:
                dropped.append(a)
                if len(dropped) == MAX_DROPPED:
                    break
        if not added and not dropped:
            return None
        if dropped:
            gone = set(dropped)
            sent = tuple([a for a in sent if a not in gone])
        self.sent = cast("tuple[Addr, ...]", sent + tuple(added))
        return PexMessage(added=cast("list[Addr]", added), dropped=cast("list[Addr]", dropped),
                          added_flags=added_flags)

    def received(self, now: float, msg: PexMessage, *, own: Collection[Addr] = (),
                 limit: int = MAX_ADDED, seeds: list[Addr] | None = None) -> list[Addr]:
        """Addresses worth dialling from ``msg``: at most ``limit``, none of ``own``, no
        port 0 or unroutable address; [] when the peer sends more often than it may.
        ``seeds`` (when given) gets those of them flagged as seeds (:data:`FLAG_SEED`)."""
        if self.last_received is not None and now - self.last_received < MIN_RECEIVE_GAP:
            return []
        self.last_received = now
        # Each address object is kept, typed ``object`` (see listen_addrs): unpacked
        # into a new ``(host, port)`` it was two tuples and two ints made per address,
        # compiled (the membership test and the append each boxed one).
        out: list[object] = []
        mine = cast("Collection[object]", own)
        dialable = _DIALABLE
        flags = msg.added_flags if seeds is not None else None
        for i, addr in enumerate(cast("list[object]", msg.added)):
            if len(out) >= limit:
                break
            host, port = cast("Addr", addr)
            if not 0 < port < 65536 or addr in mine:
                continue
            ok = dialable.get(host)
            if ok is None:
                ok = _dialable(host)
                if len(dialable) >= _DIALABLE_MAX:
                    dialable.clear()
                dialable[host] = ok
            if not ok:
                continue
            out.append(addr)
            if flags and i < len(flags) and flags[i] & FLAG_SEED:
                cast("list[object]", seeds).append(addr)
        return cast("list[Addr]", out)
