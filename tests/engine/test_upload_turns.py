"""Upload turns (``upload_ahead``): the core tells the driver which peers to write to, a
piece at a time in turn order, within one budget written ahead for the whole uplink.

Stepped clock, no sockets: a toy uplink in the test sends one block per step, shared
round-robin by the connections with data queued (as the kernel and the simulator share
a link); the test plays the driver, writing what the core grants.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable

import pytest

from swarmhub.engine.peerstate import RequestQueue
from swarmhub.engine.swarm import BLOCK_SIZE, Swarm
from swarmhub.engine.uploads import turn_wait
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

PIECE = 4 * BLOCK_SIZE
#: the least budget written ahead (``swarm._AHEAD_MIN``): six blocks
LEAST = 6 * BLOCK_SIZE
#: 96 KiB: a piece and a half ahead, whatever a piece's send time (the gate has a test of
#: its own)
TURNS = Settings(super_seeding=False, upload_ahead=0.02, upload_turn_piece_time=0.0)
SHARED = Settings(super_seeding=False, upload_ahead=0.0)  # each peer its own buffer


def seed(settings: Settings, peers: list[str], pieces: int = 8) -> Swarm:
    """A seed whose ``peers`` are interested and unchoked (a first tick decides)."""
    s = Swarm(pieces, PIECE, pieces * PIECE, settings, rng=random.Random(3), now=0.0,
              have=b"\x01" * pieces)
    for i, name in enumerate(peers):
        s.connected(name, (f"10.0.0.{i + 1}", 6881), name.encode().ljust(20, b"-"),
                    fast=True, now=0.0)
        s.message(name, m.Interested(), 0.0)
    s.tick(0.0)
    s.take()
    assert all(not s.peer(p).am_choking for p in peers)
    return s


def ask(s: Swarm, peer: str, index: int, now: float) -> None:
    for begin in range(0, PIECE, BLOCK_SIZE):
        s.message(peer, m.Request(index, begin, BLOCK_SIZE), now)


class Uplink:
    """Queued blocks per peer; ``step`` sends one block from each queue in turn."""

    def __init__(self) -> None:
        self.queues: dict[Hashable, deque[m.Request]] = {}
        self.got: dict[Hashable, int] = {}
        self._rr: deque[Hashable] = deque()

    def queued(self, peer: Hashable) -> int:
        return sum(r.length for r in self.queues.get(peer, ()))

    def write(self, s: Swarm, now: float) -> None:
        """The driver's round: write what the core grants, tell it what was sent."""
        for peer, grant in s.upload_grants(self.queued, now):
            incoming = s.peer(peer).incoming
            served: list[m.Request] = []
            size = 0
            while incoming and size < grant:
                req = incoming.popleft()
                served.append(req)
                size += req.length
            self.queues.setdefault(peer, deque()).extend(served)
            if peer not in self._rr:
                self._rr.append(peer)
            s.blocks_sent(peer, served, size, now)

    def step(self) -> None:
        for _ in range(len(self._rr)):
            peer = self._rr[0]
            self._rr.rotate(-1)
            if self.queues[peer]:
                self.queues[peer].popleft()
                self.got[peer] = self.got.get(peer, 0) + BLOCK_SIZE
                return


def first_whole_piece(settings: Settings) -> tuple[int, Hashable]:
    """Steps until some peer of three holds a whole piece, and which peer it is."""
    s = seed(settings, ["a", "b", "c"])
    for i, p in enumerate(["a", "b", "c"]):
        ask(s, p, i, 0.0)
    link = Uplink()
    for n in range(1, 100):
        link.write(s, n * 0.01)
        link.step()
        done = [p for p, got in link.got.items() if got >= PIECE]
        if done:
            return n, done[0]
    raise AssertionError("no piece was delivered")


def test_turns_deliver_one_whole_piece_first_not_three_slices() -> None:
    turns, who = first_whole_piece(TURNS)
    # The peer that asked first, its 4 blocks sharing the toy link with the next peer's
    # (the least budget, 6 blocks, lets b in while a's are written: the uplink never
    # carries one connection alone, see the test of the least budget below).
    assert (turns, who) == (8, "a")
    shared, _ = first_whole_piece(SHARED)
    assert shared >= 10  # three queues sharing the uplink: every piece near the end


