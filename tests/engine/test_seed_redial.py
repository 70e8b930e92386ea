"""A seed does not dial peers it knows to be seeds (issue 9: finished clients redialled
the source at each tracker answer or PEX message, each connection closed after its
handshakes as "both sides are seeds"; libtorrent's peer list skips known seeds once
finished). The sans-IO core with a stepped clock; peers are plain strings."""

from __future__ import annotations

import random

from swarmhub.engine.actions import Close, Connect
from swarmhub.engine.pex import FLAG_REACHABLE, FLAG_SEED, PexPeer, listen_addrs
from swarmhub.engine.schedule import Dialer
from swarmhub.engine.swarm import BLOCK_SIZE, Swarm
from swarmhub.settings import Settings
from swarmhub.wire import messages as m
from swarmhub.wire.extensions import PexMessage, decode_pex, encode_pex

SRC = ("10.0.0.1", 6881)
LEECH = ("10.0.0.2", 6881)


def _swarm(pieces: int = 2) -> Swarm:
    return Swarm(pieces, BLOCK_SIZE, pieces * BLOCK_SIZE, Settings(super_seeding=False),
                 rng=random.Random(7), now=0.0, trackers=False, peers=())


def _download_from_source(s: Swarm) -> None:
    """Dial the source, take every piece from it: we complete and close it as a seed."""
    s.add_peers([SRC], 0.0)
    assert Connect(SRC) in s.take()
    s.connect_done(SRC)
    s.connected("src", SRC, b"s" * 20, fast=True, now=0.0, outgoing=True)
    s.message("src", m.HaveAll(), 0.0)
    s.message("src", m.Unchoke(), 0.0)
    reqs = [msg for a in s.take() if getattr(a, "peer", None) == "src"
            for msg in getattr(a, "messages", ()) if isinstance(msg, m.Request)]
    assert len(reqs) == s.num_pieces
    for r in reqs:
        s.block("src", r.index, r.begin, r.length, 1.0)
    s.take()
    for i in range(s.num_pieces):
        s.piece_verified(i, True, 1.5)
    assert s.complete
    assert Close("src", "both sides are seeds") in s.take()
    s.disconnected("src", 1.6)


def test_a_finished_peer_never_redials_the_seed_it_downloaded_from() -> None:
    s = _swarm()
    _download_from_source(s)
    for now in (2.0, 7.0, 12.0):  # tracker answers, PEX messages: the source again
        s.tracker_response(now, interval=5, peers=[SRC, LEECH], seeds=1)
        s.add_peers([SRC], now)
        s.tick(now)
        acts = s.take()
        assert Connect(SRC) not in acts
        if now == 2.0:
            assert Connect(LEECH) in acts  # a leecher may still want our pieces


def test_a_downloading_peer_redials_a_seed_that_left() -> None:
    """Only a seed skips seeds: a leecher still wants what the seed holds."""
    s = _swarm()
    s.connected("src", SRC, b"s" * 20, fast=True, now=0.0, outgoing=True)
    s.message("src", m.HaveAll(), 0.0)
    s.take()
    s.disconnected("src", 1.0)
    assert SRC in s.dialer.seeds
    s.add_peers([SRC], 2.0)
    assert Connect(SRC) in s.take()


def test_a_seed_flagged_by_pex_is_not_dialled_once_we_are_a_seed() -> None:
    """BEP 11 flag 0x02: we tell a peer that holds every piece as a seed, and a seed that
    hears of one leaves it undialled (before any connection to it)."""
    teller = _swarm()
    teller.connected("a", SRC, b"a" * 20, fast=True, now=0.0, outgoing=True)
    teller.message("a", m.HaveAll(), 0.0)
    teller.connected("b", LEECH, b"b" * 20, fast=True, now=0.0, outgoing=True)
    told = listen_addrs(teller.peers.values())
    assert told == {SRC: FLAG_REACHABLE | FLAG_SEED, LEECH: FLAG_REACHABLE}
    msg = PexPeer(0.0, first_delay=0.0).poll(0.0, told)
    assert msg is not None
    got = decode_pex(encode_pex(msg))  # the flags survive the wire

    other = ("10.0.0.3", 6881)
    s = _swarm()
    _download_from_source(s)  # we are a seed (SRC now known; forget it to test PEX)
    s.dialer.seeds.clear()
    seeds: list[tuple[str, int]] = []
    addrs = PexPeer(0.0).received(2.0, got, seeds=seeds)
    assert set(addrs) == {SRC, LEECH} and seeds == [SRC]
    s.add_peers(addrs, 2.0, seeds)
    acts = s.take()
    assert Connect(LEECH) in acts and Connect(SRC) not in acts
    # a message without flags says nothing about seeds
    seeds.clear()
    PexPeer(0.0).received(3.0, PexMessage(added=[other]), seeds=seeds)
    assert seeds == []


