"""One write per peer per batch of core actions, in order, flushed before other actions."""

from __future__ import annotations

from typing import Any

from swarmhub.engine.actions import Action, Broadcast, Close, Completed, Send
from swarmhub.engine.outbox import other_actions
from swarmhub.wire import messages as m


class FakePeer:
    def __init__(self, name: str, log: list[Any]) -> None:
        self.name, self.log = name, log

    def send_many(self, msgs: tuple[m.Message, ...]) -> None:
        self.log.append((self.name, msgs))

    def announce(self, msgs: tuple[m.Message, ...], data: bytes | None = None,
                 choked: bool = False) -> bytes:
        """Like Peer.announce: returns the bytes for the next peer (packed by the first)."""
        self.log.append((self.name, "announce", msgs, data) + (("choked",) if choked else ()))
        return data if data is not None else b"packed by " + self.name.encode()


def test_each_peers_messages_go_in_one_write_before_the_next_other_action() -> None:
    log: list[Any] = []
    a, b = FakePeer("a", log), FakePeer("b", log)
    actions: list[Action] = [
        Send(a, (m.Interested(),)),
        Broadcast((a, b), (m.Have(1),)),
        Broadcast((a, b), (m.Have(2),)),
        Close(a, "bye"),
        Send(b, (m.Have(3),)),
        Completed(),
    ]
    for action in other_actions(actions):
        log.append(type(action).__name__)
    assert log == [
        # b has no Send in the batch: told at once (held by b for its next write)
        ("b", "announce", (m.Have(1),), None),
        ("b", "announce", (m.Have(2),), None),
        # a has: its Broadcasts queue after its Send, in order
        ("a", (m.Interested(), m.Have(1), m.Have(2))),
        "Close",
        ("b", (m.Have(3),)),
        "Completed",
    ]


def test_messages_after_the_last_other_action_are_written_at_the_end() -> None:
    log: list[Any] = []
    a = FakePeer("a", log)
    assert list(other_actions([Send(a, (m.Have(0),)), Send(a, (m.Have(5),))])) == []
    assert log == [("a", (m.Have(0), m.Have(5)))]


def test_a_broadcast_is_packed_once_for_all_its_peers() -> None:
    log: list[Any] = []
    a, b, c = FakePeer("a", log), FakePeer("b", log), FakePeer("c", log)
    assert list(other_actions([Broadcast((a, b, c), (m.Have(7),))])) == []
    # the first peer packs the bytes, the others get them handed over
    assert log == [("a", "announce", (m.Have(7),), None),
                   ("b", "announce", (m.Have(7),), b"packed by a"),
                   ("c", "announce", (m.Have(7),), b"packed by a")]


class State:
    def __init__(self, am_choking: bool) -> None:
        self.am_choking = am_choking


def test_peers_we_choke_are_told_they_may_wait_longer() -> None:
    log: list[Any] = []
    a, b, c = FakePeer("a", log), FakePeer("b", log), FakePeer("c", log)
    states: dict[Any, Any] = {a: State(am_choking=True), b: State(am_choking=False)}
    assert list(other_actions([Broadcast((a, b, c), (m.Have(3),))], states)) == []
    assert log == [("a", "announce", (m.Have(3),), None, "choked"),
                   ("b", "announce", (m.Have(3),), b"packed by a"),
                   ("c", "announce", (m.Have(3),), b"packed by a")]  # gone: no state
