"""The messages of one batch of core actions, written once per peer.

The core emits a :class:`~swarmhub.engine.actions.Send` or a ``Broadcast`` per decision:
a web seed's run of 16 pieces made 16 Haves, each its own socket write and, on loopback,
the receiver woken each time (which then took the CPU from us). :func:`other_actions`
gathers each peer's messages, in order, and writes them in one go before any other
action (a Close must follow the messages queued before it) and at the end of the batch.
A peer with no Send in the batch so far is told a Broadcast (the Have of a piece we just
got) at once with :meth:`~swarmhub.engine.peer.Peer.announce`, which holds it for the next
bytes to that peer (each alone woke the receiver), so it still goes before anything
queued for that peer later; the Broadcast's bytes are packed once for all its peers.

Why at once, and packed once: a piece is told to every peer lacking it (N=32, 32 KiB
pieces: ~22 peers x 1,024 pieces per peer and 32 MiB); gathering those in a dict per
batch and encoding them per peer was ~8 % of a lab peer's profile.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from swarmhub.engine.actions import Action, Broadcast, Send

if TYPE_CHECKING:
    from swarmhub.engine.peer import Peer
    from swarmhub.engine.peerstate import PeerState
    from swarmhub.wire.messages import Message

__all__ = ["other_actions"]


def other_actions(actions: Iterable[Action],
                  states: Mapping[Hashable, PeerState] | None = None) -> Iterator[Action]:
    """The actions other than Send and Broadcast, in order; the messages those carried are
    written (one write per peer) before each action yielded, and at the end. ``states``
    (the core's peers) tells which peers we choke: their announcements may wait longer."""
    out: dict[Peer, list[Message]] = {}  # peers with a Send in this batch: written at once
    for action in actions:
        kind = type(action)
        if kind is Send:
            # annotations, not cast(): a call each, per action (and Broadcast below)
            send: Send = action  # type: ignore[assignment]
            peer: Peer = send.peer  # type: ignore[assignment]
            out.setdefault(peer, []).extend(send.messages)
        elif kind is Broadcast:
            many: Broadcast = action  # type: ignore[assignment]
            msgs = many.messages
            data: bytes | None = None  # their bytes, packed by the first peer told
            # the driver's handles are Peers; no cast() per peer (a call each: this runs
            # for every piece we get x every peer told)
            peers: tuple[Peer, ...] = many.peers  # type: ignore[assignment]
            for peer in peers:
                queued = out.get(peer)
                if queued is None:
                    ps = states.get(peer) if states is not None else None
                    data = peer.announce(msgs, data, ps is not None and ps.am_choking)
                else:
                    queued.extend(msgs)  # after what we queued for it: in order
        else:
            if out:
                _write(out)
                out = {}
            yield action
    if out:
        _write(out)


def _write(out: dict[Peer, list[Message]]) -> None:
    for peer, msgs in out.items():
        peer.send_many(tuple(msgs))
