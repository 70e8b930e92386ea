"""PiecePicker behaviour, with state drawn as strings as in libtorrent's test_piece_picker.

``make_picker(avail="2213", have=" *  ")``: one character per piece. ``avail`` digit k
means peers ``p0 .. p{k-1}`` have that piece; ``have`` ``*`` means we have it already.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.engine.picker import Block, PiecePicker, pad_blocks_for
from swarmhub.errors import LocalProtocolError

BS = 16384


def make_picker(
    avail: str,
    have: str = "",
    *,
    blocks_per_piece: int = 4,
    seed: int = 0,
    random_first: int = 0,
    **kw: object,
) -> PiecePicker:
    n = len(avail)
    piece_length = blocks_per_piece * BS
    picker = PiecePicker(
        n,
        piece_length,
        n * piece_length,
        rng=random.Random(seed),
        random_first=random_first,
        **kw,  # type: ignore[arg-type]
    )
    for i, ch in enumerate(avail):
        for k in range(int(ch)):
            picker.peer_has(f"p{k}", i)
    for i, ch in enumerate(have.ljust(n)):
        if ch == "*":
            picker.we_have(i)
    picker.check_invariant()
    return picker


def add_full_peer(picker: PiecePicker, peer: Hashable) -> None:
    """A peer that has every piece but is tracked per piece (not as a seed)."""
    for i in range(picker.num_pieces):
        picker.peer_has(peer, i)


def pieces(blocks: list[Block]) -> list[int]:
    return sorted({b.index for b in blocks})


# ------------------------------------------------------------------ rarest first


def test_rarest_first_picks_least_available_missing_piece() -> None:
    picker = make_picker("3312333", "  *    ")
    add_full_peer(picker, "x")
    blocks = picker.pick("x", 4)
    assert pieces(blocks) == [3]  # piece 2 is rarer but we have it
    assert picker.availability(3) == 3
    picker.check_invariant()


def test_the_picker_keeps_a_callers_bitfield_as_its_record_of_a_peer() -> None:
    """One bitfield per connection (the swarm core's ``PeerState.have``): the picker
    writes the caller's bytearray and counts it as it counts a record of its own."""
    own, shared = make_picker("0000"), make_picker("0000")
    bits_a, bits_b = bytearray(4), bytearray(4)
    own.peer_has("a", 1)
    shared.peer_has("a", 1, bits_a)
    assert bits_a == bytes([0, 1, 0, 0])
    own.peer_has_bitfield("a", bytes([1, 0, 0, 1]))
    shared.peer_has_bitfield("a", bytes([1, 0, 0, 1]), bits_a)
    assert bits_a == bytes([1, 1, 0, 1])
    own.peer_has_bitfield("b", bytes([0, 0, 1, 0]))
    shared.peer_has_bitfield("b", bytes([0, 0, 1, 0]), bits_b)
    assert bits_b == bytes([0, 0, 1, 0])
    for picker in (own, shared):
        assert [picker.availability(i) for i in range(4)] == [1, 1, 1, 1]
        assert picker.interesting("a") and picker.interesting("b")
        picker.peer_has_all("a")  # counted down from what it had, then up as a seed
        picker.peer_gone("b")
        assert [picker.availability(i) for i in range(4)] == [1, 1, 1, 1]
        picker.check_invariant()


def test_rarest_first_for_a_seed_peer() -> None:
    picker = make_picker("5552555")
    picker.peer_has_all("seed")
    assert picker.availability(3) == 3
    assert pieces(picker.pick("seed", 4)) == [3]
    picker.check_invariant()


def test_rarest_first_orders_successive_pieces() -> None:
    picker = make_picker("4132")
    add_full_peer(picker, "x")
    got = [b.index for b in picker.pick("x", 16)[::4]]
    assert got == [1, 3, 2, 0]


def test_ties_are_broken_at_random() -> None:
    first = Counter()
    for seed in range(60):
        picker = make_picker("22222222", seed=seed)
        first[picker.pick("p0", 1)[0].index] += 1
    assert len(first) >= 5, first


def test_only_pieces_the_peer_has_are_picked() -> None:
    picker = make_picker("21111")  # p1 only has piece 0
    assert pieces(picker.pick("p1", 100)) == [0]
    assert picker.pick("nobody", 4) == []


# ------------------------------------------------------------------ random first pieces


def test_first_pieces_are_random_then_rarest() -> None:
    starts = Counter()
    for seed in range(40):
        picker = make_picker("1" + "9" * 30, seed=seed, random_first=4)
        starts[picker.pick("p0", 1)[0].index] += 1
    assert len(starts) > 10, "random_first should spread the first pieces"
    assert starts[0] < 10

    picker = make_picker("1" + "9" * 30, "  ****", seed=1, random_first=4)
    assert picker.pick("p0", 1)[0].index == 0  # 4 pieces in hand: rarest again


def test_sequential_picks_in_index_order() -> None:
    picker = make_picker("99199", " *", sequential=True)
    assert [b.index for b in picker.pick("p0", 12)[::4]] == [0, 2, 3]


# ------------------------------------------------------------------ in-progress priority


def test_pieces_in_progress_come_first() -> None:
    picker = make_picker("5555551")  # piece 6 is the rarest
    first = picker.pick("p0", 1)
    assert first[0].index == 6
    picker.block_received("p0", first[0])
    # p1 lacks piece 6, so it starts the next-rarest piece...
    started = picker.pick("p1", 1)[0].index
    # ...and p2 is sent to finish that piece, not to a fresh one
    assert pieces(picker.pick("p2", 3)) == [started]
    picker.check_invariant()


def test_in_progress_wins_over_rarer_piece() -> None:
    picker = make_picker("3333", blocks_per_piece=8)
    got = picker.pick("p0", 2)
    index = got[0].index
    for other in range(4):
        if other != index:
            picker.peer_gone("p2")
            break
    picker.peer_has("rare", index)
    for i in range(4):
        picker.peer_has("rare", i)
    # a piece whose availability is now lower exists, but the in-progress one comes first
    nxt = picker.pick("rare", 6)
    assert pieces(nxt) == [index]
    assert [b.begin // BS for b in nxt] == [2, 3, 4, 5, 6, 7]


def test_returned_requests_without_data_lose_priority() -> None:
    picker = make_picker("22")
    blocks = picker.pick("p0", 2)
    for b in blocks:
        picker.request_failed("p0", b)
    picker.check_invariant()
    assert picker.outstanding("p0") == []
    assert not picker.in_endgame


# ------------------------------------------------------------------ end-game


def test_endgame_duplicates_requests_and_cancels() -> None:
    picker = make_picker("3", blocks_per_piece=2)
    a = picker.pick("p0", 10)
    assert len(a) == 2 and picker.in_endgame
    b = picker.pick("p1", 10)
    assert sorted(b) == sorted(a)  # same blocks, now from a second peer
    assert picker.pick("p2", 10) == []  # at most two peers per block
    assert picker.pick("p1", 10) == []  # never twice to the same peer

    r1 = picker.block_received("p1", a[0])
    assert r1.cancel_peers == ("p0",) and not r1.piece_complete
    assert a[0] not in picker.outstanding("p0")
    assert picker.outstanding("p1") == [a[1]]
    assert picker.block_received("p0", a[0]) == ((), False)  # late duplicate: ignored
    assert not picker.wanted(a[0]) and picker.wanted(a[1])
    cancel, complete = picker.block_received("p0", a[1])
    assert cancel == ("p1",) and complete
    assert picker.outstanding("p0") == [] and picker.outstanding("p1") == []
    picker.check_invariant()
    picker.piece_passed(0)
    assert picker.is_complete and picker.pick("p2", 4) == []


def test_no_endgame_while_free_blocks_remain() -> None:
    picker = make_picker("22", blocks_per_piece=2)
    a = picker.pick("p0", 2)
    assert not picker.in_endgame
    b = picker.pick("p1", 4)
    assert set(a).isdisjoint(b[:2])
    assert len(b) == 4 and picker.in_endgame  # 2 fresh blocks, then 2 duplicates of p0's


def test_pieces_nobody_has_yet_hold_endgame_back() -> None:
    """Behind a super-seed (or in a young swarm) most missing pieces have no holder yet:
    a peer that asked for all it can see is not at the end, and duplicates would waste
    the uploads of the peers it asks twice."""
    picker = make_picker("10", blocks_per_piece=2)
    a = picker.pick("p0", 4)
    assert len(a) == 2 and not picker.in_endgame  # piece 1 is still to come
    assert picker.pick("p1", 4) == []  # no duplicates of p0's blocks meanwhile


def test_endgame_duplicates_go_only_to_a_peer_with_nothing_outstanding() -> None:
    picker = make_picker("33", blocks_per_piece=2)
    a = picker.pick("p0", 2)
    b = picker.pick("p1", 2)
    assert len(a) == len(b) == 2 and not set(a) & set(b)
    assert picker.in_endgame  # every block is requested now
    assert picker.pick("p1", 4) == []  # p1 still waits for its own blocks: no duplicate
    c = picker.pick("p2", 4)  # p2 is idle: it races the others for their blocks
    assert sorted(c) == sorted(a + b)


# ------------------------------------------------------------------ peers leaving, failures


def test_peer_gone_returns_blocks_and_availability() -> None:
    picker = make_picker("21")
    taken = picker.pick("p0", 3)
    assert len(taken) == 3
    back = picker.peer_gone("p0")
    assert sorted(back) == sorted(taken)
    assert picker.availability(0) == 1 and picker.availability(1) == 0
    assert picker.outstanding("p0") == []
    picker.check_invariant()
    again = picker.pick("p1", 10)
    assert {b.index for b in again} == {0} and len(again) == 4


def test_peer_gone_keeps_received_blocks() -> None:
    picker = make_picker("2")
    taken = picker.pick("p0", 4)
    picker.block_received("p0", taken[0])
    picker.peer_gone("p0")
    assert sorted(picker.pick("p1", 10)) == sorted(taken[1:])


def test_piece_failed_returns_contributors_and_refetches() -> None:
    picker = make_picker("3", blocks_per_piece=3)
    b0 = picker.pick("p0", 2)
    b1 = picker.pick("p1", 3)
    assert len(b1) == 3  # one fresh block, then end-game duplicates
    complete = [picker.block_received("p0", b).piece_complete for b in b0]
    complete.append(picker.block_received("p1", b1[0]).piece_complete)
    assert complete == [False, False, True]
    assert picker.outstanding("p1") == []
    assert picker.piece_failed(0) == {"p0", "p1"}
    picker.check_invariant()
    assert not picker.have(0) and len(picker.pick("p2", 5)) == 3
    assert picker.piece_failed(0) == set()  # nothing received since


def test_request_failed_puts_block_back_for_everyone() -> None:
    picker = make_picker("2")
    b = picker.pick("p0", 1)[0]
    picker.block_received("p0", picker.pick("p0", 1)[0])
    picker.request_failed("p0", b)
    assert picker.pick("p1", 1) == [b]
    picker.check_invariant()


def test_peer_choked_returns_all_its_requests() -> None:
    picker = make_picker("22")
    taken = picker.pick("p0", 5)
    assert sorted(picker.peer_choked("p0")) == sorted(taken)
    assert picker.outstanding("p0") == [] and picker.interesting("p0")
    picker.check_invariant()


# ------------------------------------------------------------------ pads, short pieces


def test_pad_blocks_are_never_requested_and_count_as_received() -> None:
    picker = PiecePicker(
        2,
        4 * BS,
        8 * BS,
        pad_blocks=[(0, 2 * BS), (0, 3 * BS)],
        rng=random.Random(1),
        random_first=0,
    )
    picker.peer_has_all("s")
    first = picker.pick("s", 8)
    assert [(b.index, b.begin) for b in first if b.index == 0] == [(0, 0), (0, BS)]
    done = [picker.block_received("s", b) for b in first if b.index == 0]
    assert done[-1].piece_complete
    picker.check_invariant()


def test_piece_made_only_of_pads_is_had_from_the_start() -> None:
    pads = pad_blocks_for([(4 * BS, 4 * BS)], 4 * BS, 12 * BS)
    assert pads == [(1, 0), (1, BS), (1, 2 * BS), (1, 3 * BS)]
    picker = PiecePicker(3, 4 * BS, 12 * BS, pad_blocks=pads)
    assert picker.have(1) and picker.num_have == 1 and picker.missing_pieces == 2


def test_pad_blocks_for_partial_blocks() -> None:
    # pad [1.5 blocks, 4 blocks) of piece 0: only blocks 2 and 3 lie wholly inside
    assert pad_blocks_for([(BS + BS // 2, 2 * BS + BS // 2)], 4 * BS, 8 * BS) == [
        (0, 2 * BS),
        (0, 3 * BS),
    ]
    # a tail pad over a short last piece
    assert pad_blocks_for([(4 * BS, 20000)], 4 * BS, 4 * BS + 20000) == [(1, 0), (1, BS)]


def test_short_last_piece_and_blocks() -> None:
    total = 2 * 32768 + 20000
    picker = PiecePicker(3, 32768, total, rng=random.Random(0), random_first=0)
    picker.peer_has_all("s")
    blocks = picker.pick("s", 100)
    assert len(blocks) == 6
    assert sum(b.length for b in blocks) == total
    assert sorted((b.begin, b.length) for b in blocks if b.index == 2) == [(0, BS), (BS, 3616)]
    assert picker.block_of(2, BS) == Block(2, BS, 3616)
    assert picker.block_of(2, 2 * BS) is None
    # a wrong length is not our block
    assert picker.block_received("s", Block(2, BS, BS)) == ((), False)
    picker.check_invariant()


def test_geometry_is_validated() -> None:
    with pytest.raises(LocalProtocolError):
        PiecePicker(2, 100, 300)
    with pytest.raises(LocalProtocolError):
        PiecePicker(2, 100, 100)
    picker = PiecePicker(2, 100, 150)
    with pytest.raises(LocalProtocolError):
        picker.peer_has("x", 2)
    with pytest.raises(LocalProtocolError):
        picker.peer_has_bitfield("x", b"\x01")
    with pytest.raises(LocalProtocolError):
        picker.peer_has_bitfield("x", b"\x01\x02")


# ------------------------------------------------------------------ interest, bitfields


def test_interesting_and_bitfield() -> None:
    picker = make_picker("210", "*")
    assert picker.interesting("p0") and not picker.interesting("p1")
    assert picker.bitfield() == bytearray([1, 0, 0])
    picker.we_have(1)
    assert not picker.interesting("p0")
    picker.peer_has_bitfield("b", b"\x00\x01\x01")
    assert picker.interesting("b") and picker.availability(2) == 1
    picker.peer_has_bitfield("full", b"\x01\x01\x01")  # a full bitfield is a seed
    assert picker.availability(2) == 2 and picker.interesting("full")
    picker.check_invariant()
    picker.we_have(2)
    assert picker.is_complete and not picker.interesting("full") and not picker.interesting("b")
    picker.check_invariant()


def test_have_all_after_haves_does_not_double_count() -> None:
    picker = make_picker("000")
    picker.peer_has("x", 1)
    picker.peer_has_all("x")
    assert [picker.availability(i) for i in range(3)] == [1, 1, 1]
    picker.peer_gone("x")
    assert [picker.availability(i) for i in range(3)] == [0, 0, 0]
    picker.check_invariant()


# ------------------------------------------------------------------ random sequences


@pytest.mark.parametrize("seed", range(12))
def test_random_operation_sequences_keep_invariants(seed: int) -> None:
    run_random_operations(seed)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_random_operation_sequences_hypothesis(seed: int) -> None:
    run_random_operations(seed, steps=150)


def test_check_invariant_notices_corruption() -> None:
    picker = make_picker("2312")
    picker._avail[1] += 1
    with pytest.raises(AssertionError, match="availability"):
        picker.check_invariant()


def run_random_operations(seed: int, steps: int = 400) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    bpp = rng.randint(1, 5)
    total = (n - 1) * bpp * BS + rng.randint(1, bpp * BS)
    pads = [(rng.randrange(n), rng.randrange(bpp) * BS) for _ in range(rng.randint(0, 3))]
    pads = [(i, b) for i, b in pads if b < (total - i * bpp * BS)]
    picker = PiecePicker(
        n,
        bpp * BS,
        total,
        rng=random.Random(seed),
        pad_blocks=pads,
        random_first=rng.randint(0, 3),
        sequential=rng.random() < 0.2,
    )
    peers = [f"q{k}" for k in range(5)]
    pending: list[tuple[str, int]] = []
    for _step in range(steps):
        op = rng.randrange(10)
        peer = rng.choice(peers)
        if op == 0:
            picker.peer_has(peer, rng.randrange(n))
        elif op == 1 and rng.random() < 0.3:
            picker.peer_has_bitfield(peer, bytes(rng.randint(0, 1) for _ in range(n)))
        elif op == 2 and rng.random() < 0.2:
            picker.peer_has_all(peer)
        elif op == 3 and rng.random() < 0.3:
            picker.peer_gone(peer)
        elif op in (4, 5):
            before = {b for p in peers for b in picker.outstanding(p)}
            got = picker.pick(peer, rng.randint(1, 6))
            for b in got:
                assert not picker.have(b.index)
                assert picker.availability(b.index) > 0
            dups = [b in before for b in got]
            if any(dups):
                # a block goes to a second peer only in end-game, after every fresh one
                assert picker.in_endgame
                assert dups == sorted(dups)
        elif op in (6, 7):
            out = picker.outstanding(peer)
            if out:
                b = rng.choice(out)
                if rng.random() < 0.8:
                    res = picker.block_received(peer, b)
                    assert peer not in res.cancel_peers
                    if res.piece_complete:
                        pending.append((peer, b.index))
                else:
                    picker.request_failed(peer, b)
        elif op == 8 and pending:
            _, index = pending.pop(rng.randrange(len(pending)))
            if rng.random() < 0.8:
                picker.piece_passed(index)
            else:
                assert picker.piece_failed(index)
        elif op == 9 and rng.random() < 0.1:
            picker.peer_choked(peer)
        picker.check_invariant()
        for p in peers:
            for b in picker.outstanding(p):
                assert picker.block_of(b.index, b.begin) == b


def test_random_swarm_completes() -> None:
    """Peers that answer every request: the download always finishes."""
    rng = random.Random(7)
    n = 40
    picker = PiecePicker(n, 2 * BS, n * 2 * BS - 5, rng=random.Random(7))
    for k in range(6):
        picker.peer_has_bitfield(k, bytes(rng.random() < 0.5 for _ in range(n)))
    picker.peer_has_all("seed")
    for _ in range(5000):
        if picker.is_complete:
            break
        peer = rng.choice([*range(6), "seed"])
        for b in picker.pick(peer, 3):
            if picker.block_received(peer, b).piece_complete:
                picker.piece_passed(b.index)
    assert picker.is_complete
    picker.check_invariant()


# ------------------------------------------------------------------ performance


def test_pick_is_fast_on_a_big_torrent() -> None:
    n, npeers, bpp = 32768, 50, 16
    rng = random.Random(3)
    picker = PiecePicker(n, bpp * BS, n * bpp * BS, rng=random.Random(3), random_first=0)
    fields = [bytes(rng.random() < rng.uniform(0.2, 0.9) for _ in range(n)) for _ in range(npeers)]
    t0 = time.perf_counter()
    for k, bits in enumerate(fields):
        picker.peer_has_bitfield(k, bits)
    t_bitfields = time.perf_counter() - t0
    picks = 20000  # 80k of the 524k blocks: the torrent stays far from complete
    t0 = time.perf_counter()
    for _ in range(picks):
        peer = rng.randrange(npeers)
        got = picker.pick(peer, 4)
        assert got
        for b in got:
            if picker.block_received(peer, b).piece_complete:
                picker.piece_passed(b.index)
    elapsed = time.perf_counter() - t0
    rate = picks / elapsed
    print(
        f"\npick()+block_received: {rate:,.0f} picks/s ({n} pieces x {npeers} peers, "
        f"4 of {bpp} blocks each); {npeers} bitfields in {t_bitfields * 1000:.0f} ms; "
        f"{picker.num_have} pieces done"
    )
    assert 0 < picker.num_have < n
    assert rate > 1000


@given(st.integers(0, 2**32), st.lists(st.integers(1, 5000), min_size=1, max_size=50))
@settings(max_examples=50)
def test_the_pickers_draws_are_randranges_draws(seed: int, bounds: list[int]) -> None:
    """The picker's inlined draw takes the same numbers from the rng as ``randrange``
    (simulator results depend on every draw), and a subclass keeps its own."""
    from swarmhub.engine.picker import _randbelow

    ours, theirs = random.Random(seed), random.Random(seed)
    assert [_randbelow(ours, n) for n in bounds] == [theirs.randrange(n) for n in bounds]
    assert ours.random() == theirs.random()

    class Fixed(random.Random):
        def randrange(self, *args: object, **kwargs: object) -> int:
            return 0

    assert _randbelow(Fixed(seed), 7) == 0