def test_the_seed_book_is_bounded() -> None:
    d = Dialer([], max_seeds=2)
    for i in range(3):
        d.seed((f"10.0.1.{i}", 6881))
    assert list(d.seeds) == [("10.0.1.1", 6881), ("10.0.1.2", 6881)]
    d.add([("10.0.1.0", 6881), ("10.0.1.1", 6881)])
    assert d.next(0.0, set(), room=5, complete=True) == [("10.0.1.0", 6881)]
    assert not d.candidates  # the known seed left the queue undialled


def test_a_seed_that_says_upload_only_is_not_redialled_once_we_finish() -> None:
    """A seed's BEP 21 ``upload_only`` (libtorrent's seeds send it) tells us it is one
    even before we see its pieces: we close it when we finish, and no PEX message or
    tracker answer has us dial it again."""
    s = _swarm()
    s.add_peers([SRC], 0.0)
    s.take()
    s.connect_done(SRC)
    s.connected("src", SRC, b"s" * 20, fast=True, now=0.0, outgoing=True)
    s.extension_handshake("src", reqq=250, upload_only=True)
    s.message("src", m.HaveNone(), 0.0)
    s.connected("b", LEECH, b"b" * 20, fast=True, now=0.0, outgoing=True)
    s.message("b", m.HaveAll(), 0.0)
    s.message("b", m.Unchoke(), 0.0)
    reqs = [msg for a in s.take() if getattr(a, "peer", None) == "b"
            for msg in getattr(a, "messages", ()) if isinstance(msg, m.Request)]
    for r in reqs:
        s.block("b", r.index, r.begin, r.length, 1.0)
    s.take()
    for i in range(s.num_pieces):
        s.piece_verified(i, True, 1.5)
    acts = s.take()
    assert Close("src", "both sides are seeds") in acts
    s.disconnected("src", 1.6)
    for now in (2.0, 7.0):
        s.add_peers([SRC], now)
        s.tick(now)
        assert Connect(SRC) not in s.take()


def test_a_seed_closes_a_peer_that_says_upload_only() -> None:
    s = Swarm(2, BLOCK_SIZE, 2 * BLOCK_SIZE, Settings(super_seeding=False),
              rng=random.Random(7), now=0.0, have=b"\x01\x01", trackers=False, peers=())
    s.connected("x", ("10.0.0.9", 50000), b"x" * 20, fast=True, now=0.0)
    s.take()
    s.extension_handshake("x", listen_port=6881, upload_only=True)
    assert Close("x", "both sides are seeds") in s.take()
    s.disconnected("x", 0.1)
    s.add_peers([("10.0.0.9", 6881)], 1.0)
    assert Connect(("10.0.0.9", 6881)) not in s.take()


def test_a_seed_says_upload_only_but_a_super_seed_does_not() -> None:
    """A libtorrent leecher drops an upload-only peer that shows it nothing it wants: a
    super-seed, which starts with HaveNone, must not say it (libtorrent hides it too)."""
    def seed(super_seeding: bool) -> Swarm:
        s = Swarm(2, BLOCK_SIZE, 2 * BLOCK_SIZE, Settings(super_seeding=super_seeding),
                  rng=random.Random(7), now=0.0, have=b"\x01\x01", trackers=False, peers=())
        s.connected("x", ("10.0.0.9", 50000), b"x" * 20, fast=True, now=0.0)
        return s
    assert seed(False).upload_only
    assert not seed(True).upload_only
    assert not _swarm().upload_only  # a leecher
