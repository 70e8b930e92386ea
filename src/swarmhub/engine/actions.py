"""What the swarm core asks its driver to do: small frozen dataclasses, one per action.

Like h11's events, these are plain records ("don't subclass these"): the core
(:class:`~swarmhub.engine.swarm.Swarm`) appends them to its outbox while it handles an
event, and the driver (the asyncio :class:`~swarmhub.engine.torrent.Torrent`, or the lab's
virtual-time simulator) drains the outbox and carries each one out with ``match``.
Peers are the opaque handles the driver passed in; nothing here touches a socket.

I/O actions: :class:`Send`, :class:`Broadcast`, :class:`Close`, :class:`Connect`,
:class:`Serve` (the peer's request queue has work: read pieces and write them),
:class:`Verify` (hash and write a piece the driver assembled), :class:`Announce`.
Notices (the driver logs them, wakes waiters): :class:`Banned`, :class:`PieceFailed`,
:class:`Completed`.

The actions the core makes per message or per block (:class:`Send`, :class:`Broadcast`,
:class:`Serve`, :class:`Verify`, :class:`Close`, :class:`Connect`) spell out their
``__init__`` (``object.__setattr__``, the frozen-dataclass idiom): the dataclass decorator
keeps an ``__init__`` the class defines, and this module is compiled with mypyc (see
:mod:`swarmhub._compiled`), where the generated one would stay interpreted Python (~3x the
cost of a compiled one; millions of actions in a ``lab simulate`` run). Equality, hash,
repr, ``__match_args__`` and frozenness are the dataclass's, as before.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from swarmhub._records import value_methods
from swarmhub.wire.messages import Message

__all__ = [
    "Action",
    "Announce",
    "Banned",
    "Broadcast",
    "Close",
    "Completed",
    "Connect",
    "PieceFailed",
    "Send",
    "Serve",
    "Verify",
]


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Send:
    """Encode ``messages`` with the peer's wire core and write them in one go."""

    peer: Hashable
    messages: tuple[Message, ...]

    def __init__(self, peer: Hashable, messages: tuple[Message, ...]) -> None:
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "messages", messages)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Broadcast:
    """:class:`Send` the same ``messages`` to each of ``peers`` (a Have to everyone: one
    action per piece, not one per peer, which matters with a thousand simulated peers)."""

    peers: tuple[Hashable, ...]
    messages: tuple[Message, ...]

    def __init__(self, peers: tuple[Hashable, ...], messages: tuple[Message, ...]) -> None:
        object.__setattr__(self, "peers", peers)
        object.__setattr__(self, "messages", messages)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Close:
    """Close the connection; the driver then reports ``disconnected``."""

    peer: Hashable
    reason: str

    def __init__(self, peer: Hashable, reason: str) -> None:
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Connect:
    """Dial ``addr``; report ``connect_done(addr)`` whatever the outcome."""

    addr: tuple[str, int]

    def __init__(self, addr: tuple[str, int]) -> None:
        object.__setattr__(self, "addr", addr)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Serve:
    """The peer's queue of accepted requests (``swarm.peer(p).incoming``) has work:
    read the pieces, send them, and report ``blocks_sent``."""

    peer: Hashable

    def __init__(self, peer: Hashable) -> None:
        object.__setattr__(self, "peer", peer)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Verify:
    """Every block of piece ``index`` is in: hash it, write it if good, and report
    ``piece_verified``. ``want_digests``: the piece failed before, so report the SHA-1 of
    each 16 KiB block too (they tell which sender was lying)."""

    index: int
    want_digests: bool

    def __init__(self, index: int, want_digests: bool) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "want_digests", want_digests)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Announce:
    """Announce to the trackers (``event``: started, completed or None); report
    ``tracker_response`` or ``tracker_failed``."""

    event: str | None


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Banned:
    """Notice: peers with this ban key are refused from now on."""

    key: Hashable
    reason: str


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class PieceFailed:
    """Notice: piece ``index`` failed its hash check; ``sources`` sent its blocks."""

    index: int
    sources: int


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Completed:
    """Notice: we have every piece now (save resume data, wake waiters)."""


# eq, hash and repr from closures (swarmhub._records: no exec per method at import); a
# call, not a decorator, which would make mypyc build them as plain Python classes
for _cls in (
        Send, Broadcast, Close, Connect, Serve, Verify, Announce, Banned, PieceFailed,
        Completed,
):
    value_methods(_cls)


Action = (
    Send | Broadcast | Close | Connect | Serve | Verify | Announce | Banned | PieceFailed
    | Completed
)
