"""The messages of one batch of core actions, written once per peer.

The core emits a :class:`~swarmhub.engine.actions.Send` or a ``Broadcast`` per decision:
a web seed's run of 16 pieces made 16 Haves, each its own socket write and, on loopback,
the receiver woken each time (which then took the CPU from us). :func:`other_actions`
gathers each peer's messages, in order, and writes them in one go before any other
action (a Close must follow the messages queued before it) and at the end of the batch.
A peer whose messages all came from Broadcasts (the Haves of pieces we just got) is told
with :meth:`~swarmhub.engine.peer.Peer.announce`: they may wait a little for other bytes
to that peer (each alone woke the receiver).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, cast

from swarmhub.engine.actions import Action, Broadcast, Send

if TYPE_CHECKING:
    from swarmhub.engine.peer import Peer
    from swarmhub.wire.messages import Message

__all__ = ["other_actions"]


def other_actions(actions: Iterable[Action]) -> Iterator[Action]:
    """The actions other than Send and Broadcast, in order; the messages those carried are
    written (one write per peer) before each action yielded, and at the end."""
    out: dict[Peer, list[Message]] = {}
    direct: set[Peer] = set()  # peers with a Send in ``out``: written at once
    for action in actions:
        kind = type(action)
        if kind is Send:
            send = cast(Send, action)
            peer = cast("Peer", send.peer)
            out.setdefault(peer, []).extend(send.messages)
            direct.add(peer)
        elif kind is Broadcast:
            many = cast(Broadcast, action)
            # the driver's handles are Peers; no cast() per peer (a call each: this runs
            # for every piece we get x every peer told)
            peers: tuple[Peer, ...] = many.peers  # type: ignore[assignment]
            for peer in peers:
                out.setdefault(peer, []).extend(many.messages)
        else:
            if out:
                _write(out, direct)
                out, direct = {}, set()
            yield action
    if out:
        _write(out, direct)


def _write(out: dict[Peer, list[Message]], direct: set[Peer]) -> None:
    for peer, msgs in out.items():
        if peer in direct:
            peer.send_many(tuple(msgs))
        else:
            peer.announce(tuple(msgs))
