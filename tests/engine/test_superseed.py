"""Super-seeding: each piece leaves the seed once before any leaves it twice."""

from __future__ import annotations

import random

import pytest

from swarmhub.engine.superseed import SuperSeeder

PIECE = 64 * 1024


class Swarm:
    """Availability as the seed's picker would count it: peers' bitfields."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.have: dict[str, bytearray] = {}

    def add(self, peer: str) -> bytearray:
        self.have[peer] = bytearray(self.n)
        return self.have[peer]

    def availability(self, index: int) -> int:
        return sum(bits[index] for bits in self.have.values())


def make(n: int, seed: int = 1) -> tuple[SuperSeeder, Swarm]:
    swarm = Swarm(n)
    ss = SuperSeeder(n, lambda _i: PIECE, swarm.availability, random.Random(seed))
    return ss, swarm


def test_offers_are_distinct_across_peers_until_every_piece_was_offered() -> None:
    ss, swarm = make(40)
    offered: list[int] = []
    for p in ("a", "b", "c", "d"):
        ss.add_peer(p)
        offered += ss.top_up(p, swarm.add(p), window=10)
    assert sorted(offered) == list(range(40))  # 4 x 10 offers cover 40 pieces exactly once
    assert ss.fresh_left == 0


def test_sending_an_offer_in_full_frees_the_slot_for_a_new_piece() -> None:
    ss, swarm = make(10)
    ss.add_peer("a")
    first = ss.top_up("a", swarm.add("a"), window=2)
    assert len(first) == 2 and ss.open_offers("a") == first
    # Half a piece does not close the offer; the rest does.
    assert not ss.uploaded("a", first[0], PIECE // 2)
    assert ss.uploaded("a", first[0], PIECE // 2)
    assert ss.open_offers("a") == [first[1]]
    nxt = ss.top_up("a", swarm.have["a"], window=2)
    assert len(nxt) == 1 and nxt[0] not in first
    assert ss.shown("a", first[0]) and ss.shown("a", nxt[0])
    # Bytes of a piece that was never offered (a peer may ask for anything) change nothing.
    other = next(i for i in range(10) if not ss.shown("a", i))
    assert not ss.uploaded("a", other, PIECE)


def test_a_have_closes_the_offer_and_pieces_peers_hold_are_not_fresh() -> None:
    ss, swarm = make(6)
    a = swarm.add("a")
    ss.add_peer("a")
    (piece,) = ss.top_up("a", a, window=1)
    a[piece] = 1
    assert ss.peer_has("a", piece)
    assert not ss.peer_has("a", piece)  # once
    # b already holds two pieces (it resumed): those are never offered to anyone.
    b = swarm.add("b")
    b[0] = b[1] = 1
    ss.add_peer("b")
    got = ss.top_up("b", b, window=6)
    assert not {0, 1, piece} & set(got)


def test_after_the_first_round_the_scarcest_piece_goes_next() -> None:
    ss, swarm = make(4)
    peers = {p: swarm.add(p) for p in ("a", "b", "c")}
    for p in peers:
        ss.add_peer(p)
    # a takes all four fresh pieces and completes them; b and c learn of them by Have.
    offers = ss.top_up("a", peers["a"], window=4)
    for i in offers:
        assert ss.uploaded("a", i, PIECE)
        peers["a"][i] = 1
    # b and c got pieces 0, 1, 2 from a already; piece 3 is the one only a holds.
    for p in ("b", "c"):
        for i in (0, 1, 2):
            peers[p][i] = 1
    assert ss.top_up("b", peers["b"], window=1) == [3]
    # Once offered to b, piece 3 still goes to c (nothing scarcer is left), but not twice.
    assert ss.top_up("c", peers["c"], window=1) == [3]
    assert ss.top_up("c", peers["c"], window=5) == []


def test_a_leaving_peer_returns_its_offers() -> None:
    ss, swarm = make(3)
    ss.add_peer("a")
    a_offers = ss.top_up("a", swarm.add("a"), window=3)
    assert sorted(a_offers) == [0, 1, 2]
    ss.add_peer("b")
    b = swarm.add("b")
    # Every piece is on offer to a; b gets one anyway (the least offered), one at a time.
    assert len(ss.top_up("b", b, window=1)) == 1
    ss.remove_peer("a")
    assert "a" not in ss
    assert len(ss.top_up("b", b, window=3)) == 2


def test_a_departed_peers_open_offers_are_the_next_fresh_pieces_oldest_first() -> None:
    """The source's first connection leaves at once: the pieces it was offered or sent
    (and no one else holds) are the next ones the seed gives, the ones sent in full first
    (offered earlier, in a real run), then open offers in the order they were offered,
    before the rest of the fresh pool; a piece another peer holds is not."""
    ss, swarm = make(40)
    now = 0.0
    ss.add_peer("early")
    early = swarm.add("early")
    shown_early = ss.top_up("early", early, window=4, now=now)
    assert len(shown_early) == 4
    now += 0.05  # the first block of one offer leaves, then the whole of another
    assert not ss.uploaded("early", shown_early[0], PIECE // 4, now)
    assert ss.uploaded("early", shown_early[1], PIECE, now)
    now += 0.05
    ss.add_peer("b")
    b = swarm.add("b")
    before = ss.top_up("b", b, window=2, now=now)
    assert not set(before) & set(shown_early)
    b[before[0]] = 1
    ss.peer_has("b", before[0])
    now += 0.05
    del swarm.have["early"]  # (the engine's picker forgets it first)
    ss.remove_peer("early")
    ss.add_peer("c")
    c = swarm.add("c")
    # 1 (sent in full, the copy left with it), then 0 (partly sent), 2 and 3
    assert ss.top_up("c", c, window=4, now=now) == [shown_early[1], shown_early[0],
                                                    *shown_early[2:]]
    # then the fresh pool goes on where it was (not with b's open offer)
    now += 0.05
    nxt = ss.top_up("c", c, window=5, now=now)
    assert len(nxt) == 1 and nxt[0] not in (*shown_early, *before)


@pytest.mark.parametrize("seed", range(6))
def test_a_departed_peers_pieces_no_longer_count_as_copies(seed: int) -> None:
    """As libtorrent counts copies among the peers connected now: a leaves with the two
    pieces it was sent (the only copies), b stays with the other two. Those two are the
    next ones given, before the copies b holds: counted as held, they tied with b's
    and the next peer got two of the four at random."""
    ss, swarm = make(4, seed)
    now = 0.0
    for p in ("a", "b"):
        ss.add_peer(p)
        bits = swarm.add(p)
        for i in ss.top_up(p, bits, window=2, now=now):
            now += 0.1
            assert ss.uploaded(p, i, PIECE, now)
            bits[i] = 1
            assert not ss.peer_has(p, i)  # the offer closed when its last block left
    gone = [i for i in range(4) if swarm.have["a"][i]]
    now += 0.1
    del swarm.have["a"]
    ss.remove_peer("a")
    ss.add_peer("c")
    assert sorted(ss.top_up("c", swarm.add("c"), window=2, now=now)) == gone


def test_one_fast_leecher_gets_its_whole_window() -> None:
    ss, swarm = make(1000)
    ss.add_peer("solo")
    have = swarm.add("solo")
    shown: set[int] = set()
    for _ in range(20):  # serve a window of 100, then top up, as the engine does
        for i in ss.top_up("solo", have, window=100):
            shown.add(i)
        for i in ss.open_offers("solo"):
            ss.uploaded("solo", i, PIECE)
            have[i] = 1
    assert len(shown) == 1000 and sum(have) == 1000


def test_turnaround_is_the_mean_of_recent_offers_from_have_to_first_block() -> None:
    """The budget's turnaround: the mean time from an offer to its first block sent over
    the last ``TURNAROUND_WINDOW`` seconds (the latest offer at least)."""
    ss, swarm = make(10)
    for p in ("a", "b"):
        ss.add_peer(p)
        swarm.add(p)
    assert ss.turnaround(0.0) == 0.0  # nothing measured yet
    (a1,) = ss.top_up("a", swarm.have["a"], window=1, now=0.0)
    (b1,) = ss.top_up("b", swarm.have["b"], window=1, now=0.0)
    assert not ss.uploaded("a", a1, PIECE // 2, now=0.3)  # a answered in 0.3 s
    assert ss.uploaded("b", b1, PIECE, now=0.4)  # b in 0.4 s
    assert ss.uploaded("a", a1, PIECE // 2, now=0.9)  # a's second half: not an answer
    assert abs(ss.turnaround(0.9) - 0.35) < 1e-9
    (a2,) = ss.top_up("a", swarm.have["a"], window=1, now=2.0)
    assert ss.uploaded("a", a2, PIECE, now=2.2)
    assert abs(ss.turnaround(2.35) - 0.3) < 1e-9  # (0.4 + 0.2) / 2: a's first is old
    assert abs(ss.turnaround(9.0) - 0.2) < 1e-9  # the latest stays


@pytest.mark.parametrize("seed", range(4))
def test_the_open_offer_total_is_every_peers_open_offers(seed: int) -> None:
    """``open_count()`` is a running total (the offer pass asks after every offer): it
    equals the sum over the peers through joins, leaves, offers, sends, Haves and
    declines, in any order."""
    rng = random.Random(seed)
    ss, swarm = make(60, seed)
    peers: list[str] = []
    for step in range(600):
        op = rng.randrange(6)
        if op == 0 or not peers:
            p = f"p{step}"
            ss.add_peer(p)
            swarm.add(p)
            peers.append(p)
        elif op == 1 and len(peers) > 1:
            p = peers.pop(rng.randrange(len(peers)))
            del swarm.have[p]
            ss.remove_peer(p)
        elif op == 2:
            p = rng.choice(peers)
            ss.top_up(p, swarm.have[p], window=rng.randrange(1, 6), now=step)
        elif op == 3:
            p = rng.choice(peers)
            for i in ss.open_offers(p)[:2]:
                if ss.uploaded(p, i, rng.choice((PIECE // 2, PIECE)), step):
                    swarm.have[p][i] = 1
        elif op == 4:
            p = rng.choice(peers)
            i = rng.randrange(60)
            swarm.have[p][i] = 1
            ss.peer_has(p, i)
        else:
            ss.declined(rng.choice(peers))
        assert ss.open_count() == sum(ss.open_count(p) for p in peers)
        assert ss.open_count() == sum(len(ss.open_offers(p)) for p in peers)