def test_a_peer_asking_for_its_next_piece_waits_behind_the_others() -> None:
    s = seed(TURNS, ["a", "b"])
    ask(s, "a", 0, 0.0)
    ask(s, "a", 1, 0.0)
    ask(s, "b", 2, 0.0)
    grants = s.upload_grants(lambda _p: 0, 0.0)
    assert grants[0][0] == "a" and grants[0][1] >= PIECE  # a's first piece whole: it
    # asked first (and, the budget being larger than this toy's piece, more of its next)
    assert list(s.upload_order) == ["a", "b"]
    reqs = [s.peer("a").incoming.popleft() for _ in range(PIECE // BLOCK_SIZE)]
    s.blocks_sent("a", reqs, PIECE, 0.01)
    assert list(s.upload_order) == ["b", "a"]  # b's piece before a's second one
    # a's first piece and more are still queued (a full budget): b waits until they drain.
    assert s.upload_grants(lambda p: LEAST if p == "a" else 0, 0.02) == []
    assert s.upload_grants(lambda p: BLOCK_SIZE if p == "a" else 0, 0.03)[0] == ("b", PIECE)


def test_a_finished_piece_still_leaving_holds_the_budget() -> None:
    s = seed(TURNS, ["a", "b"])
    ask(s, "a", 0, 0.0)
    ask(s, "b", 1, 0.0)
    reqs = [s.peer("a").incoming.popleft() for _ in range(PIECE // BLOCK_SIZE)]
    s.blocks_sent("a", reqs, PIECE, 0.01)
    assert "a" not in s.upload_order  # nothing more asked: out of turns
    assert s.upload_grants(lambda p: LEAST if p == "a" else 0, 0.02) == []
    assert s.upload_grants(lambda _p: 0, 0.03) == [("b", PIECE)]


def test_a_lone_peer_gets_its_piece_whatever_is_queued_to_it() -> None:
    """Throughput: one downloader is never held below a piece written ahead (its own
    send buffer is the limit there), however full its socket is."""
    s = seed(TURNS, ["a"])
    ask(s, "a", 0, 0.0)
    ask(s, "a", 1, 0.0)
    assert s.upload_grants(lambda _p: 8 << 20, 0.0) == [("a", PIECE)]


def test_turns_only_while_a_piece_takes_long_at_our_upload_rate() -> None:
    """``upload_turn_piece_time``: with no rate yet, or a rate that needs longer for a
    piece, one piece at a time; at a rate that sends a piece sooner, every peer gets its
    requests at once (no turns, no budget), as with ``upload_ahead`` 0."""
    s = seed(Settings(super_seeding=False, upload_ahead=0.02, upload_turn_piece_time=0.05),
             ["a", "b", "c"])
    for i, p in enumerate(["a", "b", "c"]):
        ask(s, p, i, 0.0)
    assert s.upload_budget(0.0) == LEAST
    # turns: a's piece whole, then b's first blocks within the budget, nothing for c
    assert s.upload_grants(lambda _p: 0, 0.0) == [("a", PIECE), ("b", LEAST - PIECE)]
    s.up.add(PIECE, 0.1)  # 64 KiB/s: a piece takes 1 s
    assert [h for h, _ in s.upload_grants(lambda _p: 0, 0.2)] == ["a", "b"]
    s.up.add(32 * PIECE, 0.5)  # 2 MiB in the last second: a piece takes ~30 ms
    assert s.upload_budget(0.6) == 0
    assert [h for h, _ in s.upload_grants(lambda _p: 0, 0.6)] == ["a", "b", "c"]


def test_small_pieces_go_in_turns_at_a_link_rate_but_not_at_a_fast_one() -> None:
    """32 KiB pieces (what ``create`` picks for 32 MiB) go one whole piece at a time at
    the defaults while a piece takes >= 10 ms (20 mbit: 13 ms), before any rate too;
    at a rate that sends one in less (100 mbit: 2.6 ms) every peer gets its requests
    at once. Why: the least budget (96 KiB) holds three such pieces, but the turns still
    decide which two leave first; with every unchoked peer fed at once (eight slots at
    this piece size) each got its piece after eight piece times (``lab simulate`` p2p
    N=256: 1.184 -> 1.157x the bound)."""
    small = 2 * BLOCK_SIZE
    s = Swarm(8, small, 8 * small, Settings(super_seeding=False),
              rng=random.Random(3), now=0.0, have=b"\x01" * 8)
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        s.connected(name, (f"10.0.0.{i + 1}", 6881), name.encode().ljust(20, b"-"),
                    fast=True, now=0.0)
        s.message(name, m.Interested(), 0.0)
    s.tick(0.0)
    for i, p in enumerate(names):
        for begin in range(0, small, BLOCK_SIZE):
            s.message(p, m.Request(i, begin, BLOCK_SIZE), 0.0)
    three = [("a", small), ("b", small), ("c", small)]
    assert s.upload_budget(0.0) == LEAST  # no rate yet: turns
    assert s.upload_grants(lambda _p: 0, 0.0) == three
    s.up.add(2_500_000, 0.5)  # 20 mbit over the last second: 13 ms a piece
    assert s.upload_budget(0.6) == LEAST
    assert s.upload_grants(lambda _p: 0, 0.6) == three
    queued = {}
    for p in ("a", "b", "c"):  # the driver writes a's, b's and c's pieces
        served = list(s.peer(p).incoming)
        s.peer(p).incoming.clear()
        s.blocks_sent(p, served, small, 0.6)
        queued[p] = small
    assert s.upload_grants(lambda p: queued.get(p, 0), 0.6) == []  # d waits its turn
    queued["a"] = 0  # a's piece left
    assert s.upload_grants(lambda p: queued.get(p, 0), 0.6) == [("d", small)]
    s.up.add(10_000_000, 0.7)  # ~100 mbit: a piece in under 3 ms
    assert s.upload_budget(0.8) == 0
    assert [h for h, _ in s.upload_grants(lambda _p: 0, 0.8)] == ["d"]  # all at once


def test_the_budget_kept_per_instant_follows_every_byte_sent() -> None:
    """upload_budget keeps its answer per (time, meter total): after bytes sent at the
    same instant (blocks_sent, or the meter fed directly) it must equal the formula on
    the meter, as the uncached scan did; a stale cache fails here."""
    ahead, piece_time = 0.5, 0.05
    s = seed(Settings(super_seeding=False, upload_ahead=ahead,
                      upload_turn_piece_time=piece_time), ["a"])

    def formula(now: float) -> int:
        rate = s.up.rate(now)  # idempotent at one instant
        return 0 if rate * piece_time > PIECE else max(LEAST, int(rate * ahead))

    before = s.upload_budget(0.0)
    s.blocks_sent("a", [], 4 * PIECE, 0.0)
    assert s.upload_budget(0.0) == formula(0.0) != before  # same instant, new bytes
    rng = random.Random(11)
    now = 0.0
    seen = set()
    for _ in range(400):
        now += rng.choice((0.0, 0.0, 0.01, 0.3, 2.0))
        n = rng.choice((1, BLOCK_SIZE, PIECE, 8 * PIECE))
        if rng.random() < 0.5:
            s.blocks_sent("a", [], n, now)
        elif rng.random() < 0.5:
            s.up.add(n, now)
        got = s.upload_budget(now)
        assert got == s.upload_budget(now) == formula(now)
        seen.add(got == 0)
    assert seen == {True, False}  # both sides of the piece-time gate were crossed


def test_head_piece_bytes_is_the_scan_of_the_head_run() -> None:
    rng = random.Random(5)
    for _ in range(200):
        q = RequestQueue()
        reqs = [m.Request(rng.randrange(3), BLOCK_SIZE * i, rng.choice((BLOCK_SIZE, 100)))
                for i in range(rng.randrange(0, 12))]
        for r in reqs:
            q.append(r)
        for _ in range(rng.randrange(0, len(reqs) + 1)):
            q.popleft()
        head = list(q)
        want = 0
        for r in head:
            if r.index != head[0].index:
                break
            want += r.length
        assert q.head_piece_bytes() == want


def test_choked_and_gone_peers_leave_the_turns() -> None:
    # (no allowed-fast sets: a request for one of those pieces outlives the choke)
    s = seed(TURNS.replace(allowed_fast_set_size=0), ["a", "b"])
    ask(s, "a", 0, 0.0)
    ask(s, "b", 1, 0.0)
    s.disconnected("a", 0.1)
    assert list(s.upload_order) == ["b"]
    s._choke_peer(s.peer("b"), 0.2)
    assert not s.upload_order
    assert s.upload_grants(lambda _p: 0, 0.3) == []


# -- super-seeding: the offers after the first copy ----------------------------------------


def test_a_super_seed_keeps_one_offer_open_once_every_piece_was_offered() -> None:
    """Three offers while pieces are fresh; one once all were offered (the leechers trade
    the first copy among themselves; more open offers only send it a second time)."""
    pieces = 8
    s = Swarm(pieces, PIECE, pieces * PIECE, Settings(super_seeding=True),
              rng=random.Random(5), now=0.0, have=b"\x01" * pieces)
    peers = [f"p{i}" for i in range(4)]
    for i, p in enumerate(peers):
        s.connected(p, (f"10.0.1.{i + 1}", 6881), p.encode().ljust(20, b"-"), fast=True,
                    now=0.0)
        s.message(p, m.Interested(), 0.0)
    s.take()
    ss = s._ss
    assert ss is not None
    t = 0.0
    opens: list[tuple[int, int]] = []  # (fresh pieces left, open offers) after each send
    for _ in range(12):
        p = next((p for p in peers if ss.open_offers(p)), None)
        if p is None:
            break
        piece = ss.open_offers(p)[0]
        reqs = [m.Request(piece, b, BLOCK_SIZE) for b in range(0, PIECE, BLOCK_SIZE)]
        for r in reqs:
            s.message(p, r, t)
        s.take()
        s.peer(p).incoming.clear()
        t += 0.05
        s.blocks_sent(p, reqs, PIECE, t)
        s.take()
        opens.append((ss.fresh_left, ss.open_count()))
    assert opens[0] == (pieces - 4, 3)  # fresh pieces: three on offer
    after = [n for fresh, n in opens if not fresh]
    # The open ones finish, no new one opens until one is left, then one at a time.
    assert after == sorted(after, reverse=True)
    assert after.count(1) >= 3, opens


def test_a_peer_waiting_its_turn_sleeps_until_the_bytes_ahead_left() -> None:
    """The driver's wait for a turn follows the bytes queued beyond the budget at our
    upload rate, within [5 ms, 50 ms]: not a 5 ms poll while a piece leaves."""
    assert turn_wait(200_000, 2_000_000) == pytest.approx(0.1 / 2)  # capped at 50 ms
    assert turn_wait(50_000, 2_000_000) == pytest.approx(0.025)
    assert turn_wait(1_000, 2_000_000) == pytest.approx(0.005)  # at least 5 ms
    assert turn_wait(50_000, 0.0) == pytest.approx(0.005)  # no rate yet: poll
    assert turn_wait(0, 2_000_000) == pytest.approx(0.005)


def test_a_peers_least_request_queue_does_not_hold_the_whole_least_budget() -> None:
    """The least budget lets the next peer in while one peer's least request queue (4
    blocks, ``min_request_queue``) is still written ahead, counted as the driver counts
    it (Piece headers included: 4 x 16,397 bytes). At four blocks it held all of the
    budget, the next peer waited until they drained, and the link carried one connection
    alone, which after an idle spell sends only TCP's initial window per round trip
    (``lab simulate`` 256 KiB, 20 mbit: the super-seed 6 % idle, 1.20 -> 1.13x the bound
    at N=16)."""
    s = seed(TURNS, ["a", "b"])
    blocks = [m.Request(0, b, BLOCK_SIZE) for b in range(0, PIECE, BLOCK_SIZE)]
    for r in blocks:
        s.message("a", r, 0.0)
    ask(s, "b", 1, 0.0)
    assert s.upload_grants(lambda _p: 0, 0.0)[0] == ("a", PIECE)
    for _ in blocks:
        s.peer("a").incoming.popleft()
    s.blocks_sent("a", blocks, PIECE, 0.0)
    written = 4 * (BLOCK_SIZE + 13)  # a's four Piece messages, none sent yet
    grants = s.upload_grants(lambda p: written if p == "a" else 0, 0.001)
    assert [h for h, _ in grants] == ["b"]
    assert grants[0][1] >= BLOCK_SIZE
