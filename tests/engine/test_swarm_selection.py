"""The swarm core with piece priorities: finishing on the chosen pieces, wanting more
later, and a super-seed that keeps offering to a leecher that declines its offers."""

from __future__ import annotations

import random
from collections.abc import Hashable

from swarmhub.engine.actions import Action, Broadcast, Close, Completed, Send
from swarmhub.engine.swarm import BLOCK_SIZE, Swarm
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

PIECE = 2 * BLOCK_SIZE
QUIET = Settings(super_seeding=False)


def make_swarm(pieces: int, have: str = "", settings: Settings = QUIET) -> Swarm:
    bits = bytes(c == "*" for c in have.ljust(pieces))
    return Swarm(pieces, PIECE, pieces * PIECE, settings, rng=random.Random(3), now=0.0,
                 have=bits)


def join(s: Swarm, name: str, *, has_all: bool = False) -> str:
    s.connected(name, ("10.0.0.1", 6881 + len(name)), name.encode().ljust(20, b"-"),
                fast=True, now=0.0)
    if has_all:
        s.message(name, m.HaveAll(), 0.0)
    return name


def sent(actions: list[Action], peer: Hashable, cls: type[m.Message]) -> list[m.Message]:
    return [msg for a in actions
            if (isinstance(a, Send) and a.peer == peer)
            or (isinstance(a, Broadcast) and peer in a.peers)
            for msg in a.messages if isinstance(msg, cls)]


def indices(actions: list[Action], peer: Hashable, cls: type[m.Have | m.Request]) -> set[int]:
    return {x.index for x in sent(actions, peer, cls) if isinstance(x, m.Have | m.Request)}


def fetch_all(s: Swarm, peer: str, acts: list[Action], now: float) -> list[Action]:
    """Deliver and pass every requested piece; the actions that followed."""
    out: list[Action] = []
    reqs = [r for r in sent(acts, peer, m.Request) if isinstance(r, m.Request)]
    while reqs:
        for r in reqs:
            s.block(peer, r.index, r.begin, r.length, now)
        done = {r.index for r in reqs}
        more = s.take()
        for i in sorted(done):
            s.piece_verified(i, True, now)
        more += s.take()
        out += more
        reqs = [r for r in sent(more, peer, m.Request) if isinstance(r, m.Request)]
    return out


def test_a_selective_download_finishes_on_its_pieces_and_stays_connected() -> None:
    s = make_swarm(4)
    s.set_piece_priorities([1, 1, 0, 0], 0.0)
    join(s, "a", has_all=True)
    s.message("a", m.Unchoke(), 0.0)
    acts = s.take()
    assert indices(acts, "a", m.Request) <= {0, 1}
    after = fetch_all(s, "a", acts, 1.0)
    assert s.have == bytearray([1, 1, 0, 0])
    assert s.finished and not s.complete
    assert any(isinstance(a, Completed) for a in after)
    assert sent(after, "a", m.NotInterested)
    assert not any(isinstance(a, Close) for a in after)  # we are no seed: keep the peer

    # wanting more: interested again, and only the newly chosen piece is fetched (past two
    # round trips, 1 s each here, after our NotInterested: "a" did not choke us)
    s.set_piece_priorities([1, 1, 0, 1], 3.5)
    acts = s.take()
    assert not s.finished
    assert sent(acts, "a", m.Interested)
    assert indices(acts, "a", m.Request) == {3}
    after = fetch_all(s, "a", acts, 4.0)
    assert s.have == bytearray([1, 1, 0, 1]) and any(isinstance(a, Completed) for a in after)


def test_a_super_seed_offers_other_pieces_to_a_leecher_that_declines() -> None:
    s = make_swarm(8, "*" * 8, Settings(super_seeding=True))
    join(s, "a")
    first = indices(s.take(), "a", m.Have)
    assert len(first) == 3
    s.tick(0.01)  # its Interested may still be on the way (one RTT): the offers stand
    assert not sent(s.take(), "a", m.Have)
    s.tick(2.5)  # "a" never said Interested: it does not want those
    more = indices(s.take(), "a", m.Have)
    assert len(more) == 3 and not more & first
    s.message("a", m.Interested(), 3.0)
    s.take()
    s.tick(6.0)  # interested now: its offers stand
    assert not sent(s.take(), "a", m.Have)
